//! An LLM judge for Phi-1's quality labels.
//!
//! The paper asked GPT-4 to rate the "educational value for a student whose goal is to learn basic
//! coding concepts" of code snippets. Here any generating model is the judge: it reads a prompt
//! (chat template applied when the model has one) that shows the snippet's head and asks a yes/no
//! question, and the label is read from the next-token logits of the two label tokens `Yes` and
//! `No` (softmax over just those two, as RLAIF's labeller reads `1`/`2`): educational when
//! `P(yes) ≥ threshold`. Each label is saved with the judge's name and the SHA-256 of the prompt
//! template, so the labels say how they were made.

use candle_core::{Device, Tensor};
use canon_models::{LoadedLm, Positions};
use serde::{Deserialize, Serialize};

use super::corpus::sha256_hex;
use crate::{Result, ScaleError};

/// The judge's prompt; `{snippet}` is replaced by the snippet's head.
pub const PROMPT: &str = "Does the following Python code have educational value for a student \
whose goal is to learn basic coding concepts? Code with educational value is clear, \
self-contained, documented and shows an algorithm or a common programming idea; configuration, \
data tables, generated code and boilerplate have little.\n\n```python\n{snippet}\n```\n\n\
Answer with Yes or No.";

/// What the label is read after (appended to the rendered prompt).
pub const ANSWER_PREFIX: &str = "Answer:";

/// The first 12 hex digits of the SHA-256 of the prompt template and the answer prefix.
pub fn prompt_hash() -> String {
    sha256_hex(&format!("{PROMPT}\u{0}{ANSWER_PREFIX}"))[..12].to_string()
}

/// The user message for one snippet: its first `chars` characters in the template.
pub fn user_message(snippet: &str, chars: usize) -> String {
    let head: String = snippet.chars().take(chars).collect();
    PROMPT.replace("{snippet}", head.trim_end())
}

/// A model that answers the yes/no question.
pub trait Judge {
    /// The judge's name, as saved with each label.
    fn name(&self) -> String;
    /// `P(yes)` for the snippet (softmax over the two label tokens).
    fn p_yes(&mut self, snippet: &str) -> Result<f64>;
}

/// One judged snippet (a line of `judge-labels.jsonl`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgeLabel {
    pub id: String,
    pub p_yes: f64,
    pub label: u8,
    /// The heuristic label of the same snippet, for the agreement figures.
    pub heuristic_label: u8,
    pub judge: String,
    pub prompt_sha256: String,
    pub threshold: f64,
}

/// Agreement of the judge with the heuristic labels on the same snippets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Agreement {
    pub n: usize,
    /// Fraction of snippets on which the two labels are equal.
    pub agreement: f64,
    /// Cohen's κ: agreement corrected for what the two label rates give by chance.
    pub cohen_kappa: Option<f64>,
    pub judge_positive_fraction: f64,
    pub heuristic_positive_fraction: f64,
    /// ROC-AUC of `P(yes)` against the heuristic labels (threshold-free).
    pub p_yes_auc: Option<f64>,
    pub mean_p_yes: f64,
}

/// Agreement figures of judged labels against their heuristic labels.
pub fn agreement(labels: &[JudgeLabel]) -> Agreement {
    let n = labels.len();
    let nf = n.max(1) as f64;
    let same = labels
        .iter()
        .filter(|l| l.label == l.heuristic_label)
        .count() as f64
        / nf;
    let pj = labels.iter().filter(|l| l.label == 1).count() as f64 / nf;
    let ph = labels.iter().filter(|l| l.heuristic_label == 1).count() as f64 / nf;
    let chance = pj * ph + (1.0 - pj) * (1.0 - ph);
    let kappa = (chance < 1.0 - 1e-12).then(|| (same - chance) / (1.0 - chance));
    let probs: Vec<f64> = labels.iter().map(|l| l.p_yes).collect();
    let ys: Vec<u8> = labels.iter().map(|l| l.heuristic_label).collect();
    Agreement {
        n,
        agreement: same,
        cohen_kappa: kappa,
        judge_positive_fraction: pj,
        heuristic_positive_fraction: ph,
        p_yes_auc: super::classify::roc_auc(&probs, &ys),
        mean_p_yes: probs.iter().sum::<f64>() / nf,
    }
}

/// Judges `snippets` (`(id, text, heuristic label)`); `on` sees how many are done.
pub fn judge_all(
    judge: &mut dyn Judge,
    snippets: &[(String, String, u8)],
    threshold: f64,
    on: &mut dyn FnMut(usize),
) -> Result<Vec<JudgeLabel>> {
    if !(0.0..=1.0).contains(&threshold) {
        return Err(ScaleError::Msg(format!(
            "--judge-threshold must be in [0, 1], found {threshold}"
        )));
    }
    let (name, hash) = (judge.name(), prompt_hash());
    let mut out = Vec::with_capacity(snippets.len());
    for (k, (id, text, h)) in snippets.iter().enumerate() {
        let p = judge.p_yes(text)?;
        if !(0.0..=1.0).contains(&p) {
            return Err(ScaleError::Msg(format!(
                "judge {name}: expected P(yes) in [0, 1] for {id}, found {p}"
            )));
        }
        out.push(JudgeLabel {
            id: id.clone(),
            p_yes: p,
            label: (p >= threshold) as u8,
            heuristic_label: *h,
            judge: name.clone(),
            prompt_sha256: hash.clone(),
            threshold,
        });
        on(k + 1);
    }
    Ok(out)
}

