//! Model families that train from scratch, chosen by configuration: the GPT family (`gpt.rs`:
//! GPT-1, GPT-2, PaLM, GLaM presets) and LLaMA (`llama.rs`, built over trainable variables through
//! the same `WeightSource` seam it loads pretrained weights with), plus loading a training run folder
//! for generation.

use std::path::Path;

use candle_core::Tensor;
use canon_nn::RopeLayout;
use canon_text::Tokenizer;
use serde::{Deserialize, Serialize};

use crate::gpt::{Gpt, GptConfig};
use crate::source::{WeightMode, WeightSource};
use crate::transformer_xl::{SegmentMemory, TransformerXl, TxlConfig};
use crate::varstore::{Init, InitPolicy, ParamInfo, VarStore};
use crate::{Cache, CausalLm, Llama, LlamaConfig, LoadedLm, ModelError, Positions, Result};

/// The files of a training run folder that generation reads.
pub const RUN_MODEL_FILE: &str = "model.json";
pub const RUN_CHECKPOINT_FILE: &str = "checkpoint.safetensors";
pub const RUN_TOKENIZER_FILE: &str = "tokenizer.json";
/// Prefix of model parameters inside a checkpoint (optimizer state uses others).
pub const CHECKPOINT_PARAM_PREFIX: &str = "model.";

fn d_eps6() -> f64 {
    1e-5
}
fn d_theta() -> f32 {
    10000.0
}
fn d_std() -> f64 {
    0.02
}

/// LLaMA trained from scratch: the hyper-parameters a TOML file gives; the rest follows the paper.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlamaTrainConfig {
    #[serde(default)]
    pub vocab_size: usize,
    pub n_layer: usize,
    pub n_head: usize,
    #[serde(default)]
    pub n_kv_head: Option<usize>,
    pub d_model: usize,
    /// Default: LLaMA's rule `2/3 · 4d` rounded up to a multiple of `multiple_of`.
    #[serde(default)]
    pub d_ff: Option<usize>,
    #[serde(default)]
    pub multiple_of: Option<usize>,
    pub max_seq_len: usize,
    #[serde(default = "d_eps6")]
    pub norm_eps: f64,
    #[serde(default = "d_theta")]
    pub rope_theta: f32,
    #[serde(default)]
    pub tie_embeddings: bool,
    #[serde(default = "d_std")]
    pub init_std: f64,
}

/// LLaMA's FFN width: `multiple_of · ceil((2/3 · 4d) / multiple_of)` (Meta's `FeedForward`).
pub fn llama_ffn_dim(d: usize, multiple_of: usize) -> usize {
    let h = 2 * (4 * d) / 3;
    h.div_ceil(multiple_of) * multiple_of
}

impl LlamaTrainConfig {
    pub fn to_llama(&self) -> LlamaConfig {
        let d_ff = self
            .d_ff
            .unwrap_or_else(|| llama_ffn_dim(self.d_model, self.multiple_of.unwrap_or(32).max(1)));
        LlamaConfig {
            vocab_size: self.vocab_size,
            hidden_size: self.d_model,
            intermediate_size: d_ff,
            num_hidden_layers: self.n_layer,
            num_attention_heads: self.n_head,
            num_key_value_heads: self.n_kv_head.unwrap_or(self.n_head),
            head_dim: self.d_model / self.n_head.max(1),
            rms_norm_eps: self.norm_eps,
            rope_theta: self.rope_theta,
            rope_layout: RopeLayout::Interleaved,
            max_position_embeddings: self.max_seq_len,
            tie_word_embeddings: self.tie_embeddings,
            variant: Default::default(),
        }
    }

    pub fn init_policy(&self) -> InitPolicy {
        let std = self.init_std;
        Box::new(move |name: &str, _shape: &[usize]| {
            if name.ends_with("layernorm.weight") || name == "model.norm.weight" {
                ParamInfo {
                    init: Init::Ones,
                    decay: false,
                }
            } else if name.contains("embed_tokens") {
                ParamInfo {
                    init: Init::Normal { std },
                    decay: false,
                }
            } else {
                ParamInfo {
                    init: Init::Normal { std },
                    decay: true,
                }
            }
        })
    }
}

/// Which family a run trains (the `[model]` table of a config, tagged by `family`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "family", rename_all = "snake_case")]
pub enum ModelConfig {
    Gpt(GptConfig),
    Llama(LlamaTrainConfig),
    TransformerXl(TxlConfig),
}

