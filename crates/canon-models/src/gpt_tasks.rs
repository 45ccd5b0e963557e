//! GPT-1's supervised fine-tuning (Radford et al., 2018, paper 2, §3.2–3.3): task inputs as one token
//! sequence with start, delimiter and extract tokens; a linear head `W_y` on the final hidden state
//! at the extract token; and the auxiliary LM objective `L3 = L2 + λ·L1` (λ = 0.5).
//!
//! Input transformations (Figure 1): classification `[s] text [e]`; entailment
//! `[s] premise [d] hypothesis [e]`; similarity: both orders, final states added element-wise before
//! the head; multiple choice: `[s] context [d] answer_k [e]` per candidate, one scalar each, softmax
//! over candidates. Each segment is truncated to its budget before the special tokens are added
//! (the reference's `max_len = n_ctx/2 − 2` per text). The special tokens are appended after the
//! vocabulary (their embedding rows are new parameters).
//!
//! Shapes: a batch of sequences is right-padded to `[b, t]`; `extract[i]` is the extract index of
//! row i; the head maps `[b, d]` → `[b, classes]`.

use candle_core::{D, DType, Device, Tensor};
use canon_nn::{Linear, lm_loss};

use crate::gpt::Gpt;
use crate::{ModelError, Result};

/// Ids of GPT-1's three added tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskTokens {
    pub start: u32,
    pub delim: u32,
    pub extract: u32,
}

impl TaskTokens {
    /// The three ids after a vocabulary of `vocab` tokens (the model's table has `vocab + 3` rows).
    pub fn after_vocab(vocab: u32) -> Self {
        Self {
            start: vocab,
            delim: vocab + 1,
            extract: vocab + 2,
        }
    }

    /// `[s] text [e]`, the text cut to `budget` tokens.
    pub fn classification(&self, text: &[u32], budget: usize) -> Vec<u32> {
        let mut v = vec![self.start];
        v.extend_from_slice(&text[..text.len().min(budget)]);
        v.push(self.extract);
        v
    }

    /// `[s] a [d] b [e]`, each text cut to `budget` tokens (entailment; one order of similarity;
    /// one candidate of multiple choice).
    pub fn pair(&self, a: &[u32], b: &[u32], budget: usize) -> Vec<u32> {
        let mut v = vec![self.start];
        v.extend_from_slice(&a[..a.len().min(budget)]);
        v.push(self.delim);
        v.extend_from_slice(&b[..b.len().min(budget)]);
        v.push(self.extract);
        v
    }
}

/// Right-pads sequences into `[b, t]` and returns each row's extract index (its last real token).
pub fn pad_batch(seqs: &[Vec<u32>], pad: u32) -> Result<(Tensor, Vec<usize>)> {
    let t = seqs.iter().map(Vec::len).max().unwrap_or(0);
    if t == 0 {
        return Err(ModelError::Input("task batch: no tokens".into()));
    }
    if seqs.iter().any(Vec::is_empty) {
        return Err(ModelError::Input("task batch: an empty sequence".into()));
    }
    let p = canon_nn::ops::pad_batch(seqs, pad, 0);
    let extract = p.lens.iter().map(|n| n - 1).collect();
    Ok((p.ids_tensor(&Device::Cpu)?, extract))
}

/// `h[i, extract[i], :]` for each row: `[b, t, d]` → `[b, d]`.
pub fn gather_extract(hidden: &Tensor, extract: &[usize]) -> Result<Tensor> {
    let (b, t, d) = hidden.dims3()?;
    let flat = hidden.reshape((b * t, d))?;
    let idx: Vec<u32> = extract
        .iter()
        .enumerate()
        .map(|(i, &e)| (i * t + e) as u32)
        .collect();
    Ok(flat.index_select(&Tensor::new(idx.as_slice(), hidden.device())?, 0)?)
}

/// How the extract states of an example's sequences become its logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Combine {
    /// One sequence per example; `W_y` maps its state to class logits.
    Single,
    /// Similarity: two sequences (both orders) per example, states added, then `W_y`.
    Sum,
    /// Multiple choice: one sequence per candidate; `W_y` (one output) scores each; the logits
    /// across candidates are those scores.
    Choices,
}

/// Logits `[n, classes]` (or `[n, candidates]`) for `n` examples of `k` sequences each, all run as
/// one right-padded batch; also the final hidden states `[n·k, t, d]` for the LM term.
pub fn task_logits(
    model: &Gpt,
    w_y: &Linear,
    examples: &[Vec<Vec<u32>>],
    combine: Combine,
    pad: u32,
) -> Result<(Tensor, Tensor)> {
    let n = examples.len();
    let k = examples.first().map_or(0, Vec::len);
    if n == 0 || k == 0 || examples.iter().any(|e| e.len() != k) {
        return Err(ModelError::Input(format!(
            "task batch: expected a non-empty batch with the same number of sequences per example, found {:?}",
            examples.iter().map(Vec::len).collect::<Vec<_>>()
        )));
    }
    if combine == Combine::Sum && k != 2 {
        return Err(ModelError::Input(format!(
            "similarity: expected 2 sequences (both orders) per example, found {k}"
        )));
    }
    let flat: Vec<Vec<u32>> = examples.iter().flatten().cloned().collect();
    let (ids, ex) = pad_batch(&flat, pad)?;
    let (h, _) = model.forward_hidden(&ids)?;
    let states = gather_extract(&h, &ex)?; // [n·k, d]
    let logits = match combine {
        Combine::Single if k == 1 => w_y.forward(&states)?,
        Combine::Single => {
            return Err(ModelError::Input(format!(
                "classification: expected 1 sequence per example, found {k}"
            )));
        }
        Combine::Sum => {
            let d = states.dim(1)?;
            w_y.forward(&states.reshape((n, 2, d))?.sum(1)?)?
        }
        Combine::Choices => w_y.forward(&states)?.reshape((n, k))?,
    };
    Ok((logits, h))
}

