//! The answer features the reward head reads: the frozen model's final hidden state, recovered
//! from its logits through the tied embeddings (see the parent module's header).

use candle_core::{DType, Device, Tensor};
use canon_models::{CausalLm, Positions};
use canon_text::Tokenizer;

use super::task;
use crate::{AgentError, Result};

/// What gives an answer's feature vector: the frozen model's hidden state, or scripted in tests.
pub trait Featurizer {
    /// One vector per answer, read after `prompt`.
    fn features(&mut self, prompt: &str, answers: &[String]) -> Result<Vec<Vec<f32>>>;
}

/// The final hidden state at the last token of `prompt + " " + answer`, from a causal LM with
/// tied embeddings (see the `webgpt_rm` header).
pub struct HiddenStates<'m> {
    model: &'m dyn CausalLm,
    tokenizer: &'m Tokenizer,
    /// `E (EᵀE)⁻¹`, `[vocab, d]`: logits `[1, vocab]` times this is the hidden state.
    recover: Tensor,
}

/// `a⁻¹` of a symmetric positive definite `n × n` matrix (row-major), by Cholesky.
fn spd_inverse(a: &[f64], n: usize) -> Result<Vec<f64>> {
    let mut l = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let mut s = a[i * n + j];
            for k in 0..j {
                s -= l[i * n + k] * l[j * n + k];
            }
            if i == j {
                if s <= 0.0 {
                    return Err(task(format!(
                        "the embedding matrix is not of full rank (pivot {i} is {s})"
                    )));
                }
                l[i * n + i] = s.sqrt();
            } else {
                l[i * n + j] = s / l[j * n + j];
            }
        }
    }
    // Columns of L⁻¹, then a⁻¹ = L⁻ᵀ L⁻¹.
    let mut linv = vec![0.0; n * n];
    for c in 0..n {
        for i in c..n {
            let mut s = if i == c { 1.0 } else { 0.0 };
            for k in c..i {
                s -= l[i * n + k] * linv[k * n + c];
            }
            linv[i * n + c] = s / l[i * n + i];
        }
    }
    let mut inv = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let s: f64 = (i.max(j)..n)
                .map(|k| linv[k * n + i] * linv[k * n + j])
                .sum();
            inv[i * n + j] = s;
            inv[j * n + i] = s;
        }
    }
    Ok(inv)
}

impl<'m> HiddenStates<'m> {
    pub fn new(model: &'m dyn CausalLm, tokenizer: &'m Tokenizer) -> Result<Self> {
        let v = model.vocab_size();
        let ids = Tensor::arange(0u32, v as u32, &Device::Cpu)?.unsqueeze(0)?;
        let e = model.embed(&ids)?.squeeze(0)?.to_dtype(DType::F32)?; // [V, d]
        let d = e.dim(1)?;
        let g: Vec<f64> = e
            .t()?
            .matmul(&e)?
            .flatten_all()?
            .to_dtype(DType::F64)?
            .to_vec1()?;
        let ginv = spd_inverse(&g, d)?;
        let ginv = Tensor::from_vec(ginv, (d, d), &Device::Cpu)?.to_dtype(DType::F32)?;
        let recover = e.matmul(&ginv)?;
        Ok(Self {
            model,
            tokenizer,
            recover,
        })
    }

    fn encode(&self, s: &str) -> Result<Vec<u32>> {
        self.tokenizer
            .encode(s, false)
            .map_err(|e| AgentError::Text(e.to_string()))
    }

    fn hidden(&self, logits: &Tensor) -> Result<Vec<f32>> {
        let v = self.recover.dim(0)?;
        let l = logits.to_dtype(DType::F32)?.reshape((1, v))?;
        Ok(l.matmul(&self.recover)?.flatten_all()?.to_vec1()?)
    }
}

impl Featurizer for HiddenStates<'_> {
    fn features(&mut self, prompt: &str, answers: &[String]) -> Result<Vec<Vec<f32>>> {
        let p = self.encode(prompt)?;
        if p.is_empty() {
            return Err(task("the reward model's prompt is empty"));
        }
        let max = self.model.max_seq_len();
        let mut cache = self.model.new_cache();
        let t = Tensor::new(p.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
        let base = self.model.forward(&t, &mut cache, Positions::Last)?;
        let mut out = Vec::with_capacity(answers.len());
        for a in answers {
            let ids = if a.trim().is_empty() {
                Vec::new()
            } else {
                self.encode(&format!(" {}", a.trim()))?
            };
            if p.len() + ids.len() > max {
                return Err(task(format!(
                    "the answer prompt and an answer have {} tokens; the model reads at most {max}",
                    p.len() + ids.len()
                )));
            }
            let logits = if ids.is_empty() {
                base.clone()
            } else {
                let mut c = cache.clone();
                let t = Tensor::new(ids.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
                self.model.forward(&t, &mut c, Positions::Last)?
            };
            out.push(self.hidden(&logits)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cholesky_inverse() {
        let a = [4.0, 2.0, 2.0, 3.0];
        let inv = spd_inverse(&a, 2).unwrap();
        let want = [0.375, -0.25, -0.25, 0.5];
        for (x, y) in inv.iter().zip(want) {
            assert!((x - y).abs() < 1e-12, "{inv:?}");
        }
        assert!(spd_inverse(&[0.0, 0.0, 0.0, 0.0], 2).is_err());
    }
}
