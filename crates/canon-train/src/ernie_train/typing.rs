//! ERNIE's fine-tuning task: mention typing (module, class or function) from the final state of
//! a mention's first token.

use std::sync::Arc;

use candle_core::{D, Device, Tensor};
use canon_models::ernie::Ernie;
use canon_nn::{Linear, SplitMix64, masked_cross_entropy};

use super::*;

/// One typing example: a mention (the aligned position `pos` of sequence `seq`) and its entity's
/// kind.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TypingExample {
    pub seq: usize,
    pub pos: usize,
    pub label: u32,
}

/// Every aligned position of `seqs`.
pub fn typing_examples(seqs: &[Sequence], kinds: &[EntityKind]) -> Vec<TypingExample> {
    let mut out = Vec::new();
    for (i, s) in seqs.iter().enumerate() {
        for (p, &e) in s.ents.iter().enumerate() {
            if e >= 0 {
                out.push(TypingExample {
                    seq: i,
                    pos: p,
                    label: kinds[e as usize].index() as u32,
                });
            }
        }
    }
    out
}

/// Fine-tuning on mention typing: the token state at the mention's first token → `W x + b` over the
/// three kinds; cross-entropy. ERNIE sees the sequence's (uncorrupted) entity alignments; a plain
/// BERT sees only the tokens.
pub struct TypingObjective {
    pub model: Ernie,
    pub classifier: Linear,
    pub data: Arc<ErnieCorpus>,
    pub train: Vec<TypingExample>,
    pub test: Vec<TypingExample>,
    pub batch_size: usize,
}

impl TypingObjective {
    /// Logits `[n, 3]` of the examples (each as its own row of a batch).
    pub fn logits(&self, seqs: &[Sequence], ex: &[TypingExample]) -> Result<Tensor> {
        let rows: Vec<(Vec<u32>, Vec<i64>)> = ex
            .iter()
            .map(|x| (seqs[x.seq].ids.clone(), seqs[x.seq].ents.clone()))
            .collect();
        let batch = pad_batch(&rows, &self.data.table)?;
        let out = self.model.forward(&batch.ids, &batch.mask, &batch.ents)?;
        let d = self.model.config.hidden_size;
        let idx: Vec<u32> = ex
            .iter()
            .enumerate()
            .map(|(i, x)| (i * batch.t + x.pos) as u32)
            .collect();
        let h = out
            .tokens
            .reshape((batch.b * batch.t, d))?
            .index_select(&Tensor::from_vec(idx, ex.len(), &Device::Cpu)?, 0)?;
        Ok(self.classifier.forward(&h)?)
    }

    /// Majority-class accuracy on the test examples (the floor a classifier must beat).
    pub fn majority_baseline(&self) -> f64 {
        let mut c = [0usize; 3];
        self.train.iter().for_each(|x| c[x.label as usize] += 1);
        let maj = (0..3).max_by_key(|&i| c[i]).unwrap_or(0) as u32;
        let hit = self.test.iter().filter(|x| x.label == maj).count();
        hit as f64 / self.test.len().max(1) as f64
    }
}

impl Objective for TypingObjective {
    fn train_batch(&mut self, rng: &mut SplitMix64, _index: u64) -> Result<BatchLoss> {
        let ex: Vec<TypingExample> = (0..self.batch_size)
            .map(|_| self.train[rng.below(self.train.len())])
            .collect();
        let logits = self.logits(&self.data.train, &ex)?;
        let labels: Vec<i64> = ex.iter().map(|x| x.label as i64).collect();
        let (loss, _) = masked_cross_entropy(&logits, &labels, 0.0)?;
        let pred: Vec<u32> = logits.argmax(D::Minus1)?.to_vec1()?;
        let acc =
            pred.iter().zip(&ex).filter(|(p, x)| **p == x.label).count() as f64 / ex.len() as f64;
        let tokens = ex.iter().map(|x| self.data.train[x.seq].ids.len()).sum();
        Ok(BatchLoss {
            loss: f64::from(loss.to_scalar::<f32>()?),
            total: loss,
            tokens,
            extra: vec![("train_accuracy".into(), acc)],
        })
    }

    fn evaluate(&mut self) -> Result<Vec<(String, f64)>> {
        let (mut loss, mut ok) = (0.0, 0usize);
        let mut per_kind = [(0usize, 0usize); 3];
        for chunk in self.test.chunks(64) {
            let logits = self.logits(&self.data.val, chunk)?.detach();
            let labels: Vec<i64> = chunk.iter().map(|x| x.label as i64).collect();
            let (l, _) = masked_cross_entropy(&logits, &labels, 0.0)?;
            loss += f64::from(l.to_scalar::<f32>()?) * chunk.len() as f64;
            let pred: Vec<u32> = logits.argmax(D::Minus1)?.to_vec1()?;
            for (p, x) in pred.iter().zip(chunk) {
                let k = &mut per_kind[x.label as usize];
                k.1 += 1;
                if *p == x.label {
                    ok += 1;
                    k.0 += 1;
                }
            }
        }
        let n = self.test.len().max(1) as f64;
        let mut out = vec![
            ("eval_loss".to_string(), loss / n),
            ("eval_accuracy".into(), ok as f64 / n),
            ("eval_majority_baseline".into(), self.majority_baseline()),
        ];
        for k in EntityKind::ALL {
            let (c, t) = per_kind[k.index()];
            out.push((
                format!("eval_accuracy_{}", k.name()),
                c as f64 / t.max(1) as f64,
            ));
        }
        Ok(out)
    }
}
