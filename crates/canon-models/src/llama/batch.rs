//! One step for several sequences at once (`CausalLm::forward_batch`): the rows of every
//! sequence share each product, the attention runs per sequence on the kernel pool.

use candle_core::Tensor;
use canon_nn::fused::F32Data;
use canon_nn::{AttnMask, KvCache, Linear, attention};

use super::{Block, Llama};
use crate::{Cache, CausalLm, ModelError, Result};

/// One sequence's cache, its rows of the attention output and the outcome, filled by a worker
/// of the kernels' pool.
/// Query-key multiply-adds of a prompt chunk's attention (rows × keys × heads × head width) from
/// which it runs on its own, spread over the pool, rather than beside the pass's other sequences
/// on one thread: about a tenth of a millisecond of work.
const SIDE_BY_SIDE_MAX_MACS: usize = 1 << 20;

type SeqSlot<'a> = std::sync::Mutex<(&'a mut Cache, &'a mut [f32], Option<Result<()>>)>;

impl Llama {
    /// `CausalLm::forward_batch`: every sequence's new rows stacked, each weight matrix read once
    /// for all of them; each sequence's attention against its own cache.
    pub(super) fn forward_rows(&self, ids: &[&[u32]], caches: &mut [&mut Cache]) -> Result<Tensor> {
        let c = &self.config;
        if ids.len() != caches.len() {
            return Err(ModelError::Input(format!(
                "forward_batch: {} sequences but {} caches",
                ids.len(),
                caches.len()
            )));
        }
        if ids.is_empty() {
            return Ok(Tensor::zeros(
                (0, c.vocab_size),
                candle_core::DType::F32,
                &candle_core::Device::Cpu,
            )?);
        }
        // Row ranges of each sequence in the stacked activations, and its cache offset.
        let mut spans = Vec::with_capacity(ids.len());
        let mut all = Vec::new();
        for (i, (seq, cache)) in ids.iter().zip(caches.iter_mut()).enumerate() {
            if seq.is_empty() {
                return Err(ModelError::Input(format!(
                    "forward_batch: sequence {i} has no new token"
                )));
            }
            if cache.layers.len() != self.blocks.len() {
                **cache = self.new_cache();
            }
            let offset = cache.len();
            if offset + seq.len() > c.max_position_embeddings {
                return Err(ModelError::Input(format!(
                    "sequence {i} would reach {} tokens, beyond the model's context of {}",
                    offset + seq.len(),
                    c.max_position_embeddings
                )));
            }
            spans.push((all.len(), seq.len(), offset));
            all.extend_from_slice(seq);
        }
        let n = all.len();
        let (d, nh, nkv, hd) = (
            c.hidden_size,
            c.num_attention_heads,
            c.num_key_value_heads,
            c.head_dim,
        );
        // `attention`'s default scale, for the decode rows' own loop.
        let scale = (1.0 / (hd as f64).sqrt()) as f32;
        let ids_t = Tensor::new(all.as_slice(), &candle_core::Device::Cpu)?;
        // [n, d]: every sequence's new rows, stacked; every linear layer multiplies them at once.
        let mut x = self.embed_rows(&ids_t)?.reshape((n, d))?;
        for (l, blk) in self.blocks.iter().enumerate() {
            let h = blk.attn_norm.forward(&x)?;
            // One rounding of `h` and one kernel job for the three products (repacked weights).
            let [q, k, v] = Linear::forward_shared([&blk.q, &blk.k, &blk.v], &h)?;
            // The products' rows as slices, for the decode rows' tensor-free path (none when a
            // gradient is tracked: then every row takes the tensor ops).
            let tracked = q.track_op() || k.track_op() || v.track_op();
            let (qd, kd, vd) = (F32Data::new(&q), F32Data::new(&k), F32Data::new(&v));
            let raw = match (&qd, &kd, &vd) {
                (Some(qd), Some(kd), Some(vd)) if !tracked => Some((&qd[..], &kd[..], &vd[..])),
                _ => None,
            };
            // [t, heads·hd] -> [1, heads, t, hd], as `forward` shapes one sequence.
            let heads = |m: &Tensor, start: usize, t: usize, h: usize| -> Result<Tensor> {
                Ok(m.narrow(0, start, t)?
                    .reshape((1, t, h, hd))?
                    .transpose(1, 2)?
                    .contiguous()?)
            };
            // One sequence's attention, written to its rows `out` of the step's `[n, nh·hd]`
            // output. A decode row (t = 1) reads the cache in place (`attention::one_row`, the
            // same arithmetic as `attention`'s loop); a prompt chunk takes `attention`.
            let one = |&(start, t, offset): &(usize, usize, usize),
                       cache: &mut Cache,
                       out: &mut [f32]|
             -> Result<()> {
                if t == 1 {
                    // The first K/V head's cached rows towards the core while the rows are
                    // prepared (`one_row` fetches each next head while it runs this one).
                    cache.layers[l].prefetch_head(0);
                    let (wq, wk) = (nh * hd, nkv * hd);
                    if let Some((qs, ks, vs)) = raw
                        && let (Some(qr), Some(kr), Some(vr)) = (
                            qs.get(start * wq..(start + 1) * wq),
                            ks.get(start * wk..(start + 1) * wk),
                            vs.get(start * wk..(start + 1) * wk),
                        )
                    {
                        let kv = &mut cache.layers[l];
                        if self.decode_row(blk, l, (qr, kr, vr), offset, kv, scale, out)? {
                            return Ok(());
                        }
                    }
                }
                let (qi, ki) = self.prepare_qk(
                    blk,
                    l,
                    &heads(&q, start, t, nh)?,
                    &heads(&k, start, t, nkv)?,
                    offset,
                )?;
                let vi = heads(&v, start, t, nkv)?;
                // In the cache's dtype: an f16 cache's decode rows are read in place.
                let (ka, va) = cache.layers[l].append_stored(&ki, &vi)?;
                let mask = self.mask_of(l, offset, t);
                if t == 1 {
                    let lo = match mask {
                        AttnMask::SlidingCausal { offset, window } => {
                            (offset + 1).saturating_sub(window)
                        }
                        _ => 0,
                    };
                    if canon_nn::attention::one_row(&qi, &ka, &va, lo, scale, out) {
                        return Ok(());
                    }
                }
                let a = attention(&qi, &ka, &va, mask)?
                    .transpose(1, 2)?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                if a.len() != out.len() {
                    return Err(ModelError::Input(format!(
                        "forward_batch: attention gave {} values for {} rows of width {}",
                        a.len(),
                        t,
                        nh * hd
                    )));
                }
                out.copy_from_slice(&a);
                Ok(())
            };
            let width = nh * hd;
            let mut att = vec![0.0f32; n * width];
            {
                // Each sequence's rows of `att`, in span order (the spans are consecutive).
                let mut rows: Vec<&mut [f32]> = Vec::with_capacity(spans.len());
                let mut rest: &mut [f32] = &mut att;
                for &(_, t, _) in &spans {
                    let (mine, tail) = rest.split_at_mut(t * width);
                    rows.push(mine);
                    rest = tail;
                }
                if spans.len() > 1 {
                    // Several sequences: their attention (single-threaded each while decoding)
                    // runs side by side on the kernels' pool, the threads that run the matrix
                    // products (not on rayon's, whose workers would wake per layer and compete
                    // with the pool's for the cores); each touches only its own cache and rows,
                    // so the results do not depend on how they are spread.
                    // A prompt chunk whose attention is large runs first, alone, with the whole
                    // pool for its heads (as in a pass of its own), so that a long chunk sharing
                    // the pass with decode rows does not leave a core idle.
                    let work: Vec<SeqSlot> = caches
                        .iter_mut()
                        .zip(rows)
                        .map(|(c, r)| std::sync::Mutex::new((&mut **c, r, None)))
                        .collect();
                    let run = |i: usize| {
                        let mut w = work[i].lock().unwrap_or_else(|p| p.into_inner());
                        let (cache, out, res) = &mut *w;
                        *res = Some(one(&spans[i], cache, out));
                    };
                    let (alone, side): (Vec<usize>, Vec<usize>) =
                        (0..spans.len()).partition(|&i| {
                            let (_, t, offset) = spans[i];
                            t > 1 && t * (offset + t) * nh * hd >= SIDE_BY_SIDE_MAX_MACS
                        });
                    alone.iter().for_each(|&i| run(i));
                    canon_quant::pool::parallel_for(side.len(), &|j| run(side[j]));
                    for m in work {
                        let (_, _, r) = m.into_inner().unwrap_or_else(|p| p.into_inner());
                        r.unwrap_or_else(|| {
                            Err(ModelError::Input(
                                "forward_batch: a sequence's attention did not run".into(),
                            ))
                        })?;
                    }
                } else {
                    for ((span, cache), out) in spans.iter().zip(caches.iter_mut()).zip(rows) {
                        one(span, cache, out)?;
                    }
                }
            }
            drop((qd, kd, vd));
            let a = Tensor::from_vec(att, (n, width), &candle_core::Device::Cpu)?;
            x = self.residual_ffn(blk, &x, blk.o.forward(&a)?)?;
        }
        // Each sequence's last row.
        let last: Vec<u32> = spans
            .iter()
            .map(|&(start, t, _)| (start + t - 1) as u32)
            .collect();
        let last = Tensor::new(last.as_slice(), &candle_core::Device::Cpu)?;
        self.logits(&x.index_select(&last, 0)?)
    }

