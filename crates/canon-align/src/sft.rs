//! Step 1 of InstructGPT: supervised fine-tuning on demonstrations (here the policy is trained
//! from scratch on them, so this is also its "pretraining" text for PPO-ptx). Loss: mean
//! cross-entropy over the response tokens (EOS included), prompt tokens masked.

use candle_core::Tensor;
use canon_nn::{IGNORE_INDEX, SplitMix64, masked_cross_entropy};
use canon_train::{BatchLoss, Objective};

use crate::lm::{Lm, pad};
use crate::task::{Problem, demonstration, response_ids};
use crate::{Result, data_err};

/// A prompt and its response as one id sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub ids: Vec<u32>,
    pub prompt_len: usize,
}

/// `per_prompt` demonstrations of each problem, drawn from the task's mixture.
pub fn demonstrations(problems: &[Problem], per_prompt: usize, seed: u64) -> Result<Vec<Example>> {
    let mut rng = SplitMix64::new(seed ^ 0xDE30_0000_0000_0001);
    let mut out = Vec::with_capacity(problems.len() * per_prompt);
    for p in problems {
        for _ in 0..per_prompt {
            let mut ids = p.prompt_ids();
            let prompt_len = ids.len();
            ids.extend(response_ids(&demonstration(p, &mut rng))?);
            out.push(Example { ids, prompt_len });
        }
    }
    Ok(out)
}

/// Sum of the response-token cross-entropy and the number of response tokens of a batch; the
/// loss tensor is their mean (graph kept).
pub fn response_nll(lm: &Lm, batch: &[&Example]) -> Result<(Tensor, usize)> {
    let seqs: Vec<Vec<u32>> = batch.iter().map(|e| e.ids.clone()).collect();
    let (ids, t) = pad(&seqs)?;
    let logits = lm.logits(&lm.hidden(&ids)?)?;
    let v = logits.dim(2)?;
    let mut labels = vec![IGNORE_INDEX; batch.len() * t];
    for (i, e) in batch.iter().enumerate() {
        for p in e.prompt_len.saturating_sub(1)..e.ids.len() - 1 {
            labels[i * t + p] = e.ids[p + 1] as i64;
        }
    }
    let (loss, n) = masked_cross_entropy(&logits.reshape((batch.len() * t, v))?, &labels, 0.0)?;
    Ok((loss, n))
}

/// Mean response-token NLL (nats/token) over `examples`, in batches of `batch` (no graph kept).
pub fn mean_nll(lm: &Lm, examples: &[Example], batch: usize) -> Result<f64> {
    let mut sum = 0.0;
    let mut n = 0usize;
    for chunk in examples.chunks(batch.max(1)) {
        let refs: Vec<&Example> = chunk.iter().collect();
        let (l, k) = response_nll(lm, &refs)?;
        sum += l.to_scalar::<f32>()? as f64 * k as f64;
        n += k;
    }
    if n == 0 {
        return Err(data_err("no response tokens to score"));
    }
    Ok(sum / n as f64)
}

/// Draws `k` examples uniformly with the engine's RNG.
pub fn draw<'a, T>(items: &'a [T], k: usize, rng: &mut SplitMix64) -> Vec<&'a T> {
    (0..k).map(|_| &items[rng.below(items.len())]).collect()
}

/// SFT on demonstrations; held-out loss on demonstrations of the test prompts.
pub struct SftObjective<'a> {
    pub lm: &'a Lm,
    pub train: &'a [Example],
    pub val: &'a [Example],
    pub batch: usize,
}

impl Objective for SftObjective<'_> {
    fn train_batch(&mut self, rng: &mut SplitMix64, _index: u64) -> Result<BatchLoss> {
        if self.train.is_empty() {
            return Err(data_err("SFT: no training examples"));
        }
        let batch = draw(self.train, self.batch, rng);
        let (total, n) = response_nll(self.lm, &batch)?;
        Ok(BatchLoss {
            loss: total.to_scalar::<f32>()? as f64,
            total,
            tokens: n,
            extra: Vec::new(),
        })
    }

    fn evaluate(&mut self) -> Result<Vec<(String, f64)>> {
        Ok(vec![(
            "eval_loss".into(),
            mean_nll(self.lm, self.val, 256)?,
        )])
    }
}
