//! Sentence embeddings the way sentence-transformers computes them (Reimers & Gurevych, 2019):
//! tokenize with truncation at the model's `max_seq_length` ([CLS]/[SEP] included), run the encoder
//! over length-sorted, dynamically padded batches, pool (mean over real tokens — [CLS] and [SEP]
//! included — or the [CLS] vector), then L2-normalise when the model's modules say so.

use candle_core::{DType, Device, Tensor};
use canon_text::Tokenizer;

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
            .iter()
            .map(|t| self.token_ids(t))
            .collect::<Result<_>>()?;
        // Longest first, as sentence-transformers does: similar lengths share a batch.
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(encoded[i].len()));
        let mut out = vec![Vec::new(); texts.len()];
        for chunk in order.chunks(batch_size) {
            let rows: Vec<&[u32]> = chunk.iter().map(|&i| encoded[i].as_slice()).collect();
            let pooled = self.embed_batch(&rows)?;
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
        let pooled = match self.pooling {
            Pooling::Mean => {
                let m = mask.unsqueeze(2)?; // [b, t, 1]
                let sum = h.broadcast_mul(&m)?.sum(1)?; // [b, d]
                let n = m.sum(1)?.clamp(1e-9, f64::MAX)?; // [b, 1]
                sum.broadcast_div(&n)?
            }
            Pooling::Cls => h.narrow(1, 0, 1)?.squeeze(1)?,
        };
        let pooled = if self.normalize {
            let norm = pooled
                .sqr()?
                .sum_keepdim(1)?
                .sqrt()?
                .clamp(1e-12, f64::MAX)?;
            pooled.broadcast_div(&norm)?
        } else {
            pooled
        };
        Ok(pooled.to_dtype(DType::F32)?.to_vec2()?)
    }
}