/// Classifier logits `[b, classes]` for right-padded task sequences.
pub fn classify(model: &Gpt, w_y: &Linear, seqs: &[Vec<u32>], pad: u32) -> Result<Tensor> {
    let groups: Vec<Vec<Vec<u32>>> = seqs.iter().map(|s| vec![s.clone()]).collect();
    Ok(task_logits(model, w_y, &groups, Combine::Single, pad)?.0)
}

/// Similarity: the extract states of `[s] a [d] b [e]` and `[s] b [d] a [e]` summed, then `W_y`.
pub fn similarity(
    model: &Gpt,
    w_y: &Linear,
    tok: &TaskTokens,
    a: &[u32],
    b: &[u32],
    budget: usize,
    pad: u32,
) -> Result<Tensor> {
    let group = vec![tok.pair(a, b, budget), tok.pair(b, a, budget)];
    Ok(task_logits(model, w_y, &[group], Combine::Sum, pad)?.0)
}

/// Multiple choice: one scalar per candidate (`w_y` has one output), softmax across candidates.
pub fn multiple_choice(
    model: &Gpt,
    w_y: &Linear,
    tok: &TaskTokens,
    context: &[u32],
    answers: &[Vec<u32>],
    budget: usize,
    pad: u32,
) -> Result<Tensor> {
    let seqs: Vec<Vec<u32>> = answers
        .iter()
        .map(|a| tok.pair(context, a, budget))
        .collect();
    let scores = task_logits(model, w_y, &[seqs], Combine::Choices, pad)?
        .0
        .squeeze(0)?; // [k]
    Ok(candle_nn::ops::softmax(&scores, D::Minus1)?)
}

/// `L3 = L2 + λ·L1` for classification (one sequence per example). Returns `(total, clf, lm)`.
pub fn finetune_loss(
    model: &Gpt,
    w_y: &Linear,
    seqs: &[Vec<u32>],
    labels: &[u32],
    lambda: f64,
    pad: u32,
) -> Result<(Tensor, Tensor, Tensor)> {
    let groups: Vec<Vec<Vec<u32>>> = seqs.iter().map(|s| vec![s.clone()]).collect();
    task_loss(model, w_y, &groups, Combine::Single, labels, lambda, pad)
}

