//! K-shot in-context evaluation (paper 10, GPT-3).
//!
//! A prompt is K demonstrations drawn from the train split (never the test item itself) followed by
//! the test question. Multiple-choice items are scored by the log-likelihood of each option as a
//! continuation, under three normalisations; free-form items are answered by greedy decoding up to
//! the end of the line and compared by exact match after trimming.
//!
//! Options share the prompt: the prompt is run once, each option continues the same KV cache, and
//! the cache is truncated back to the prompt's length before the next option.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use canon_models::{Cache, CausalLm, Positions};
use canon_text::Tokenizer;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::index::sample;
use serde::Serialize;

use crate::{AgentError, Result};

/// One question. Non-empty `options` make it multiple choice (`answer` is one of them).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Item {
    pub question: String,
    pub options: Vec<String>,
    pub answer: String,
}

/// A task: demonstrations come from `train`, scores from `test`.
#[derive(Debug, Clone)]
pub struct Task {
    pub name: String,
    pub train: Vec<Item>,
    pub test: Vec<Item>,
}

/// The context used for the unconditional normalisation: log p(option | context) minus
/// log p(option | this string).
pub const UNCONDITIONAL_CONTEXT: &str = "Answer:";

/// One demonstration as it appears in a prompt.
pub fn format_demo(item: &Item) -> String {
    format!("Q: {}\nA: {}\n\n", item.question, item.answer)
}

/// The prompt for `test` after `demos`; the answer continues it after one space.
pub fn format_prompt(demos: &[&Item], test: &Item) -> String {
    let mut s: String = demos.iter().map(|d| format_demo(d)).collect();
    s.push_str(&format!("Q: {}\nA:", test.question));
    s
}

/// The continuation scored for an option.
pub fn format_option(option: &str) -> String {
    format!(" {option}")
}

/// Picks `k` demonstrations for test item `index` from `train`, leaving out any train item whose
/// question equals the test question. Deterministic in (`seed`, `index`).
pub fn pick_demos<'a>(
    train: &'a [Item],
    test: &Item,
    k: usize,
    seed: u64,
    index: usize,
) -> Result<Vec<&'a Item>> {
    let pool: Vec<&Item> = train
        .iter()
        .filter(|t| t.question != test.question)
        .collect();
    if k > pool.len() {
        return Err(AgentError::Task(format!(
            "--shots {k}: expected at most {} demonstrations, the train split has {} usable items",
            pool.len(),
            pool.len()
        )));
    }
    let mut rng = StdRng::seed_from_u64(seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    Ok(sample(&mut rng, pool.len(), k)
        .into_iter()
        .map(|i| pool[i])
        .collect())
}

fn log_softmax_at(logits: &[f32], token: u32) -> Result<f64> {
    let t = token as usize;
    if t >= logits.len() {
        return Err(AgentError::Task(format!(
            "token id {t} is outside the vocabulary of {}",
            logits.len()
        )));
    }
    Ok(canon_nn::ops::log_softmax_at(logits, t).unwrap_or(f64::NEG_INFINITY))
}

fn truncate_cache(cache: &mut Cache, n: usize) -> Result<()> {
    for layer in &mut cache.layers {
        layer.truncate(n).map_err(AgentError::Candle)?;
    }
    Ok(())
}

fn rows(logits: &Tensor) -> Result<Vec<Vec<f32>>> {
    // [1, t, vocab] -> t rows
    Ok(logits
        .squeeze(0)?
        .to_dtype(candle_core::DType::F32)?
        .to_vec2::<f32>()?)
}