impl ModelConfig {
    pub fn set_vocab_size(&mut self, v: usize) {
        match self {
            ModelConfig::Gpt(c) => c.vocab_size = v,
            ModelConfig::Llama(c) => c.vocab_size = v,
            ModelConfig::TransformerXl(c) => c.vocab_size = v,
        }
    }
    pub fn max_seq_len(&self) -> usize {
        match self {
            ModelConfig::Gpt(c) => c.max_seq_len,
            ModelConfig::Llama(c) => c.max_seq_len,
            ModelConfig::TransformerXl(c) => c.max_seq_len,
        }
    }
    pub fn init_policy(&self) -> InitPolicy {
        match self {
            ModelConfig::Gpt(c) => c.init_policy(),
            ModelConfig::Llama(c) => c.init_policy(),
            ModelConfig::TransformerXl(c) => c.init_policy(),
        }
    }
    /// Builds the model over `src` (a `VarStore` for training; shapes are checked by name).
    pub fn build(&self, src: &dyn WeightSource) -> Result<Box<dyn TrainableLm>> {
        Ok(match self {
            ModelConfig::Gpt(c) => Box::new(Gpt::load(c.clone(), src)?),
            ModelConfig::Llama(c) => {
                Box::new(Llama::load(c.to_llama(), src, WeightMode::DequantizeF32)?)
            }
            ModelConfig::TransformerXl(c) => Box::new(TransformerXl::load(c.clone(), src)?),
        })
    }
}

/// A training forward pass: logits for every position plus auxiliary losses and statistics.
#[derive(Debug, Clone)]
pub struct TrainOutput {
    /// `[b, t, vocab]`
    pub logits: Tensor,
    /// GLaM: Σ over MoE layers of the load-balancing loss.
    pub moe_aux_loss: Option<Tensor>,
    /// GLaM: per MoE layer, the fraction of tokens whose top-1 expert is each expert.
    pub expert_load: Vec<Vec<f32>>,
}

/// A causal LM that can be trained: a forward over whole sequences that keeps the graph.
pub trait TrainableLm: CausalLm {
    /// Logits for every position of `ids` (for a recurrent model, continuing its memory).
    fn forward_train(&self, ids: &Tensor) -> Result<TrainOutput>;
    /// Segment-level recurrence (Transformer-XL): the trainer feeds consecutive segments and
    /// evaluates with and without memory.
    fn segment_memory(&self) -> Option<&dyn SegmentMemory> {
        None
    }
    /// Whether training draws randomness (dropout, sampled routing); the trainer then seeds it
    /// before every batch from its checkpointed RNG.
    fn uses_noise(&self) -> bool {
        false
    }
    /// Seeds the training randomness for the next forward (`None`: off, as in evaluation).
    fn set_noise(&self, _seed: Option<u64>) {}
}

impl TrainableLm for TransformerXl {
    fn forward_train(&self, ids: &Tensor) -> Result<TrainOutput> {
        Ok(TrainOutput {
            logits: self.forward_with_memory(ids)?,
            moe_aux_loss: None,
            expert_load: Vec::new(),
        })
    }
    fn segment_memory(&self) -> Option<&dyn SegmentMemory> {
        Some(self)
    }
}

impl TrainableLm for Gpt {
    fn forward_train(&self, ids: &Tensor) -> Result<TrainOutput> {
        let (logits, aux) = Gpt::forward_train(self, ids)?;
        Ok(TrainOutput {
            logits,
            moe_aux_loss: aux.moe_aux_loss,
            expert_load: aux.expert_load,
        })
    }
    fn uses_noise(&self) -> bool {
        Gpt::uses_noise(self)
    }
    fn set_noise(&self, seed: Option<u64>) {
        Gpt::set_noise(self, seed);
    }
}

impl TrainableLm for Llama {
    fn forward_train(&self, ids: &Tensor) -> Result<TrainOutput> {
        let mut cache = Cache::new(0);
        Ok(TrainOutput {
            logits: self.forward(ids, &mut cache, Positions::All)?,
            moe_aux_loss: None,
            expert_load: Vec::new(),
        })
    }
}

/// Whether `dir` is a Canon training run folder.
pub fn is_run_dir(dir: &Path) -> bool {
    dir.join(RUN_MODEL_FILE).is_file() && dir.join(RUN_CHECKPOINT_FILE).is_file()
}

/// Reads `model.json` of a run folder.
pub fn read_run_model_config(dir: &Path) -> Result<ModelConfig> {
    let p = dir.join(RUN_MODEL_FILE);
    let text = std::fs::read_to_string(&p).map_err(|e| ModelError::Io {
        path: p.display().to_string(),
        message: e.to_string(),
    })?;
    serde_json::from_str(&text).map_err(|e| ModelError::Config {
        file: p.display().to_string(),
        message: e.to_string(),
    })
}

