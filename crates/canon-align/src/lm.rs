//! The models of the miniature experiments: a small GPT (`canon_models::Gpt`, pre-LN, learned
//! positions, tied embeddings) over the task's character vocabulary, optionally with a scalar head
//! on its final hidden states (InstructGPT's reward model replaces the unembedding with one; the
//! PPO value function is a second head on the policy's trunk, as in `lm-human-preferences`).
//!
//! Saved as a folder: `config.json` (the `GptConfig`) and `model.safetensors` (every parameter,
//! the head as `head.weight` / `head.bias`).
//!
//! Shapes: ids `[b, t]` → hidden `[b, t, d]` → logits `[b, t, vocab]`; token log-probabilities
//! `[b, t − 1]` (position `p` scores `ids[p + 1]`); head values `[b, t]`.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{D, DType, Device, Tensor, Var};
use canon_infer::sampling::{Sampler, SamplingConfig};
use canon_models::gpt::{BlockStyle, FfnKind, NormKind, PosKind};
use canon_models::{Cache, CausalLm, Gpt, GptConfig, Positions, VarStore};
use canon_nn::Activation;
use canon_train::Param;

use crate::task::{CharVocab, EOS, PAD};
use crate::{Result, TrainError, data_err};

/// A scalar head `v = h·w + b` on hidden states.
#[derive(Debug, Clone)]
pub struct ScalarHead {
    pub w: Var,
    pub b: Var,
}

impl ScalarHead {
    /// Zero weights (a value head starts at 0).
    pub fn zeros(d: usize) -> Result<Self> {
        Ok(Self {
            w: Var::zeros((d, 1), DType::F32, &Device::Cpu)?,
            b: Var::zeros(1, DType::F32, &Device::Cpu)?,
        })
    }

    /// `h: [.., d]` → `[..]`.
    pub fn forward(&self, h: &Tensor) -> Result<Tensor> {
        let dims = h.dims().to_vec();
        let d = *dims.last().ok_or_else(|| data_err("head: scalar input"))?;
        let n = h.elem_count() / d.max(1);
        let v = h
            .reshape((n, d))?
            .matmul(self.w.as_tensor())?
            .squeeze(1)?
            .broadcast_add(self.b.as_tensor())?;
        Ok(v.reshape(&dims[..dims.len() - 1])?)
    }

    /// Adds `delta` to the bias (InstructGPT's normalisation of the reward).
    pub fn shift(&self, delta: f64) -> Result<()> {
        let nb = (self.b.as_tensor() + delta)?;
        self.b.set(&nb)?;
        Ok(())
    }
}

/// A small GPT over the task vocabulary, with an optional scalar head.
pub struct Lm {
    pub cfg: GptConfig,
    pub store: VarStore,
    pub gpt: Gpt,
    pub head: Option<ScalarHead>,
}

/// The default shape: 2 layers, width 64, 4 heads — about 0.1M parameters.
pub fn tiny_config(vocab: usize, layers: usize, width: usize, ctx: usize) -> GptConfig {
    GptConfig {
        vocab_size: vocab,
        n_layer: layers,
        n_head: 4,
        n_kv_head: None,
        d_model: width,
        d_ff: 4 * width,
        max_seq_len: ctx,
        block: BlockStyle::PreLn,
        norm: NormKind::LayerNorm,
        norm_bias: true,
        positions: PosKind::Learned,
        ffn: FfnKind::Mlp,
        activation: Activation::GeluTanh,
        bias: true,
        tie_embeddings: true,
        final_norm: true,
        scaled_residual_init: true,
        init_std: 0.02,
        embed_init_std: None,
        scale_logits: false,
        norm_eps: 1e-5,
        rope_theta: 10000.0,
        moe: None,
        moe_every: 2,
        dropout: 0.0,
    }
}

