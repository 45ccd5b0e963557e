//! Decoding an encoder-decoder (`Seq2SeqLm`: the Transformer of paper 1, T5 of paper 8): greedy and
//! beam search with the GNMT length penalty the Transformer paper uses (§6.1: beam 4, α = 0.6,
//! maximum output length = input length + 50).
//!
//! Scoring: a finished hypothesis `Y` (its tokens including the end token, when it has one) scores
//! `log P(Y | X) / lp(Y)` with `lp(Y) = ((5 + |Y|) / 6)^α` (Wu et al., 2016, eq. 14; `α = 0` is
//! plain log-probability).
//!
//! Beam search runs the `k` hypotheses of one source as one batch with the model's KV cache; after
//! each step the cache rows are reordered by parent beam (`KvCache::select_rows`). Each step ranks
//! the `2k` best continuations; those among the first `k` ranks that end with `eos` are finished,
//! the first `k` that do not stay alive, and the search stops once `k` hypotheses have finished or
//! the length limit is reached (then the alive ones count as finished). This is fairseq's rule; with
//! `k = 1` it is exactly greedy decoding.
//!
//! Shapes: source ids `[s]` per sentence; the model sees `[b, s]` and `[b, 1]` per step.

use candle_core::{DType, Device, Tensor};
use canon_models::{Cache, Seq2SeqLm};

use crate::sampling::{argmax, log_softmax};
use crate::{InferError, Result};

/// How to decode.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecodeOptions {
    /// Beam size `k` (1 = greedy).
    pub beam_size: usize,
    /// GNMT's α (0 = no length normalisation).
    pub length_penalty: f64,
    /// Output length limit = source length + `extra_len` (the paper: 50) …
    pub extra_len: usize,
    /// … unless given here (tokens, the end token included).
    pub max_tokens: Option<usize>,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        Self {
            beam_size: 4,
            length_penalty: 0.6,
            extra_len: 50,
            max_tokens: None,
        }
    }
}

impl DecodeOptions {
    pub fn validate(&self) -> Result<()> {
        if self.beam_size == 0 {
            return Err(InferError::Sampling("beam size must be at least 1".into()));
        }
        if !(self.length_penalty >= 0.0 && self.length_penalty.is_finite()) {
            return Err(InferError::Sampling(format!(
                "length penalty α must be ≥ 0, found {}",
                self.length_penalty
            )));
        }
        if self.max_tokens == Some(0) {
            return Err(InferError::Sampling("max tokens must be positive".into()));
        }
        Ok(())
    }

    /// Tokens the decoder may emit for a source of `src_len` tokens (the end token included),
    /// within the model's position table (the start token takes position 0).
    pub fn limit(&self, src_len: usize, model: &dyn Seq2SeqLm) -> usize {
        self.max_tokens
            .unwrap_or(src_len + self.extra_len)
            .min(model.max_target_len())
            .max(1)
    }
}

/// A decoded target.
#[derive(Debug, Clone, PartialEq)]
pub struct Hypothesis {
    /// Generated ids, without the start token and without `eos`.
    pub tokens: Vec<u32>,
    /// Whether it ended with `eos` (false: stopped at the length limit).
    pub finished: bool,
    /// `log P(Y | X)` summed over the emitted tokens (`eos` included when emitted).
    pub logprob: f64,
    /// `logprob / lp(|Y|)`.
    pub score: f64,
}

/// GNMT's `lp(n) = ((5 + n) / 6)^α`.
pub fn length_penalty(n: usize, alpha: f64) -> f64 {
    ((5.0 + n as f64) / 6.0).powf(alpha)
}

fn hypothesis(tokens: Vec<u32>, finished: bool, logprob: f64, alpha: f64) -> Hypothesis {
    let n = tokens.len() + usize::from(finished);
    Hypothesis {
        score: logprob / length_penalty(n, alpha),
        tokens,
        finished,
        logprob,
    }
}

/// `srcs` right-padded into `[b, s]` ids and their `[b, s]` mask.
pub fn pad_batch(srcs: &[Vec<u32>], pad: u32, device: &Device) -> Result<(Tensor, Tensor)> {
    let s = srcs.iter().map(Vec::len).max().unwrap_or(0);
    if s == 0 || srcs.iter().any(Vec::is_empty) {
        return Err(InferError::EmptyPrompt);
    }
    let p = canon_nn::ops::pad_batch(srcs, pad, 0);
    Ok((p.ids_tensor(device)?, p.mask_tensor(1u32, 0u32, device)?))
}

/// Reorders (and grows or shrinks) every cache layer to the batch rows `rows`.
pub fn reorder_cache(cache: &mut Cache, rows: &[u32], device: &Device) -> Result<()> {
    let idx = Tensor::new(rows, device)?;
    for l in &mut cache.layers {
        l.select_rows(&idx)?;
    }
    Ok(())
}

/// Rows of the last position's logits, `[b, V]` → `b` vectors.
fn last_rows(logits: &Tensor) -> Result<Vec<Vec<f32>>> {
    let (_, t, _) = logits.dims3()?;
    Ok(logits
        .narrow(1, t - 1, 1)?
        .squeeze(1)?
        .to_dtype(DType::F32)?
        .to_vec2()?)
}

