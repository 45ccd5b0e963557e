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
mod tests {
    use super::*;
    use canon_testkit::{Tol, assert_close, randn};

    #[test]
    fn appending_in_pieces_equals_the_concatenation_across_growth() {
        // 300 positions in uneven pieces cross the first capacity (64) and grow three times.
        let k = randn(&[1, 2, 300, 4], 1);
        let v = randn(&[1, 2, 300, 4], 2);
        let mut c = KvCache::new();
        let mut at = 0;
        for step in [5, 1, 1, 200, 60, 1, 32] {
            let (ka, va) = c
                .append(
                    &k.narrow(2, at, step).unwrap(),
                    &v.narrow(2, at, step).unwrap(),
                )
                .unwrap();
            at += step;
            assert_eq!(c.len(), at);
            assert_close(&ka, &k.narrow(2, 0, at).unwrap(), Tol::EXACT);
            assert_close(&va, &v.narrow(2, 0, at).unwrap(), Tol::EXACT);
        }
    }

    /// A row written into an f16 cache in place (the slice conversion) holds the bits
    /// `f16::from_f32` gives value by value: ties, overflow to infinity, subnormals, signed
    /// zeros, NaN and infinities among ordinary values, widths with and without a tail of eight.
    #[test]
    fn rows_written_in_place_round_as_f16_from_f32_does() {
        for d in [3usize, 8, 13, 64] {
            let heads = 2;
            let specials = [
                1.0 + 1.0 / 2048.0, // a tie at f16's precision
                65_520.0,           // rounds up to infinity
                -65_519.0,
                1e-6,
                3e-8,
                -0.0,
                f32::NAN,
                f32::INFINITY,
                f32::NEG_INFINITY,
            ];
            let row = |seed: usize| -> Vec<f32> {
                (0..heads * d)
                    .map(|i| {
                        if (i + seed).is_multiple_of(3) {
                            specials[(i + seed) % specials.len()]
                        } else {
                            ((i * 37 + seed * 11) % 101) as f32 / 7.0 - 7.0
                        }
                    })
                    .collect()
            };
            let mut c = KvCache::new_f16();
            let (mut ks, mut vs) = (Vec::new(), Vec::new());
            for pos in 0..3 {
                let (k, v) = (row(pos), row(pos + 5));
                assert!(c.append_row(&k, &v, heads, d).unwrap(), "width {d}");
                ks.push(k);
                vs.push(v);
            }
            let (kt, vt) = c.view().unwrap().unwrap();
            for (t, rows) in [(kt, &ks), (vt, &vs)] {
                // [1, heads, 3, d] widened back from f16: exact, so the f16 bits are compared.
                let got: Vec<u16> = t
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
                    .iter()
                    .map(|&x| half::f16::from_f32(x).to_bits())
                    .collect();
                let want: Vec<u16> = (0..heads)
                    .flat_map(|h| {
                        rows.iter()
                            .flat_map(move |r| r[h * d..(h + 1) * d].iter())
                            .map(|&x| half::f16::from_f32(x).to_bits())
                    })
                    .collect();
                assert_eq!(got, want, "width {d}");
            }
        }
    }

    #[test]
    fn an_f16_cache_holds_half_the_bytes_and_rounds_to_f16() {
        let k = randn(&[1, 2, 70, 8], 11);
        let v = randn(&[1, 2, 70, 8], 12);
        let (mut a, mut b) = (KvCache::new(), KvCache::new_f16());
        let mut at = 0;
        for step in [30, 1, 39] {
            let (kn, vn) = (
                k.narrow(2, at, step).unwrap(),
                v.narrow(2, at, step).unwrap(),
            );
            a.append(&kn, &vn).unwrap();
            let (kb, vb) = b.append(&kn, &vn).unwrap();
            at += step;
            assert_eq!(kb.dtype(), candle_core::DType::F32);
            let round = |t: &Tensor| {
                t.to_dtype(candle_core::DType::F16)
                    .unwrap()
                    .to_dtype(candle_core::DType::F32)
                    .unwrap()
            };
            assert_close(&kb, &round(&k.narrow(2, 0, at).unwrap()), Tol::EXACT);
            assert_close(&vb, &round(&v.narrow(2, 0, at).unwrap()), Tol::EXACT);
        }
        assert!(b.is_f16() && !a.is_f16());
        // The stored views are the f16 values themselves, the same positions.
        let (ks, vs) = b
            .append_stored(&k.narrow(2, 0, 1).unwrap(), &v.narrow(2, 0, 1).unwrap())
            .unwrap();
        assert_eq!(ks.dtype(), candle_core::DType::F16);
        assert_eq!(ks.dims(), &[1, 2, 71, 8]);
        let back = |t: &Tensor| t.to_dtype(candle_core::DType::F32).unwrap();
        let (ka, va) = a
            .append(&k.narrow(2, 0, 1).unwrap(), &v.narrow(2, 0, 1).unwrap())
            .unwrap();
        let round = |t: &Tensor| back(&t.to_dtype(candle_core::DType::F16).unwrap());
        assert_close(&back(&ks), &round(&ka), Tol::EXACT);
        assert_close(&back(&vs), &round(&va), Tol::EXACT);
        b.truncate(70).unwrap();
        a.truncate(70).unwrap();
        assert_eq!(2 * b.bytes(), a.bytes());
        let (kv, _) = b.view().unwrap().unwrap();
        assert_eq!(kv.dims(), &[1, 2, 70, 8]);
    }