fn io(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

impl Lm {
    /// Fresh weights drawn from `seed`.
    pub fn new_random(cfg: GptConfig, seed: u64) -> Result<Self> {
        let store = VarStore::new_random(seed, cfg.init_policy());
        let gpt = Gpt::load(cfg.clone(), &store)?;
        Ok(Self {
            cfg,
            store,
            gpt,
            head: None,
        })
    }

    /// Loads a folder written by [`Lm::save`].
    pub fn load(dir: &Path) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| {
            io(
                &cfg_path,
                format!("{e} (expected a model folder written by `canon align`)"),
            )
        })?;
        let cfg: GptConfig = serde_json::from_str(&text)
            .map_err(|e| io(&cfg_path, format!("not a GPT config: {e}")))?;
        let weights = dir.join("model.safetensors");
        if !weights.is_file() {
            return Err(io(&weights, "missing (expected the model's weights)"));
        }
        let store = VarStore::from_safetensors(&weights, "", cfg.init_policy())?;
        let gpt = Gpt::load(cfg.clone(), &store)?;
        let head = match (store.get("head.weight"), store.get("head.bias")) {
            (Some(w), Some(b)) => Some(ScalarHead { w, b }),
            _ => None,
        };
        Ok(Self {
            cfg,
            store,
            gpt,
            head,
        })
    }

    /// Writes `config.json` and `model.safetensors` into `dir` (each through a temporary file).
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let mut map: HashMap<String, Tensor> = HashMap::new();
        for (name, var, _) in self.store.vars() {
            if !name.starts_with("head.") {
                map.insert(name, var.as_tensor().clone());
            }
        }
        if let Some(h) = &self.head {
            map.insert("head.weight".into(), h.w.as_tensor().clone());
            map.insert("head.bias".into(), h.b.as_tensor().clone());
        }
        let w = dir.join("model.safetensors");
        let bytes = safetensors::serialize(&map, None).map_err(|e| io(&w, e))?;
        canon_fs::write_atomic(&w, &bytes).map_err(|e| io(&w, e))?;
        let c = dir.join("config.json");
        let text = serde_json::to_string_pretty(&self.cfg).map_err(|e| io(&c, e))?;
        canon_fs::write_atomic(&c, text.as_bytes()).map_err(|e| io(&c, e))
    }

    /// The trunk's parameters and the head's (if any), for the optimizer.
    pub fn params(&self) -> Vec<Param> {
        let mut v: Vec<Param> = self
            .store
            .vars()
            .into_iter()
            .filter(|(n, _, _)| !n.starts_with("head."))
            .map(|(name, var, decay)| Param { name, var, decay })
            .collect();
        if let Some(h) = &self.head {
            v.push(Param {
                name: "head.weight".into(),
                var: h.w.clone(),
                decay: false,
            });
            v.push(Param {
                name: "head.bias".into(),
                var: h.b.clone(),
                decay: false,
            });
        }
        v
    }

    pub fn num_params(&self) -> usize {
        self.params().iter().map(|p| p.var.elem_count()).sum()
    }

    /// Final hidden states `[b, t, d]`.
    pub fn hidden(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(self.gpt.forward_hidden(ids)?.0)
    }

    /// Logits `[b, t, vocab]` from hidden states.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(self.gpt.logits(hidden)?)
    }

    /// The head's value at every position `[b, t]`.
    pub fn head_values(&self, hidden: &Tensor) -> Result<Tensor> {
        let h = self
            .head
            .as_ref()
            .ok_or_else(|| data_err("this model has no scalar head"))?;
        h.forward(hidden)
    }

    /// Samples a continuation of every prompt (temperature `temperature`, no other filtering, so the
    /// samples follow the policy's distribution exactly at temperature 1). Prompts of one length
    /// decode together through one KV cache; a row stops at EOS, at `max_new` tokens, or at the
    /// context. Returns the response ids (EOS included when produced).
    pub fn sample(
        &self,
        prompts: &[Vec<u32>],
        max_new: usize,
        temperature: f32,
        seed: u64,
    ) -> Result<Vec<Vec<u32>>> {
        let mut out = vec![Vec::new(); prompts.len()];
        let mut lens: Vec<usize> = prompts.iter().map(Vec::len).collect();
        lens.sort_unstable();
        lens.dedup();
        let mut sampler = Sampler::new(SamplingConfig {
            temperature,
            top_k: None,
            top_p: None,
            min_p: None,
            repeat_penalty: 1.0,
            repeat_last_n: 0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed,
        })
        .map_err(|e| data_err(e.to_string()))?;
        for len in lens {
            if len == 0 {
                return Err(data_err("sample: an empty prompt"));
            }
            let rows: Vec<usize> = (0..prompts.len())
                .filter(|&i| prompts[i].len() == len)
                .collect();
            let g = rows.len();
            let flat: Vec<u32> = rows.iter().flat_map(|&i| prompts[i].clone()).collect();
            let mut cache: Cache = self.gpt.new_cache();
            let ids = Tensor::from_vec(flat, (g, len), &Device::Cpu)?;
            let mut logits = self.gpt.forward(&ids, &mut cache, Positions::Last)?; // [g, 1, v]
            let mut done = vec![false; g];
            let mut pos = len;
            for _ in 0..max_new {
                if pos >= self.cfg.max_seq_len {
                    break;
                }
                let rows_l: Vec<Vec<f32>> = logits.squeeze(1)?.to_vec2()?;
                let mut next = Vec::with_capacity(g);
                for (k, l) in rows_l.iter().enumerate() {
                    if done[k] {
                        next.push(PAD);
                        continue;
                    }
                    let t = sampler.sample(l, &[]);
                    out[rows[k]].push(t);
                    if t == EOS {
                        done[k] = true;
                    }
                    next.push(t);
                }
                if done.iter().all(|&d| d) {
                    break;
                }
                pos += 1;
                if pos >= self.cfg.max_seq_len {
                    break;
                }
                let ids = Tensor::from_vec(next, (g, 1), &Device::Cpu)?;
                logits = self.gpt.forward(&ids, &mut cache, Positions::Last)?;
            }
        }
        Ok(out)
    }

    /// Response text of sampled ids (see `task::response_text`).
    pub fn vocab(&self) -> CharVocab {
        CharVocab
    }
}

