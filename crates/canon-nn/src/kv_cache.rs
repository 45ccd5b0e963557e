//! Per-layer key/value cache for incremental decoding: keys and values of past positions are kept so
//! each new token attends to them without recomputing them.
//!
//! Shapes: `[b, h_kv, t, d]`, growing along `t`.

use candle_core::Tensor;

/// Keys and values live in buffers with room for more positions; appending writes the new
/// positions in place (no copy of the past), and the buffers double when full.
///
/// The in-place write records no backward pass, so keys/values that track gradients (training
/// through a forward pass that uses a cache) are concatenated instead, as a differentiable op.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    /// `[b, h_kv, capacity, d]`
    k: Option<Tensor>,
    v: Option<Tensor>,
    len: usize,
    /// Store keys and values as f16 (llama.cpp's default cache type): half the memory; `append`
    /// and `view` hand them back in the dtype of the keys given (f32 for the attention loops).
    f16: bool,
}

/// Positions allocated on first use.
const FIRST_CAPACITY: usize = 64;

impl KvCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty cache that stores keys and values as f16.
    pub fn new_f16() -> Self {
        Self {
            f16: true,
            ..Self::default()
        }
    }

    /// Whether keys and values are stored as f16.
    pub fn is_f16(&self) -> bool {
        self.f16
    }

    /// Bytes held by the key and value buffers (their whole capacity).
    pub fn bytes(&self) -> usize {
        [&self.k, &self.v]
            .iter()
            .filter_map(|t| t.as_ref())
            .map(|t| t.elem_count() * t.dtype().size_in_bytes())
            .sum()
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn capacity(&self) -> usize {
        self.k.as_ref().and_then(|k| k.dim(2).ok()).unwrap_or(0)
    }

    /// Appends new keys/values `[b, h_kv, t, d]` and returns the whole cached sequence (views of
    /// the buffers, `[b, h_kv, len, d]`), in the dtype of the keys given (an f16 cache's
    /// positions converted back).
    pub fn append(&mut self, k: &Tensor, v: &Tensor) -> crate::Result<(Tensor, Tensor)> {
        let out_dtype = k.dtype();
        let (ko, vo) = self.append_stored(k, v)?;
        if ko.dtype() != out_dtype {
            return Ok((ko.to_dtype(out_dtype)?, vo.to_dtype(out_dtype)?));
        }
        Ok((ko, vo))
    }

    /// [`KvCache::append`] without the conversion back: the whole cached sequence as views of
    /// the buffers in the dtype they store (f16 for an f16 cache), for loops that read f16 rows
    /// in place (the batched decode step) instead of converting every position on every step.
    pub fn append_stored(&mut self, k: &Tensor, v: &Tensor) -> crate::Result<(Tensor, Tensor)> {
        let (b, h, t, d) = k.dims4()?;
        if v.dims4()? != (b, h, t, d) {
            candle_core::bail!(
                "kv cache: keys {:?} and values {:?} differ in shape",
                k.dims(),
                v.dims()
            );
        }
        if let Some(old) = &self.k {
            let (ob, oh, _, od) = old.dims4()?;
            if (ob, oh, od) != (b, h, d) {
                candle_core::bail!(
                    "kv cache: expected [{ob}, {oh}, t, {od}], found {:?}",
                    k.dims()
                );
            }
        }
        let need = self.len + t;
        if k.track_op() || v.track_op() {
            let join = |old: &Option<Tensor>, new: &Tensor| -> crate::Result<Tensor> {
                match old {
                    Some(o) if self.len > 0 => Tensor::cat(&[&o.narrow(2, 0, self.len)?, new], 2),
                    _ => Ok(new.clone()),
                }
            };
            let (kc, vc) = (join(&self.k, k)?, join(&self.v, v)?);
            self.k = Some(kc.clone());
            self.v = Some(vc.clone());
            self.len = need;
            return Ok((kc, vc));
        }
        let (k, v) = if self.f16 {
            (
                &k.to_dtype(candle_core::DType::F16)?,
                &v.to_dtype(candle_core::DType::F16)?,
            )
        } else {
            (k, v)
        };
        let at = self.len;
        let (kb, vb) = self.reserve((b, h, d), k.dtype(), k.device(), need)?;
        kb.slice_set(&k.contiguous()?, 2, at)?;
        vb.slice_set(&v.contiguous()?, 2, at)?;
        let views = (kb.narrow(2, 0, need)?, vb.narrow(2, 0, need)?);
        self.len = need;
        Ok(views)
    }

    /// Buffers `[b, h, capacity ≥ need, d]` of `dtype`, grown (doubling, the cached positions
    /// copied) when they hold fewer than `need` positions.
    fn reserve(
        &mut self,
        (b, h, d): (usize, usize, usize),
        dtype: candle_core::DType,
        device: &candle_core::Device,
        need: usize,
    ) -> crate::Result<(&Tensor, &Tensor)> {
        if need > self.capacity() {
            let cap = need.max(2 * self.capacity()).max(FIRST_CAPACITY);
            let len = self.len;
            let grow = |old: &Option<Tensor>| -> crate::Result<Tensor> {
                let buf = Tensor::zeros((b, h, cap, d), dtype, device)?;
                if let Some(o) = old
                    && len > 0
                {
                    buf.slice_set(&o.narrow(2, 0, len)?.contiguous()?, 2, 0)?;
                }
                Ok(buf)
            };
            self.k = Some(grow(&self.k)?);
            self.v = Some(grow(&self.v)?);
        }
        match (&self.k, &self.v) {
            (Some(kb), Some(vb)) => Ok((kb, vb)),
            _ => candle_core::bail!("kv cache: buffers missing after growth"),
        }
    }

    /// Appends one position of a single sequence given as slices, as a decode step holds it:
    /// `k` and `v` are `heads` rows of width `d` back to back (`[h_kv, d]`), written in place into
    /// the buffers (rounded to f16 for an f16 cache, as [`KvCache::append`] rounds), with no
    /// tensor made per call. `Ok(false)`, touching nothing, when the cache holds another batch
    /// size, shape or dtype than a fresh f32/f16 CPU cache of `[1, heads, t, d]` would (the
    /// caller then takes [`KvCache::append_stored`]).
    pub fn append_row(
        &mut self,
        k: &[f32],
        v: &[f32],
        heads: usize,
        d: usize,
    ) -> crate::Result<bool> {
        if heads == 0 || d == 0 || k.len() != heads * d || v.len() != heads * d {
            candle_core::bail!(
                "kv cache: expected {heads} rows of width {d} for one position, found {} keys and {} values",
                k.len(),
                v.len()
            );
        }
        let dtype = if self.f16 {
            candle_core::DType::F16
        } else {
            candle_core::DType::F32
        };
        if let (Some(kb), Some(vb)) = (&self.k, &self.v) {
            let fits = |t: &Tensor| {
                t.dims4()
                    .ok()
                    .is_some_and(|(b, h, _, w)| (b, h, w) == (1, heads, d))
                    && t.dtype() == dtype
                    && t.device().is_cpu()
                    && t.is_contiguous()
            };
            if !fits(kb) || !fits(vb) {
                return Ok(false);
            }
        }
        let pos = self.len;
        let (kb, vb) = self.reserve((1, heads, d), dtype, &candle_core::Device::Cpu, pos + 1)?;
        kb.inplace_op1(&WriteRow { src: k, pos, d })?;
        vb.inplace_op1(&WriteRow { src: v, pos, d })?;
        self.len = pos + 1;
        Ok(true)
    }

    /// The attention of one query row (`heads` rows of width `d`, back to back) over the
    /// cached positions `lo..len` of a single sequence, written to `out` (`[heads·d]`), read in
    /// place from the buffers ([`crate::attention::one_row_slice`]; f16 rows widened exactly).
    /// `false`, touching nothing, when the cache is empty or the shapes do not fit.
    pub fn attend_row(
        &self,
        q: &[f32],
        heads: usize,
        lo: usize,
        scale: f32,
        out: &mut [f32],
    ) -> bool {
        match (&self.k, &self.v) {
            (Some(k), Some(v)) => {
                crate::attention::one_row_slice(q, heads, k, v, self.len, lo, scale, out)
            }
            _ => false,
        }
    }

    /// The cached keys and values `[b, h_kv, len, d]` (views of the buffers), or `None` when
    /// empty: encoder-decoder models read their cross-attention states back with it.
    pub fn view(&self) -> crate::Result<Option<(Tensor, Tensor)>> {
        match (&self.k, &self.v) {
            (Some(k), Some(v)) if self.len > 0 => {
                let (k, v) = (k.narrow(2, 0, self.len)?, v.narrow(2, 0, self.len)?);
                if self.f16 {
                    let f = candle_core::DType::F32;
                    return Ok(Some((k.to_dtype(f)?, v.to_dtype(f)?)));
                }
                Ok(Some((k, v)))
            }
            _ => Ok(None),
        }
    }

    /// Hints the CPU to bring the cached rows of key/value head `h` towards the core (a decode
    /// step calls it before the work that precedes its attention, whose first head would
    /// otherwise wait for memory). Reads nothing.
    pub fn prefetch_head(&self, h: usize) {
        if let (Some(k), Some(v)) = (&self.k, &self.v) {
            crate::attention::prefetch_head(k, v, h, self.len);
        }
    }

    pub fn clear(&mut self) {
        self.k = None;
        self.v = None;
        self.len = 0;
    }
}