/// Loads a trained run folder (model.json, checkpoint.safetensors, tokenizer.json) for generation.
pub fn load_run_dir(dir: &Path) -> Result<LoadedLm> {
    let cfg = read_run_model_config(dir)?;
    let store = VarStore::from_safetensors(
        &dir.join(RUN_CHECKPOINT_FILE),
        CHECKPOINT_PARAM_PREFIX,
        cfg.init_policy(),
    )?;
    // Inference only: detached weights record no autograd graph.
    let model = cfg.build(&crate::source::Detached(&store))?;
    let tok_path = dir.join(RUN_TOKENIZER_FILE);
    if !tok_path.is_file() {
        return Err(ModelError::Io {
            path: tok_path.display().to_string(),
            message: "missing: a run folder needs the tokenizer it was trained with".into(),
        });
    }
    let tokenizer = Tokenizer::from_file(&tok_path)?;
    Ok(LoadedLm {
        model: Box::new(TrainedLm(model)),
        tokenizer,
        chat_template: None,
        name: dir
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        path: dir.to_path_buf(),
    })
}

/// Adapts a boxed trainable model to the `CausalLm` that generation holds.
struct TrainedLm(Box<dyn TrainableLm>);

impl CausalLm for TrainedLm {
    fn forward(&self, ids: &Tensor, cache: &mut Cache, which: Positions) -> Result<Tensor> {
        self.0.forward(ids, cache, which)
    }
    fn new_cache(&self) -> Cache {
        self.0.new_cache()
    }
    fn vocab_size(&self) -> usize {
        self.0.vocab_size()
    }
    fn max_seq_len(&self) -> usize {
        self.0.max_seq_len()
    }
    fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        self.0.embed(ids)
    }
    fn forward_embeds(&self, x: &Tensor, cache: &mut Cache, which: Positions) -> Result<Tensor> {
        self.0.forward_embeds(x, cache, which)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama_ffn_sizes_follow_the_papers_rule() {
        // docs/papers/25-llama.md: d = 4096 -> 11008, 5120 -> 13824, 6656 -> 17920, 8192 -> 22016
        // (multiple_of 256), 576 -> 1536 (SmolLM2, multiple_of 256... 1536 = 6·256).
        assert_eq!(llama_ffn_dim(4096, 256), 11008);
        assert_eq!(llama_ffn_dim(5120, 256), 13824);
        assert_eq!(llama_ffn_dim(6656, 256), 17920);
        assert_eq!(llama_ffn_dim(8192, 256), 22016);
        assert_eq!(llama_ffn_dim(576, 256), 1536);
    }

    #[test]
    fn llama_from_scratch_gives_every_parameter_a_gradient_through_llama_rs() {
        let c = LlamaTrainConfig {
            vocab_size: 19,
            n_layer: 2,
            n_head: 4,
            n_kv_head: Some(2),
            d_model: 16,
            d_ff: None,
            multiple_of: Some(8),
            max_seq_len: 16,
            norm_eps: 1e-5,
            rope_theta: 10000.0,
            tie_embeddings: false,
            init_std: 0.2,
        };
        let cfg = ModelConfig::Llama(c);
        let store = VarStore::new_random(3, cfg.init_policy());
        let m = cfg.build(&store).unwrap();
        let ids = Tensor::new(&[[1u32, 4, 7, 2, 18, 0]], &candle_core::Device::Cpu).unwrap();
        let out = m.forward_train(&ids).unwrap();
        assert_eq!(out.logits.dims(), &[1, 6, 19]);
        let g = out
            .logits
            .sqr()
            .unwrap()
            .mean_all()
            .unwrap()
            .backward()
            .unwrap();
        let vars = store.vars();
        // embed, 2 × (2 norms + q k v o + gate up down), final norm, lm_head.
        assert_eq!(vars.len(), 1 + 2 * 9 + 2);
        for (name, v, decay) in &vars {
            let gr = g
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("{name}: no gradient"));
            let gv: Vec<f32> = gr.flatten_all().unwrap().to_vec1().unwrap();
            assert!(gv.iter().any(|x| *x != 0.0), "{name}");
            assert_eq!(*decay, v.rank() == 2 && !name.contains("embed"), "{name}");
        }
        // SwiGLU width by LLaMA's rule: 2/3·4·16 = 42 → 48 (multiple of 8).
        assert_eq!(
            store
                .get("model.layers.0.mlp.gate_proj.weight")
                .unwrap()
                .dims(),
            &[48, 16]
        );
    }
}