/// Greedy decoding of a batch of sources (padded together), one hypothesis per source.
pub fn greedy(
    model: &dyn Seq2SeqLm,
    srcs: &[Vec<u32>],
    pad: u32,
    opts: &DecodeOptions,
) -> Result<Vec<Hypothesis>> {
    opts.validate()?;
    if srcs.is_empty() {
        return Ok(Vec::new());
    }
    let dev = Device::Cpu;
    let (src, mask) = pad_batch(srcs, pad, &dev)?;
    let enc = model.encode(&src, &mask)?;
    let b = srcs.len();
    let limits: Vec<usize> = srcs.iter().map(|s| opts.limit(s.len(), model)).collect();
    let max = limits.iter().copied().max().unwrap_or(1);
    let eos = model.eos_id();
    let mut cache = model.new_cache();
    let mut out: Vec<(Vec<u32>, bool, f64)> = vec![(Vec::new(), false, 0.0); b];
    let mut done = vec![false; b];
    let mut next = vec![model.decoder_start_id(); b];
    for step in 0..max {
        let inp = Tensor::from_vec(next.clone(), (b, 1), &dev)?;
        let rows = last_rows(&model.decode(&enc, &mask, &inp, &mut cache)?)?;
        for (i, row) in rows.iter().enumerate() {
            if done[i] {
                next[i] = eos;
                continue;
            }
            let tok = argmax(row) as u32;
            out[i].2 += log_softmax(row)[tok as usize] as f64;
            next[i] = tok;
            if tok == eos {
                out[i].1 = true;
                done[i] = true;
            } else {
                out[i].0.push(tok);
                done[i] = step + 1 >= limits[i];
            }
        }
        if done.iter().all(|&d| d) {
            break;
        }
    }
    Ok(out
        .into_iter()
        .map(|(t, f, lp)| hypothesis(t, f, lp, opts.length_penalty))
        .collect())
}

/// Beam search for one source; finished hypotheses best first (at least one).
pub fn beam_search(
    model: &dyn Seq2SeqLm,
    src: &[u32],
    opts: &DecodeOptions,
) -> Result<Vec<Hypothesis>> {
    opts.validate()?;
    let dev = Device::Cpu;
    let (src_t, mask1) = pad_batch(&[src.to_vec()], 0, &dev)?;
    let enc1 = model.encode(&src_t, &mask1)?;
    let (k, alpha, eos) = (opts.beam_size, opts.length_penalty, model.eos_id());
    let limit = opts.limit(src.len(), model);
    let mut cache = model.new_cache();
    // Alive hypotheses: tokens so far (no start token) and summed log-probability.
    let mut alive: Vec<(Vec<u32>, f64)> = vec![(Vec::new(), 0.0)];
    let mut finished: Vec<Hypothesis> = Vec::new();
    for step in 0..limit {
        let n = alive.len();
        let rows_idx = vec![0u32; n];
        let idx = Tensor::new(rows_idx.as_slice(), &dev)?;
        let (enc, mask) = (enc1.index_select(&idx, 0)?, mask1.index_select(&idx, 0)?);
        let last: Vec<u32> = alive
            .iter()
            .map(|(t, _)| t.last().copied().unwrap_or(model.decoder_start_id()))
            .collect();
        let inp = Tensor::from_vec(last, (n, 1), &dev)?;
        let rows = last_rows(&model.decode(&enc, &mask, &inp, &mut cache)?)?;
        // Every continuation (beam, token, total log-prob); keep the best 2k.
        let mut cands: Vec<(usize, u32, f64)> = Vec::with_capacity(n * rows[0].len());
        for (bi, row) in rows.iter().enumerate() {
            for (tok, lp) in log_softmax(row).into_iter().enumerate() {
                cands.push((bi, tok as u32, alive[bi].1 + lp as f64));
            }
        }
        let keep = (2 * k).min(cands.len());
        let by_score = |a: &(usize, u32, f64), b: &(usize, u32, f64)| {
            b.2.total_cmp(&a.2).then(a.0.cmp(&b.0)).then(a.1.cmp(&b.1))
        };
        if keep < cands.len() {
            cands.select_nth_unstable_by(keep - 1, by_score);
            cands.truncate(keep);
        }
        cands.sort_by(by_score);
        let last_step = step + 1 >= limit;
        let mut next: Vec<(Vec<u32>, f64)> = Vec::with_capacity(k);
        let mut parents: Vec<u32> = Vec::with_capacity(k);
        for (rank, &(bi, tok, lp)) in cands.iter().enumerate() {
            if tok == eos {
                if rank < k && finished.len() < k {
                    finished.push(hypothesis(alive[bi].0.clone(), true, lp, alpha));
                }
                continue;
            }
            if next.len() < k {
                let mut t = alive[bi].0.clone();
                t.push(tok);
                next.push((t, lp));
                parents.push(bi as u32);
            }
        }
        if finished.len() >= k || next.is_empty() {
            break;
        }
        if last_step {
            finished.extend(
                next.into_iter()
                    .map(|(t, lp)| hypothesis(t, false, lp, alpha)),
            );
            break;
        }
        reorder_cache(&mut cache, &parents, &dev)?;
        alive = next;
    }
    finished.sort_by(|a, b| b.score.total_cmp(&a.score));
    if finished.is_empty() {
        // Only possible when every candidate was `eos` beyond rank k: fall back to greedy.
        return greedy(model, &[src.to_vec()], 0, opts);
    }
    Ok(finished)
}

/// Decodes each source with `opts` (greedy when `beam_size` is 1), returning the best hypothesis.
pub fn translate_ids(
    model: &dyn Seq2SeqLm,
    srcs: &[Vec<u32>],
    pad: u32,
    opts: &DecodeOptions,
) -> Result<Vec<Hypothesis>> {
    if opts.beam_size == 1 {
        return greedy(model, srcs, pad, opts);
    }
    srcs.iter()
        .map(|s| {
            let mut h = beam_search(model, s, opts)?;
            Ok(h.swap_remove(0))
        })
        .collect()
}

#[cfg(test)]
#[path = "seq2seq_tests.rs"]
mod tests;
