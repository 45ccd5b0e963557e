//! BERT's inference pass over plain f32 buffers (see [`super::Bert::forward_inference`]): the
//! embeddings summed and normalised, then per layer one `[rows, 3d]` Q|K|V buffer, attention,
//! residual add fused into layer norm and GELU in place; products on f32 GEMMs or, after
//! [`super::Bert::use_q8_weights`], on 8-bit weights.

use canon_nn::fused::{self, AttnDims, Parallelism};

use super::q8;

/// Weight slices of the inference pass; pairs are (weight, bias) or (γ, β).
pub(super) struct Weights<'a> {
    pub(super) word: &'a [f32],
    pub(super) position: &'a [f32],
    pub(super) token_type: &'a [f32],
    pub(super) emb_norm: (&'a [f32], &'a [f32]),
    pub(super) layers: Vec<LayerW<'a>>,
    pub(super) d: usize,
    pub(super) inter: usize,
    pub(super) heads: usize,
    pub(super) eps: f32,
    /// The products on 8-bit weights, when the model runs them.
    pub(super) q8: Option<&'a [q8::LayerQ8]>,
}

pub(super) struct LayerW<'a> {
    pub(super) qkv: [(&'a [f32], &'a [f32]); 3],
    pub(super) o: (&'a [f32], &'a [f32]),
    pub(super) fc1: (&'a [f32], &'a [f32]),
    pub(super) fc2: (&'a [f32], &'a [f32]),
    pub(super) attn_norm: (&'a [f32], &'a [f32]),
    pub(super) out_norm: (&'a [f32], &'a [f32]),
}

impl Weights<'_> {
    /// Runs the encoder over `n` sequences of `t` positions (`ids`, `types`, `keep`: `[n·t]`),
    /// writing the hidden states `[n·t, d]` into `x`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn encode(
        &self,
        ids: &[u32],
        types: &[u32],
        keep: &[f32],
        n: usize,
        t: usize,
        x: &mut [f32],
        par: Parallelism,
    ) {
        let (d, inter) = (self.d, self.inter);
        let rows = n * t;
        // E = word[ids] + position[0..t] + token_type[types], then LayerNorm.
        for (r, row) in x.chunks_exact_mut(d).enumerate() {
            let (id, tt, pos) = (ids[r] as usize, types[r] as usize, r % t);
            let word = &self.word[id * d..(id + 1) * d];
            let p = &self.position[pos * d..(pos + 1) * d];
            let ty = &self.token_type[tt * d..(tt + 1) * d];
            for (((v, a), b), c) in row.iter_mut().zip(word).zip(p).zip(ty) {
                *v = a + b + c;
            }
        }
        let ln = |x: &mut [f32], res: Option<(&[f32], &[f32])>, (g, b): (&[f32], &[f32])| {
            let (r, rb) = res.unzip();
            fused::layer_norm_rows(x, r, rb, d, g, Some(b), self.eps);
        };
        ln(x, None, self.emb_norm);
        let mut qkv = vec![0f32; rows * 3 * d];
        let mut qkv_bias = vec![0f32; 3 * d];
        let mut ctx = vec![0f32; rows * d];
        let mut tmp = vec![0f32; rows * d];
        let mut ff = vec![0f32; rows * inter];
        let dims = AttnDims {
            batch: n,
            seq: t,
            heads: self.heads,
            head_dim: d / self.heads,
        };
        // Each GEMM writes x·Wᵀ only; its bias is added by the pass that reads the product next
        // (attention, GELU, residual + layer norm), saving a write and a read of every output.
        for (i, l) in self.layers.iter().enumerate() {
            let lq = self.q8.map(|q| &q[i]);
            // [rows, d] -> [rows, 3d]: Q | K | V
            for (j, (wm, bv)) in l.qkv.iter().enumerate() {
                if lq.is_none() {
                    fused::linear(x, rows, d, wm, d, None, &mut qkv[j * d..], 3 * d, par);
                }
                qkv_bias[j * d..(j + 1) * d].copy_from_slice(&bv[..d]);
            }
            if let Some(p) = lq {
                p.qkv.matmul(x, rows, &mut qkv);
            }
            fused::self_attention(&qkv, 3 * d, Some(&qkv_bias), keep, dims, &mut ctx, d);
            // h = LayerNorm(x + (W_o·a + b_o))
            match lq {
                Some(p) => p.o.matmul(&ctx, rows, &mut tmp),
                None => fused::linear(&ctx, rows, d, l.o.0, d, None, &mut tmp, d, par),
            }
            ln(x, Some((&tmp, l.o.1)), l.attn_norm);
            // y = LayerNorm(h + (W_2·GELU(W_1 h + b_1) + b_2))
            match lq {
                Some(p) => p.fc1.matmul(x, rows, &mut ff),
                None => fused::linear(x, rows, d, l.fc1.0, inter, None, &mut ff, inter, par),
            }
            fused::bias_gelu_erf_rows(&mut ff, &l.fc1.1[..inter]);
            match lq {
                Some(p) => p.fc2.matmul(&ff, rows, &mut tmp),
                None => fused::linear(&ff, rows, inter, l.fc2.0, d, None, &mut tmp, d, par),
            }
            ln(x, Some((&tmp, l.fc2.1)), l.out_norm);
        }
    }
}