/// Right-pads sequences with PAD into `[b, t]`.
pub fn pad(seqs: &[Vec<u32>]) -> Result<(Tensor, usize)> {
    let t = seqs.iter().map(Vec::len).max().unwrap_or(0);
    if t < 2 || seqs.is_empty() {
        return Err(data_err(format!(
            "batch: expected sequences of at least 2 tokens, found lengths {:?}",
            seqs.iter().map(Vec::len).collect::<Vec<_>>()
        )));
    }
    let p = canon_nn::ops::pad_batch(seqs, PAD, 0);
    Ok((p.ids_tensor(&Device::Cpu)?, t))
}

/// `log p(ids[p+1] | ids[..=p])` for every position: logits `[b, t, v]`, ids `[b, t]` → `[b, t−1]`.
pub fn token_logprobs(logits: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let (b, t, v) = logits.dims3()?;
    let n = b * (t - 1);
    let l = logits.narrow(1, 0, t - 1)?.contiguous()?.reshape((n, v))?;
    let tgt = ids.narrow(1, 1, t - 1)?.contiguous()?.reshape((n, 1))?;
    let lse = canon_nn::loss::logsumexp(&l)?; // [n]
    let z = l.gather(&tgt, 1)?.squeeze(1)?; // [n]
    Ok((z - lse)?.reshape((b, t - 1))?)
}