/// A causal LM (any model the loader reads: smollm2, gemma3, a `.gguf`) as the judge.
pub struct LmJudge {
    lm: LoadedLm,
    yes: u32,
    no: u32,
    /// Characters of each snippet shown to the judge.
    pub chars: usize,
}

/// The single token of `s` in `lm`'s vocabulary.
fn single_token(lm: &LoadedLm, s: &str) -> Result<u32> {
    let ids: Vec<u32> = lm
        .tokenizer
        .encode(s, false)
        .map_err(|e| ScaleError::Msg(format!("judge tokenizer: {e}")))?
        .into_iter()
        .filter(|&t| Some(t) != lm.tokenizer.bos_id)
        .collect();
    match ids.as_slice() {
        [t] => Ok(*t),
        other => Err(ScaleError::Msg(format!(
            "the judge's vocabulary splits the label {s:?} into {other:?} (expected one token)"
        ))),
    }
}

impl LmJudge {
    /// Checks that the labels are single tokens; with no chat template the prompt is plain text.
    pub fn new(lm: LoadedLm, chars: usize) -> Result<Self> {
        // After "Answer:" the label follows a space; SentencePiece and BPE vocabularies both have
        // the spaced words as single tokens.
        let yes = single_token(&lm, " Yes")?;
        let no = single_token(&lm, " No")?;
        Ok(LmJudge { lm, yes, no, chars })
    }

    /// The whole prompt text for one snippet.
    pub fn prompt_text(&self, snippet: &str) -> Result<String> {
        let user = user_message(snippet, self.chars);
        let msgs = [canon_text::chat::Message::new("user", user.clone())];
        let body = match &self.lm.chat_template {
            Some(t) => t
                .render(&msgs, true)
                .map_err(|e| ScaleError::Msg(format!("judge chat template: {e}")))?,
            None => format!("{user}\n"),
        };
        Ok(format!("{body}{ANSWER_PREFIX}"))
    }
}

impl Judge for LmJudge {
    fn name(&self) -> String {
        self.lm.name.clone()
    }

    fn p_yes(&mut self, snippet: &str) -> Result<f64> {
        let text = self.prompt_text(snippet)?;
        let ids = self
            .lm
            .tokenizer
            .encode(&text, true)
            .map_err(|e| ScaleError::Msg(format!("judge tokenizer: {e}")))?;
        let mut cache = self.lm.model.new_cache();
        let t = Tensor::new(ids.as_slice(), &Device::Cpu)
            .and_then(|t| t.unsqueeze(0))
            .map_err(|e| ScaleError::Msg(format!("judge input: {e}")))?;
        let logits: Vec<f32> = self
            .lm
            .model
            .forward(&t, &mut cache, Positions::Last)
            .map_err(ScaleError::Model)?
            .flatten_all()
            .and_then(|t| t.to_vec1())
            .map_err(|e| ScaleError::Msg(format!("judge logits: {e}")))?;
        let get = |i: u32| {
            logits.get(i as usize).copied().ok_or_else(|| {
                ScaleError::Msg(format!(
                    "judge: label token {i} outside the {} logits",
                    logits.len()
                ))
            })
        };
        let (y, n) = (get(self.yes)? as f64, get(self.no)? as f64);
        Ok(1.0 / (1.0 + (n - y).exp()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Says yes with probability 0.9 to snippets with a docstring, 0.2 otherwise.
    pub(crate) struct Scripted;
    impl Judge for Scripted {
        fn name(&self) -> String {
            "scripted".into()
        }
        fn p_yes(&mut self, s: &str) -> Result<f64> {
            Ok(if s.contains("\"\"\"") { 0.9 } else { 0.2 })
        }
    }

    #[test]
    fn labels_come_from_p_yes_and_record_how_they_were_made() {
        let items = vec![
            (
                "a".to_string(),
                "def f():\n    \"\"\"Doc.\"\"\"\n".to_string(),
                1,
            ),
            ("b".to_string(), "X = [1, 2, 3]\n".to_string(), 1),
            ("c".to_string(), "Y = 2\n".to_string(), 0),
            (
                "d".to_string(),
                "class A:\n    \"\"\"A.\"\"\"\n".to_string(),
                0,
            ),
        ];
        let mut seen = 0;
        let l = judge_all(&mut Scripted, &items, 0.5, &mut |k| seen = k).unwrap();
        assert_eq!(seen, 4);
        assert_eq!(l.iter().map(|x| x.label).collect::<Vec<_>>(), [1, 0, 0, 1]);
        assert!(
            l.iter()
                .all(|x| x.judge == "scripted" && x.prompt_sha256 == prompt_hash())
        );
        let a = agreement(&l);
        assert_eq!(a.n, 4);
        assert_eq!(a.agreement, 0.5);
        assert_eq!(a.cohen_kappa, Some(0.0));
        assert_eq!(a.p_yes_auc, Some(0.5));
        assert!((a.mean_p_yes - 0.55).abs() < 1e-12);
        let e = judge_all(&mut Scripted, &items, 1.5, &mut |_| {}).unwrap_err();
        assert!(e.to_string().contains("found 1.5"), "{e}");
    }

    #[test]
    fn the_prompt_shows_the_snippets_head_and_its_hash_is_stable() {
        let m = user_message("abcdef\n\n", 3);
        assert!(m.contains("```python\nabc\n```"), "{m}");
        assert_eq!(prompt_hash().len(), 12);
        assert_eq!(prompt_hash(), prompt_hash());
    }
}