/// Per-token log-probabilities of each continuation after `context`: one forward over the context,
/// then each continuation runs on the same cache, which is truncated back afterwards.
pub fn continuation_logprobs(
    lm: &dyn CausalLm,
    context: &[u32],
    continuations: &[Vec<u32>],
) -> Result<Vec<Vec<f64>>> {
    if context.is_empty() {
        return Err(AgentError::Task(
            "expected a non-empty context to score options after".into(),
        ));
    }
    let longest = continuations.iter().map(Vec::len).max().unwrap_or(0);
    if context.len() + longest > lm.max_seq_len() {
        return Err(AgentError::Task(format!(
            "prompt of {} tokens plus an option of {longest} exceeds the model's {} positions",
            context.len(),
            lm.max_seq_len()
        )));
    }
    let mut cache = lm.new_cache();
    let ctx = Tensor::new(context, &Device::Cpu)?.unsqueeze(0)?;
    let last = rows(&lm.forward(&ctx, &mut cache, Positions::Last)?)?;
    let first_logits = last.into_iter().next_back().unwrap_or_default();
    let mut out = Vec::with_capacity(continuations.len());
    for cont in continuations {
        let Some(&head) = cont.first() else {
            return Err(AgentError::Task(
                "an option tokenized to nothing; expected at least one token".into(),
            ));
        };
        let mut lps = vec![log_softmax_at(&first_logits, head)?];
        if cont.len() > 1 {
            let input = Tensor::new(&cont[..cont.len() - 1], &Device::Cpu)?.unsqueeze(0)?;
            let all = rows(&lm.forward(&input, &mut cache, Positions::All)?)?;
            truncate_cache(&mut cache, context.len())?;
            for (row, &tok) in all.iter().zip(&cont[1..]) {
                lps.push(log_softmax_at(row, tok)?);
            }
        }
        out.push(lps);
    }
    Ok(out)
}

/// Scores of one option under the three normalisations.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct OptionScore {
    /// log p(option | prompt), summed over its tokens.
    pub sum: f64,
    /// The sum divided by the option's token count.
    pub mean: f64,
    /// log p(option | prompt) − log p(option | "Answer:").
    pub unconditional: f64,
}

/// The three normalisations.
pub const NORMALISATIONS: [&str; 3] = ["sum", "mean", "unconditional"];

/// Index of the best option under each normalisation (ties go to the first option).
pub fn pick(scores: &[OptionScore]) -> [usize; 3] {
    let best = |f: &dyn Fn(&OptionScore) -> f64| {
        let mut b = 0;
        for (i, s) in scores.iter().enumerate() {
            if f(s) > f(&scores[b]) {
                b = i;
            }
        }
        b
    };
    [
        best(&|s| s.sum),
        best(&|s| s.mean),
        best(&|s| s.unconditional),
    ]
}