/// Writes one position (`[h, d]` rows, f32) into row `pos` of every head of a contiguous
/// `[1, h, capacity, d]` buffer, converting to the buffer's f32 or f16.
struct WriteRow<'a> {
    src: &'a [f32],
    pos: usize,
    d: usize,
}

impl candle_core::InplaceOp1 for WriteRow<'_> {
    fn name(&self) -> &'static str {
        "kv-cache-write-row"
    }

    fn cpu_fwd(
        &self,
        storage: &mut candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<()> {
        let (_, h, cap, d) = layout.shape().dims4()?;
        let start = layout.start_offset();
        if d != self.d || self.src.len() != h * d || self.pos >= cap || !layout.is_contiguous() {
            candle_core::bail!(
                "kv cache: a row of {} values does not fit {:?}",
                self.src.len(),
                layout.shape()
            );
        }
        let at = |hi: usize| start + (hi * cap + self.pos) * d;
        match storage {
            candle_core::CpuStorage::F32(buf) => {
                for (hi, row) in self.src.chunks_exact(d).enumerate() {
                    buf[at(hi)..at(hi) + d].copy_from_slice(row);
                }
            }
            candle_core::CpuStorage::F16(buf) => {
                use half::slice::HalfFloatSliceExt;
                // The slice conversion (eight values per F16C instruction where the CPU has
                // it), the rounding `f16::from_f32` gives value by value.
                for (hi, row) in self.src.chunks_exact(d).enumerate() {
                    buf[at(hi)..at(hi) + d].convert_from_f32_slice(row);
                }
            }
            _ => candle_core::bail!("kv cache: buffers are neither f32 nor f16"),
        }
        Ok(())
    }
}

impl KvCache {
    /// Keeps only the first `n` positions (the buffers stay allocated).
    pub fn truncate(&mut self, n: usize) -> crate::Result<()> {
        if n == 0 {
            self.clear();
        } else {
            self.len = self.len.min(n);
        }
        Ok(())
    }

    /// Keeps batch rows `rows` (u32 `[b']`, repeats allowed) in that order: beam search reorders
    /// its hypotheses' caches by parent beam. The buffers are copied, so rows that share a parent
    /// stop sharing storage.
    pub fn select_rows(&mut self, rows: &Tensor) -> crate::Result<()> {
        if self.len == 0 {
            return Ok(());
        }
        let pick = |t: &Option<Tensor>| -> crate::Result<Option<Tensor>> {
            t.as_ref()
                .map(|t| {
                    t.narrow(2, 0, self.len)?
                        .contiguous()?
                        .index_select(rows, 0)
                })
                .transpose()
        };
        let (k, v) = (pick(&self.k)?, pick(&self.v)?);
        self.k = k;
        self.v = v;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