    /// One decode row (one new position of one sequence) without a tensor per step: its query,
    /// key and value rows (`row`, slices of the step's products) are normed, rotated and scaled
    /// by the arithmetic `prepare_qk` runs ([`canon_nn::rope::row_prepared`]), the key and value
    /// written into the cache in place ([`KvCache::append_row`]) and the attention read from
    /// it ([`KvCache::attend_row`]) into `out`: the same bits as the tensor path, without its
    /// head views, copies and conversions (a few microseconds a sequence and layer). `Ok(false)`,
    /// with the cache untouched, when a part does not fit (the caller takes the tensor path).
    #[allow(clippy::too_many_arguments)]
    fn decode_row(
        &self,
        blk: &Block,
        l: usize,
        (q, k, v): (&[f32], &[f32], &[f32]),
        offset: usize,
        kv: &mut KvCache,
        scale: f32,
        out: &mut [f32],
    ) -> Result<bool> {
        let c = &self.config;
        let (nh, nkv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let rope = self.rope_of(l);
        let (qn, kn) = Self::qk_norms(blk);
        let (mut qp, mut kp) = (vec![0.0f32; nh * hd], vec![0.0f32; nkv * hd]);
        let prep = canon_nn::rope::row_prepared;
        if !prep(q, hd, qn, Some((rope, offset)), self.query_mul(), &mut qp)?
            || !prep(k, hd, kn, Some((rope, offset)), None, &mut kp)?
            || !kv.append_row(&kp, v, nkv, hd)?
        {
            return Ok(false);
        }
        let lo = match self.mask_of(l, offset, 1) {
            AttnMask::SlidingCausal { offset, window } => (offset + 1).saturating_sub(window),
            _ => 0,
        };
        if kv.attend_row(&qp, nh, lo, scale, out) {
            return Ok(true);
        }
        Err(ModelError::Input(format!(
            "forward_batch: a decode row of {nh} heads of width {hd} does not fit its cache"
        )))
    }
}