/// Greedy continuation of `prompt` until a newline, `max_new` tokens, or the model's context.
pub fn greedy_line(
    lm: &dyn CausalLm,
    tok: &Tokenizer,
    prompt: &[u32],
    max_new: usize,
) -> Result<String> {
    let mut cache = lm.new_cache();
    let mut input = prompt.to_vec();
    let mut out: Vec<u32> = Vec::new();
    for _ in 0..max_new {
        if prompt.len() + out.len() >= lm.max_seq_len() || input.is_empty() {
            break;
        }
        let t = Tensor::new(input.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
        let logits = rows(&lm.forward(&t, &mut cache, Positions::Last)?)?;
        let last = logits.into_iter().next_back().unwrap_or_default();
        let mut best = 0usize;
        for (i, &v) in last.iter().enumerate() {
            if v > last[best] {
                best = i;
            }
        }
        out.push(best as u32);
        let text = tok
            .decode(&out, true)
            .map_err(|e| AgentError::Text(e.to_string()))?;
        if text.contains('\n') {
            break;
        }
        input = vec![best as u32];
    }
    let text = tok
        .decode(&out, true)
        .map_err(|e| AgentError::Text(e.to_string()))?;
    Ok(text.split('\n').next().unwrap_or("").trim().to_string())
}

/// Exact match after trimming and collapsing whitespace.
pub fn exact_match(prediction: &str, answer: &str) -> bool {
    let norm = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    norm(prediction) == norm(answer)
}

/// One scored test item.
#[derive(Debug, Clone, Serialize)]
pub struct ItemResult {
    pub index: usize,
    pub answer: String,
    /// Multiple choice: the option picked under sum, mean and unconditional; free-form: the
    /// greedy answer three times.
    pub picked: [String; 3],
    pub correct: [bool; 3],
    pub prompt_tokens: usize,
}

/// Accuracy of a K-shot run.
#[derive(Debug, Clone, Serialize)]
pub struct FewShotReport {
    pub task: String,
    pub shots: usize,
    pub seed: u64,
    pub items: usize,
    pub multiple_choice: bool,
    /// Accuracy under sum, mean and unconditional (free-form: exact match three times).
    pub accuracy: [f64; 3],
    pub results: Vec<ItemResult>,
}

/// Settings of a run.
#[derive(Debug, Clone, Copy)]
pub struct FewShotConfig {
    pub shots: usize,
    pub seed: u64,
    /// Most test items scored (the first ones).
    pub limit: Option<usize>,
    /// Greedy tokens for free-form answers.
    pub max_new_tokens: usize,
}

fn encode(tok: &Tokenizer, s: &str) -> Result<Vec<u32>> {
    tok.encode(s, false)
        .map_err(|e| AgentError::Text(e.to_string()))
}

/// Runs the K-shot evaluation of `task`. `progress(done, total)` is called after each item.
pub fn evaluate(
    lm: &dyn CausalLm,
    tok: &Tokenizer,
    task: &Task,
    cfg: FewShotConfig,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<FewShotReport> {
    let test: Vec<&Item> = task
        .test
        .iter()
        .take(cfg.limit.unwrap_or(usize::MAX))
        .collect();
    if test.is_empty() {
        return Err(AgentError::Task(format!(
            "task {}: expected at least one test item, found none",
            task.name
        )));
    }
    let mc = test.iter().all(|i| !i.options.is_empty());
    let uncond_ctx = encode(tok, UNCONDITIONAL_CONTEXT)?;
    let mut uncond_cache: HashMap<String, f64> = HashMap::new();
    let mut results = Vec::with_capacity(test.len());
    for (index, item) in test.iter().enumerate() {
        let demos = pick_demos(&task.train, item, cfg.shots, cfg.seed, index)?;
        let prompt = encode(tok, &format_prompt(&demos, item))?;
        let r = if item.options.is_empty() {
            let pred = greedy_line(lm, tok, &prompt, cfg.max_new_tokens)?;
            let ok = exact_match(&pred, &item.answer);
            ItemResult {
                index,
                answer: item.answer.clone(),
                picked: [pred.clone(), pred.clone(), pred],
                correct: [ok; 3],
                prompt_tokens: prompt.len(),
            }
        } else {
            let conts: Vec<Vec<u32>> = item
                .options
                .iter()
                .map(|o| encode(tok, &format_option(o)))
                .collect::<Result<_>>()?;
            let cond = continuation_logprobs(lm, &prompt, &conts)?;
            let missing: Vec<usize> = (0..conts.len())
                .filter(|&i| !uncond_cache.contains_key(&item.options[i]))
                .collect();
            if !missing.is_empty() {
                let cs: Vec<Vec<u32>> = missing.iter().map(|&i| conts[i].clone()).collect();
                let lp = continuation_logprobs(lm, &uncond_ctx, &cs)?;
                for (&i, l) in missing.iter().zip(lp) {
                    uncond_cache.insert(item.options[i].clone(), l.iter().sum());
                }
            }
            let scores: Vec<OptionScore> = cond
                .iter()
                .zip(&item.options)
                .map(|(l, o)| {
                    let sum: f64 = l.iter().sum();
                    OptionScore {
                        sum,
                        mean: sum / l.len() as f64,
                        unconditional: sum - uncond_cache.get(o).copied().unwrap_or(0.0),
                    }
                })
                .collect();
            let p = pick(&scores);
            ItemResult {
                index,
                answer: item.answer.clone(),
                picked: p.map(|i| item.options[i].clone()),
                correct: p.map(|i| item.options[i] == item.answer),
                prompt_tokens: prompt.len(),
            }
        };
        results.push(r);
        progress(index + 1, test.len());
    }
    let n = results.len() as f64;
    let acc = |j: usize| results.iter().filter(|r| r.correct[j]).count() as f64 / n;
    Ok(FewShotReport {
        task: task.name.clone(),
        shots: cfg.shots,
        seed: cfg.seed,
        items: results.len(),
        multiple_choice: mc,
        accuracy: [acc(0), acc(1), acc(2)],
        results,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use canon_models::Cache;

    /// A toy LM whose logits depend on the whole prefix; it keeps the prefix in its cache (token ids
    /// stored as keys of layer 0), so cache reuse and truncation change the result if done wrong.
    struct Toy;
    const V: usize = 11;

    fn toy_logits(prefix: &[u32]) -> Vec<f32> {
        let s: u32 = prefix
            .iter()
            .enumerate()
            .map(|(i, &t)| t * (i as u32 + 1))
            .sum();
        (0..V)
            .map(|v| (((s as f64 + 1.0) * 0.61 * (v as f64 + 1.0)).sin() * 2.0) as f32)
            .collect()
    }

    impl CausalLm for Toy {
        fn forward(
            &self,
            ids: &Tensor,
            cache: &mut Cache,
            which: Positions,
        ) -> canon_models::Result<Tensor> {
            let new = ids.squeeze(0)?.to_vec1::<u32>()?;
            let as_f: Vec<f32> = new.iter().map(|&t| t as f32).collect();
            let k = Tensor::from_vec(as_f, (1, 1, new.len(), 1), &Device::Cpu)?;
            let (all, _) = cache.layers[0].append(&k, &k)?;
            let all: Vec<u32> = all
                .flatten_all()?
                .to_vec1::<f32>()?
                .into_iter()
                .map(|v| v as u32)
                .collect();
            let before = all.len() - new.len();
            let pos: Vec<usize> = match which {
                Positions::Last => vec![all.len() - 1],
                _ => (before..all.len()).collect(),
            };
            let rows: Vec<f32> = pos.iter().flat_map(|&p| toy_logits(&all[..=p])).collect();
            Ok(Tensor::from_vec(rows, (1, pos.len(), V), &Device::Cpu)?)
        }
        fn new_cache(&self) -> Cache {
            Cache::new(1)
        }
        fn vocab_size(&self) -> usize {
            V
        }
        fn max_seq_len(&self) -> usize {
            64
        }
    }

    fn direct(seq: &[u32], from: usize) -> Vec<f64> {
        (from..seq.len())
            .map(|j| log_softmax_at(&toy_logits(&seq[..j]), seq[j]).unwrap())
            .collect()
    }

    #[test]
    fn shared_prefix_scores_equal_scoring_each_full_sequence() {
        let ctx = vec![3u32, 1, 4, 1, 5];
        let conts = vec![
            vec![9u32, 2, 6],
            vec![5u32],
            vec![3u32, 5, 8, 9, 7],
            vec![9u32, 2],
        ];
        let got = continuation_logprobs(&Toy, &ctx, &conts).unwrap();
        for (c, g) in conts.iter().zip(&got) {
            let mut seq = ctx.clone();
            seq.extend(c);
            let want = direct(&seq, ctx.len());
            assert_eq!(g.len(), want.len());
            for (a, b) in g.iter().zip(&want) {
                assert!((a - b).abs() < 1e-5, "{a} vs {b}");
            }
        }
    }

    #[test]
    fn over_long_prompts_and_empty_options_are_errors() {
        let ctx = vec![1u32; 60];
        assert!(continuation_logprobs(&Toy, &ctx, &[vec![1; 5]]).is_err());
        assert!(continuation_logprobs(&Toy, &[1], &[vec![]]).is_err());
        assert!(continuation_logprobs(&Toy, &[], &[vec![1]]).is_err());
    }

    fn item(q: &str, a: &str) -> Item {
        Item {
            question: q.into(),
            options: vec![],
            answer: a.into(),
        }
    }

    #[test]
    fn demonstrations_never_include_the_test_question_and_are_seeded() {
        let train: Vec<Item> = (0..6).map(|i| item(&format!("q{i}"), "a")).collect();
        let test = item("q2", "a");
        for seed in 0..20 {
            let d = pick_demos(&train, &test, 5, seed, 0).unwrap();
            assert_eq!(d.len(), 5);
            assert!(d.iter().all(|x| x.question != "q2"));
        }
        let a = pick_demos(&train, &test, 3, 7, 4).unwrap();
        let b = pick_demos(&train, &test, 3, 7, 4).unwrap();
        assert_eq!(a, b);
        let e = pick_demos(&train, &test, 6, 0, 0).unwrap_err().to_string();
        assert!(e.contains("--shots 6") && e.contains("5 usable"), "{e}");
    }

    #[test]
    fn the_three_normalisations_can_pick_three_different_options() {
        // Option 0: best total; option 1: best per token; option 2: best against its prior.
        let s = [
            OptionScore {
                sum: -2.0,
                mean: -2.0,
                unconditional: 0.5,
            },
            OptionScore {
                sum: -3.0,
                mean: -1.0,
                unconditional: 0.2,
            },
            OptionScore {
                sum: -6.0,
                mean: -3.0,
                unconditional: 4.0,
            },
        ];
        assert_eq!(pick(&s), [0, 1, 2]);
    }

    #[test]
    fn prompts_put_demonstrations_before_the_question() {
        let d = item("2+2", "4");
        let t = item("3+3", "6");
        assert_eq!(format_prompt(&[&d], &t), "Q: 2+2\nA: 4\n\nQ: 3+3\nA:");
        assert!(exact_match(" 6 ", "6"));
        assert!(!exact_match("60", "6"));
    }
}