    #[test]
    fn rows_appended_in_place_equal_appended_tensors_and_attend_as_one_row() {
        // 150 single positions after a 20-position prompt cross the first capacity and grow;
        // both cache types; then a truncation and more rows overwrite the dropped positions.
        let (h, hq, d) = (2, 6, 8);
        for f16 in [false, true] {
            let fresh = || {
                if f16 {
                    KvCache::new_f16()
                } else {
                    KvCache::new()
                }
            };
            let (mut a, mut b) = (fresh(), fresh());
            let k = randn(&[1, h, 170, d], 31);
            let v = randn(&[1, h, 170, d], 32);
            let first = (k.narrow(2, 0, 20).unwrap(), v.narrow(2, 0, 20).unwrap());
            a.append(&first.0, &first.1).unwrap();
            b.append(&first.0, &first.1).unwrap();
            let row = |t: &Tensor, i: usize| -> Vec<f32> {
                t.narrow(2, i, 1)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap()
            };
            for i in 20..170 {
                if i == 120 {
                    a.truncate(100).unwrap();
                    b.truncate(100).unwrap();
                }
                let (kn, vn) = (k.narrow(2, i, 1).unwrap(), v.narrow(2, i, 1).unwrap());
                let (ka, va) = a.append_stored(&kn, &vn).unwrap();
                assert!(b.append_row(&row(&k, i), &row(&v, i), h, d).unwrap());
                assert_eq!(b.len(), a.len());
                let (kb, vb) = (
                    b.k.as_ref().unwrap().narrow(2, 0, b.len()).unwrap(),
                    b.v.as_ref().unwrap().narrow(2, 0, b.len()).unwrap(),
                );
                assert_eq!(kb.dtype(), ka.dtype());
                let f = candle_core::DType::F32;
                assert_close(
                    &kb.to_dtype(f).unwrap(),
                    &ka.to_dtype(f).unwrap(),
                    Tol::EXACT,
                );
                assert_close(
                    &vb.to_dtype(f).unwrap(),
                    &va.to_dtype(f).unwrap(),
                    Tol::EXACT,
                );
                // The attention read from the buffers: one_row's bits over the views.
                let q = randn(&[1, hq, 1, d], i as u64);
                let qs: Vec<f32> = q.flatten_all().unwrap().to_vec1().unwrap();
                let lo = i % 7;
                let (mut want, mut got) = (vec![0.0f32; hq * d], vec![0.0f32; hq * d]);
                assert!(crate::attention::one_row(&q, &ka, &va, lo, 0.3, &mut want));
                assert!(b.attend_row(&qs, hq, lo, 0.3, &mut got));
                let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "f16 {f16} position {i}");
            }
        }
        // Rows of the wrong length are an error; a cache of two sequences, or of other heads,
        // declines untouched; an empty cache attends to nothing.
        let mut c = KvCache::new();
        assert!(!c.attend_row(&[0.0; 8], 1, 0, 1.0, &mut [0.0; 8]));
        assert!(c.append_row(&[0.0; 7], &[0.0; 8], 1, 8).is_err());
        c.append(&randn(&[2, 1, 3, 8], 1), &randn(&[2, 1, 3, 8], 2))
            .unwrap();
        assert!(!c.append_row(&[0.0; 8], &[0.0; 8], 1, 8).unwrap());
        assert_eq!(c.len(), 3);
        let mut c = KvCache::new();
        c.append(&randn(&[1, 2, 3, 4], 1), &randn(&[1, 2, 3, 4], 2))
            .unwrap();
        assert!(!c.append_row(&[0.0; 8], &[0.0; 8], 1, 8).unwrap());
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn truncate_then_append_overwrites_the_dropped_positions() {
        let k = randn(&[1, 1, 6, 2], 3);
        let mut c = KvCache::new();
        c.append(&k, &k).unwrap();
        c.truncate(2).unwrap();
        let other = randn(&[1, 1, 3, 2], 4);
        let (ka, _) = c.append(&other, &other).unwrap();
        let want = Tensor::cat(&[&k.narrow(2, 0, 2).unwrap(), &other], 2).unwrap();
        assert_close(&ka, &want, Tol::EXACT);
        assert!(
            c.append(&randn(&[1, 2, 1, 2], 5), &randn(&[1, 2, 1, 2], 5))
                .is_err()
        );
    }

    #[test]
    fn select_rows_reorders_the_batch_and_unshares_the_buffers() {
        let k = randn(&[3, 2, 4, 2], 8);
        let mut c = KvCache::new();
        c.append(&k, &k).unwrap();
        let rows = Tensor::new(&[2u32, 2, 0], &candle_core::Device::Cpu).unwrap();
        c.select_rows(&rows).unwrap();
        let next = randn(&[3, 2, 1, 2], 9);
        let (ka, _) = c.append(&next, &next).unwrap();
        let want = Tensor::cat(&[&k.index_select(&rows, 0).unwrap(), &next], 2).unwrap();
        assert_close(&ka, &want, Tol::EXACT);
        assert_eq!(c.len(), 5);
    }

    #[test]
    fn tracked_keys_keep_their_gradient() {
        let k = candle_core::Var::from_tensor(&randn(&[1, 1, 3, 2], 6)).unwrap();
        let mut c = KvCache::new();
        c.append(&randn(&[1, 1, 2, 2], 7), &randn(&[1, 1, 2, 2], 7))
            .unwrap();
        let (ka, va) = c.append(k.as_tensor(), k.as_tensor()).unwrap();
        assert_eq!(ka.dims(), &[1, 1, 5, 2]);
        let g = (ka.sum_all().unwrap() + va.sum_all().unwrap())
            .unwrap()
            .backward()
            .unwrap();
        let gk: Vec<f32> = g
            .get(k.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(gk.iter().all(|&x| x == 2.0));
    }
}
