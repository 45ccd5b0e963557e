//! Sentence embeddings the way sentence-transformers computes them (Reimers & Gurevych, 2019):
//! tokenize with truncation at the model's `max_seq_length` ([CLS]/[SEP] included), run the encoder
//! over length-sorted, dynamically padded batches, pool (mean over real tokens — [CLS] and [SEP]
//! included — or the [CLS] vector), then L2-normalise when the model's modules say so.

use candle_core::{DType, Device, Tensor};
use canon_text::Tokenizer;
use rayon::prelude::*;

use crate::{Encoder, ModelError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    Mean,
    Cls,
}

pub struct SentenceEmbedder {
    pub encoder: Box<dyn Encoder>,
    pub tokenizer: Tokenizer,
    /// Longest input in tokens, special tokens included.
    pub max_seq_length: usize,
    pub pooling: Pooling,
    pub normalize: bool,
    pub pad_id: u32,
}

impl SentenceEmbedder {
    /// Token ids of one text as the model sees it ([CLS] … [SEP], truncated).
    pub fn token_ids(&self, text: &str) -> Result<Vec<u32>> {
        // The tokenizer was set to truncate at `max_seq_length` when the embedder was built.
        Ok(self.tokenizer.encode_with_special(text)?)
    }

    pub fn dim(&self) -> usize {
        self.encoder.hidden_size()
    }

    /// Embeds `texts` in batches of `batch_size`; the result is in input order.
    pub fn embed(&self, texts: &[String], batch_size: usize) -> Result<Vec<Vec<f32>>> {
        if batch_size == 0 {
            return Err(ModelError::Input("batch size must be at least 1".into()));
        }
        let encoded: Vec<Vec<u32>> = texts
            .par_iter()
            .map(|t| self.token_ids(t))
            .collect::<Result<_>>()?;
        // Longest first, as sentence-transformers does: similar lengths share a batch.
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(encoded[i].len()));
        // Batches are independent: running them as parallel tasks (each also splits its sequences
        // across threads) keeps every core busy across batch boundaries.
        let batches: Vec<&[usize]> = order.chunks(batch_size).collect();
        let pooled: Vec<Vec<Vec<f32>>> = batches
            .par_iter()
            .map(|chunk| {
                let rows: Vec<&[u32]> = chunk.iter().map(|&i| encoded[i].as_slice()).collect();
                self.embed_batch(&rows)
            })
            .collect::<Result<_>>()?;
        let mut out = vec![Vec::new(); texts.len()];
        for (chunk, pooled) in batches.iter().zip(pooled) {
            for (&i, v) in chunk.iter().zip(pooled) {
                out[i] = v;
            }
        }
        Ok(out)
    }

    /// Embeds already-tokenized rows (one padded batch).
    pub fn embed_batch(&self, rows: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        let b = rows.len();
        let t = rows.iter().map(|r| r.len()).max().unwrap_or(0).max(1);
        let mut ids = vec![self.pad_id; b * t];
        let mut mask = vec![0f32; b * t];
        for (i, r) in rows.iter().enumerate() {
            ids[i * t..i * t + r.len()].copy_from_slice(r);
            mask[i * t..i * t + r.len()]
                .iter_mut()
                .for_each(|m| *m = 1.0);
        }
        let ids = Tensor::from_vec(ids, (b, t), &Device::Cpu)?;
        let mask = Tensor::from_vec(mask, (b, t), &Device::Cpu)?;
        let h = self.encoder.forward(&ids, None, &mask)?; // [b, t, d]
        let d = h.dim(2)?;
        let h: Vec<f32> = h.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        // Pooling over plain rows: for a handful of vectors per batch, candle ops would cost more
        // in allocation and dispatch than the arithmetic.
        let pooled = rows.iter().enumerate().map(|(i, r)| {
            let seq = &h[i * t * d..(i + 1) * t * d];
            let mut v = match self.pooling {
                // Σ_j h_j over the real tokens / their count (clamped like sentence-transformers).
                Pooling::Mean => {
                    let mut sum = vec![0f32; d];
                    for tok in seq.chunks_exact(d).take(r.len()) {
                        for (s, x) in sum.iter_mut().zip(tok) {
                            *s += x;
                        }
                    }
                    let n = (r.len() as f32).max(1e-9);
                    sum.iter_mut().for_each(|s| *s /= n);
                    sum
                }
                Pooling::Cls => seq[..d].to_vec(),
            };
            if self.normalize {
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                v.iter_mut().for_each(|x| *x /= norm);
            }
            v
        });
        Ok(pooled.collect())
    }
}
