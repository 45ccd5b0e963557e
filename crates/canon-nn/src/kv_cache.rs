//! Per-layer key/value cache for incremental decoding: keys and values of past positions are kept so
//! each new token attends to them without recomputing them.
//!
//! Shapes: `[b, h_kv, t, d]`, growing along `t`.

use candle_core::Tensor;

#[derive(Debug, Clone, Default)]
pub struct KvCache {
    k: Option<Tensor>,
    v: Option<Tensor>,
}

impl KvCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.k.as_ref().and_then(|k| k.dim(2).ok()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends new keys/values and returns the whole cached sequence.
    pub fn append(&mut self, k: &Tensor, v: &Tensor) -> crate::Result<(Tensor, Tensor)> {
        let (k, v) = match (&self.k, &self.v) {
            (Some(pk), Some(pv)) => (Tensor::cat(&[pk, k], 2)?, Tensor::cat(&[pv, v], 2)?),
            _ => (k.clone(), v.clone()),
        };
        self.k = Some(k.clone());
        self.v = Some(v.clone());
        Ok((k, v))
    }

    pub fn clear(&mut self) {
        self.k = None;
        self.v = None;
    }
}

impl KvCache {
    /// Keeps only the first `n` positions.
    pub fn truncate(&mut self, n: usize) -> crate::Result<()> {
        if n >= self.len() {
            return Ok(());
        }
        if n == 0 {
            self.clear();
            return Ok(());
        }
        self.k = self.k.as_ref().map(|k| k.narrow(2, 0, n)).transpose()?;
        self.v = self.v.as_ref().map(|v| v.narrow(2, 0, n)).transpose()?;
        Ok(())
    }
}
