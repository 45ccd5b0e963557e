//! Token (and position) embedding lookup: `ids: [b, t]` → `[b, t, d]` from a table `[vocab, d]`.

use candle_core::Tensor;

#[derive(Debug, Clone)]
pub struct Embedding {
    /// `[vocab, d]`
    pub weight: Tensor,
}

impl Embedding {
    pub fn new(weight: Tensor) -> Self {
        Self { weight }
    }

    pub fn vocab_size(&self) -> usize {
        self.weight.dims().first().copied().unwrap_or(0)
    }

    pub fn forward(&self, ids: &Tensor) -> crate::Result<Tensor> {
        let dims = ids.dims().to_vec();
        let flat = ids.flatten_all()?;
        let out = self.weight.index_select(&flat, 0)?; // [b·t, d]
        let mut shape = dims;
        shape.push(self.weight.dim(1)?);
        out.reshape(shape)
    }
}
