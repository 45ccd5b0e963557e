//! Trainable parameters: a named, ordered set of candle `Var`s that is also a `WeightSource`, so a
//! model family builds itself the same way from random initialisation (training from scratch), from
//! a checkpoint, or from a pretrained file — `llama.rs` trains without a forked copy.
//!
//! In `Create` mode an unknown name makes a new variable, initialised as the family's policy says;
//! in `Loaded` mode every name must exist with the shape the config implies.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use candle_core::{DType, Device, Tensor, Var};
use canon_nn::SplitMix64;

use crate::source::WeightSource;
use crate::{ModelError, Result};

/// How a new parameter starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    Normal { std: f64 },
    Ones,
    Zeros,
}

/// What the optimizer should know about a parameter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ParamInfo {
    pub init: Init,
    /// AdamW's decoupled weight decay applies (matrices), or not (norm gains, biases, embeddings).
    pub decay: bool,
}

/// A family's initialisation and weight-decay policy, by parameter name and shape.
pub type InitPolicy = Box<dyn Fn(&str, &[usize]) -> ParamInfo + Send + Sync>;

struct Inner {
    vars: Vec<(String, Var, bool)>,
    index: HashMap<String, usize>,
    rng: SplitMix64,
}

pub struct VarStore {
    inner: Mutex<Inner>,
    policy: Option<InitPolicy>,
    origin: String,
}

impl VarStore {
    /// An empty store that creates parameters on request, drawing from `seed`.
    pub fn new_random(seed: u64, policy: InitPolicy) -> Self {
        Self {
            inner: Mutex::new(Inner {
                vars: Vec::new(),
                index: HashMap::new(),
                rng: SplitMix64::new(seed),
            }),
            policy: Some(policy),
            origin: "random initialisation".into(),
        }
    }

    /// Every tensor of a safetensors file whose name starts with `prefix` (the prefix is stripped).
    /// `policy` classifies parameters for the optimizer (its `init` is unused here).
    pub fn from_safetensors(path: &Path, prefix: &str, policy: InitPolicy) -> Result<Self> {
        let file = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| ModelError::Io {
            path: file.clone(),
            message: e.to_string(),
        })?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| ModelError::Config {
            file: file.clone(),
            message: format!("not a valid safetensors file: {e}"),
        })?;
        let mut names: Vec<String> = st
            .names()
            .into_iter()
            .filter(|n| n.starts_with(prefix))
            .map(|n| n.to_string())
            .collect();
        names.sort();
        let mut inner = Inner {
            vars: Vec::new(),
            index: HashMap::new(),
            rng: SplitMix64::new(0),
        };
        for full in names {
            let name = full[prefix.len()..].to_string();
            let view = st.tensor(&full).map_err(|e| ModelError::Config {
                file: file.clone(),
                message: format!("tensor '{full}': {e}"),
            })?;
            if view.dtype() != safetensors::Dtype::F32 {
                return Err(ModelError::Config {
                    file: file.clone(),
                    message: format!("tensor '{full}' has dtype {:?}; expected F32", view.dtype()),
                });
            }
            let t = Tensor::from_raw_buffer(view.data(), DType::F32, view.shape(), &Device::Cpu)?;
            let decay = policy(&name, t.dims()).decay;
            inner.index.insert(name.clone(), inner.vars.len());
            inner.vars.push((name, Var::from_tensor(&t)?, decay));
        }
        Ok(Self {
            inner: Mutex::new(inner),
            policy: None,
            origin: path.display().to_string(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poisoned lock only means another thread panicked mid-insert; the data is still whole.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `(name, variable, decay)` in creation order (the order the model asked for them).
    pub fn vars(&self) -> Vec<(String, Var, bool)> {
        self.lock().vars.clone()
    }

    pub fn get(&self, name: &str) -> Option<Var> {
        let g = self.lock();
        g.index.get(name).map(|&i| g.vars[i].1.clone())
    }

    pub fn num_params(&self) -> usize {
        self.lock().vars.iter().map(|v| v.1.elem_count()).sum()
    }
}

fn make(init: Init, shape: &[usize], rng: &mut SplitMix64) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = match init {
        Init::Ones => vec![1.0; n],
        Init::Zeros => vec![0.0; n],
        Init::Normal { std } => (0..n).map(|_| (rng.normal() * std) as f32).collect(),
    };
    Ok(Tensor::from_vec(v, shape, &Device::Cpu)?)
}

impl WeightSource for VarStore {
    fn describe(&self) -> String {
        self.origin.clone()
    }

    fn has(&self, name: &str) -> bool {
        self.policy.is_some() || self.lock().index.contains_key(name)
    }

    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let mut g = self.lock();
        if let Some(&i) = g.index.get(name) {
            let t = g.vars[i].1.as_tensor().clone();
            if t.dims() != shape {
                return Err(ModelError::Shape {
                    file: self.origin.clone(),
                    name: name.into(),
                    expected: shape.to_vec(),
                    found: t.dims().to_vec(),
                });
            }
            return Ok(t);
        }
        let Some(policy) = &self.policy else {
            return Err(ModelError::MissingTensor {
                file: self.origin.clone(),
                name: name.into(),
            });
        };
        let info = policy(name, shape);
        let t = make(info.init, shape, &mut g.rng)?;
        let var = Var::from_tensor(&t.to_dtype(DType::F32)?)?;
        let out = var.as_tensor().clone();
        let idx = g.vars.len();
        g.index.insert(name.to_string(), idx);
        g.vars.push((name.to_string(), var, info.decay));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> InitPolicy {
        Box::new(|name: &str, _s: &[usize]| ParamInfo {
            init: if name.ends_with("norm") {
                Init::Ones
            } else {
                Init::Normal { std: 0.02 }
            },
            decay: !name.ends_with("norm"),
        })
    }

    #[test]
    fn creates_once_then_returns_the_same_variable_and_checks_shapes() {
        let s = VarStore::new_random(1, policy());
        let a = s.tensor("w", &[3, 4]).unwrap();
        let b = s.tensor("w", &[3, 4]).unwrap();
        assert_eq!(
            a.id(),
            b.id(),
            "the same variable (tied weights share gradients)"
        );
        assert!(
            s.tensor("w", &[4, 3])
                .unwrap_err()
                .to_string()
                .contains("'w'")
        );
        let n = s.tensor("x.norm", &[5]).unwrap();
        assert_eq!(n.to_vec1::<f32>().unwrap(), vec![1.0; 5]);
        let vars = s.vars();
        assert_eq!(vars.len(), 2);
        assert!(vars[0].2 && !vars[1].2);
        assert_eq!(s.num_params(), 17);
    }
}