/// Entropy (nats) of the next-token distribution at every row of `logits: [n, v]` (no graph).
pub fn entropies(logits: &Tensor) -> Result<Vec<f64>> {
    let rows: Vec<Vec<f32>> = logits.detach().to_vec2()?;
    Ok(rows
        .iter()
        .map(|r| {
            let lp = canon_infer::sampling::log_softmax(r);
            -lp.iter().map(|&x| (x as f64).exp() * x as f64).sum::<f64>()
        })
        .collect())
}

/// Selects `flat_index` rows of `x` flattened to `[n]`.
pub fn select(x: &Tensor, flat_index: &[u32]) -> Result<Tensor> {
    let flat = x.flatten_all()?;
    let idx = Tensor::from_slice(flat_index, flat_index.len(), &Device::Cpu)?;
    Ok(flat.index_select(&idx, 0)?)
}

/// Sum over each row's response positions of a `[b, t−1]` log-prob tensor: row `i`'s response
/// tokens are `ids[i][prompt_len[i]..len[i]]`, scored at positions `prompt_len[i]−1 .. len[i]−1`.
pub fn response_logprob_sums(lp: &Tensor, prompt_len: &[usize], len: &[usize]) -> Result<Tensor> {
    let (b, tm1) = lp.dims2()?;
    let mut mask = vec![0f32; b * tm1];
    for i in 0..b {
        for p in prompt_len[i].saturating_sub(1)..len[i].saturating_sub(1).min(tm1) {
            mask[i * tm1 + p] = 1.0;
        }
    }
    let m = Tensor::from_vec(mask, (b, tm1), &Device::Cpu)?;
    Ok((lp * m)?.sum(D::Minus1)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::{BOS, CharVocab};

    #[test]
    fn logprobs_match_log_softmax_and_save_load_round_trips() {
        let lm = Lm::new_random(tiny_config(CharVocab.size(), 1, 16, 16), 7).unwrap();
        let ids = Tensor::new(&[[BOS, 5u32, 6, 7]], &Device::Cpu).unwrap();
        let h = lm.hidden(&ids).unwrap();
        let logits = lm.logits(&h).unwrap();
        let lp: Vec<Vec<f32>> = token_logprobs(&logits, &ids).unwrap().to_vec2().unwrap();
        let rows: Vec<Vec<f32>> = logits.squeeze(0).unwrap().to_vec2().unwrap();
        for (p, &tgt) in [5u32, 6, 7].iter().enumerate() {
            let want = canon_infer::sampling::log_softmax(&rows[p])[tgt as usize];
            assert!((lp[0][p] - want).abs() < 1e-5);
        }
        let dir = tempfile::tempdir().unwrap();
        let mut lm = lm;
        lm.head = Some(ScalarHead::zeros(16).unwrap());
        lm.head.as_ref().unwrap().shift(0.25).unwrap();
        lm.save(dir.path()).unwrap();
        let back = Lm::load(dir.path()).unwrap();
        let l2 = back.logits(&back.hidden(&ids).unwrap()).unwrap();
        canon_testkit::assert_close(&l2, &logits, canon_testkit::Tol::EXACT);
        let v: Vec<f32> = back
            .head_values(&h)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(v.iter().all(|&x| (x - 0.25).abs() < 1e-7));
        assert!(Lm::load(&dir.path().join("nope")).is_err());
    }

    #[test]
    fn sampling_is_seeded_and_stops_at_eos_or_budget() {
        let lm = Lm::new_random(tiny_config(CharVocab.size(), 1, 16, 16), 7).unwrap();
        let prompts = vec![vec![BOS, 5, 6], vec![BOS, 7, 8], vec![BOS, 9]];
        let a = lm.sample(&prompts, 5, 1.0, 11).unwrap();
        let b = lm.sample(&prompts, 5, 1.0, 11).unwrap();
        assert_eq!(a, b);
        for r in &a {
            assert!(r.len() <= 5);
            if let Some(p) = r.iter().position(|&t| t == EOS) {
                assert_eq!(p, r.len() - 1);
            }
        }
    }
}