/// `L3 = L2 + λ·L1` for any task: cross-entropy of the example logits (classes, or candidates for
/// multiple choice) plus λ times the LM loss on every input sequence (padding excluded).
/// Returns `(total, clf, lm)`.
pub fn task_loss(
    model: &Gpt,
    w_y: &Linear,
    examples: &[Vec<Vec<u32>>],
    combine: Combine,
    labels: &[u32],
    lambda: f64,
    pad: u32,
) -> Result<(Tensor, Tensor, Tensor)> {
    if labels.len() != examples.len() {
        return Err(ModelError::Input(format!(
            "task batch: {} labels for {} examples",
            labels.len(),
            examples.len()
        )));
    }
    let (clf_logits, h) = task_logits(model, w_y, examples, combine, pad)?;
    let classes = clf_logits.dim(1)?;
    if let Some(&l) = labels.iter().find(|&&l| l as usize >= classes) {
        return Err(ModelError::Input(format!(
            "label {l} is out of range for {classes} classes or candidates"
        )));
    }
    let y = Tensor::new(labels, &Device::Cpu)?;
    let clf = lm_loss(&clf_logits, &y, 0.0)?.cross_entropy;
    // LM: predict token k+1 from position k, for real tokens only.
    let seqs: Vec<&Vec<u32>> = examples.iter().flatten().collect();
    let logits = model.logits(&h)?;
    let (_, t, v) = logits.dims3()?;
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    for (i, s) in seqs.iter().enumerate() {
        for k in 0..s.len().saturating_sub(1) {
            rows.push((i * t + k) as u32);
            targets.push(s[k + 1]);
        }
    }
    let lm = if rows.is_empty() {
        Tensor::zeros((), DType::F32, &Device::Cpu)?
    } else {
        let flat = logits.reshape((seqs.len() * t, v))?;
        let picked = flat.index_select(&Tensor::new(rows.as_slice(), &Device::Cpu)?, 0)?;
        lm_loss(
            &picked,
            &Tensor::new(targets.as_slice(), &Device::Cpu)?,
            0.0,
        )?
        .cross_entropy
    };
    let total = (&clf + (&lm * lambda)?)?;
    Ok((total, clf, lm))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpt::{BlockStyle, GptConfig};
    use crate::varstore::VarStore;
    use canon_nn::Weight;
    use canon_testkit::{Tol, assert_close, to_vec};

    const PAD: u32 = 0;

    fn setup(classes: usize) -> (Gpt, VarStore, Linear, candle_core::Var, TaskTokens) {
        let mut c = crate::gpt::tests_support::tiny(BlockStyle::PostLn);
        c.vocab_size = 23 + 3;
        let s = VarStore::new_random(4, c.init_policy());
        let m = Gpt::load(GptConfig { ..c }, &s).unwrap();
        let w = candle_core::Var::from_tensor(
            &(canon_testkit::randn(&[classes, 16], 8) * 0.3).unwrap(),
        )
        .unwrap();
        let head = Linear::new(Weight::Dense(w.as_tensor().clone()), None);
        (m, s, head, w, TaskTokens::after_vocab(23))
    }

    #[test]
    fn input_transformations_give_exact_ids_with_per_segment_truncation() {
        let t = TaskTokens::after_vocab(100);
        assert_eq!(t.classification(&[5, 6, 7], 2), vec![100, 5, 6, 102]);
        assert_eq!(
            t.pair(&[1, 2, 3], &[4, 5, 6, 7], 3),
            vec![100, 1, 2, 3, 101, 4, 5, 6, 102]
        );
        // n_ctx = 12 → budget n_ctx/2 − 2 = 4 per text.
        assert_eq!(
            t.pair(&[1, 2, 3, 4, 5, 6], &[7, 8], 12 / 2 - 2),
            vec![100, 1, 2, 3, 4, 101, 7, 8, 102]
        );
    }

    #[test]
    fn similarity_is_order_invariant_exactly() {
        let (m, _, head, _, tok) = setup(2);
        let a = similarity(&m, &head, &tok, &[3, 4, 5], &[9, 8], 8, PAD).unwrap();
        let b = similarity(&m, &head, &tok, &[9, 8], &[3, 4, 5], 8, PAD).unwrap();
        assert_eq!(to_vec(&a), to_vec(&b));
    }

    #[test]
    fn multiple_choice_permutes_with_candidates_and_sums_to_one() {
        let (m, _, head, _, tok) = setup(1);
        let ctx = [3u32, 4, 5];
        let ans = vec![vec![7u32], vec![8, 9], vec![10, 11, 12]];
        let p = to_vec(&multiple_choice(&m, &head, &tok, &ctx, &ans, 8, PAD).unwrap());
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        let perm = vec![ans[2].clone(), ans[0].clone(), ans[1].clone()];
        let q = to_vec(&multiple_choice(&m, &head, &tok, &ctx, &perm, 8, PAD).unwrap());
        for (i, j) in [(0, 2), (1, 0), (2, 1)] {
            assert!((q[i] - p[j]).abs() < 1e-6);
        }
    }

    #[test]
    fn right_padding_does_not_change_the_classifier() {
        let (m, _, head, _, tok) = setup(3);
        let s = tok.classification(&[3, 4, 5, 6], 8);
        let short = classify(&m, &head, std::slice::from_ref(&s), PAD).unwrap();
        let (ids, _) = pad_batch(&[s.clone(), vec![1; s.len() + 4]], PAD).unwrap();
        let (h, _) = m.forward_hidden(&ids).unwrap();
        let padded = head
            .forward(
                &gather_extract(&h, &[s.len() - 1])
                    .unwrap()
                    .narrow(0, 0, 1)
                    .unwrap(),
            )
            .unwrap();
        assert_close(&padded, &short, Tol::new(1e-6, 1e-5));
    }

    #[test]
    fn lm_term_does_not_touch_w_y_but_changes_the_body_gradient() {
        let (m, s, head, w, tok) = setup(2);
        let seqs = vec![
            tok.classification(&[3, 4, 5], 8),
            tok.pair(&[6, 7], &[8], 8),
        ];
        let labels = [1u32, 0];
        let grads = |lambda: f64| {
            let (total, clf, lm) = finetune_loss(&m, &head, &seqs, &labels, lambda, PAD).unwrap();
            let want =
                clf.to_scalar::<f32>().unwrap() + lambda as f32 * lm.to_scalar::<f32>().unwrap();
            assert!((total.to_scalar::<f32>().unwrap() - want).abs() < 1e-5);
            total.backward().unwrap()
        };
        let g0 = grads(0.0);
        let g5 = grads(0.5);
        assert_close(
            g0.get(w.as_tensor()).unwrap(),
            g5.get(w.as_tensor()).unwrap(),
            Tol::EXACT,
        );
        let body = s.get("h.0.mlp.c_fc.weight").unwrap();
        let a = to_vec(g0.get(body.as_tensor()).unwrap());
        let b = to_vec(g5.get(body.as_tensor()).unwrap());
        assert!(a.iter().zip(&b).any(|(x, y)| (x - y).abs() > 1e-6));
    }
}
