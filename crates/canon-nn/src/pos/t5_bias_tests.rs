use super::*;
use crate::attention::{AttnMask, AttnOpts, attend, attention};
use candle_core::{DType, Device, Var};

/// T5's attention: no `1/√d`, the bias added to the scores.
fn biased_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: Option<&Tensor>,
    mask: AttnMask<'_>,
) -> crate::Result<Tensor> {
    let opts = AttnOpts {
        bias,
        scale: Some(1.0),
        dropout: None,
    };
    attend(q, k, v, mask, opts)
}
use canon_testkit::{Tol, assert_close, golden, randn, to_vec};

/// docs/papers/08-t5.md, acceptance: the bucket table.
const BIDIRECTIONAL: &[(i64, usize)] = &[
    (-1000, 15),
    (-128, 15),
    (-127, 15),
    (-64, 14),
    (-32, 12),
    (-20, 10),
    (-16, 10),
    (-9, 8),
    (-8, 8),
    (-7, 7),
    (-1, 1),
    (0, 0),
    (1, 17),
    (2, 18),
    (7, 23),
    (8, 24),
    (9, 24),
    (16, 26),
    (32, 28),
    (64, 30),
    (127, 31),
    (128, 31),
    (1000, 31),
];
const CAUSAL: &[(i64, usize)] = &[
    (-1000, 31),
    (-128, 31),
    (-64, 26),
    (-32, 21),
    (-20, 17),
    (-16, 16),
    (-9, 9),
    (-8, 8),
    (-7, 7),
    (-1, 1),
    (0, 0),
];

#[test]
fn bucket_table_matches_the_papers_values_in_f32_and_f64() {
    for &(rp, want) in BIDIRECTIONAL {
        assert_eq!(relative_position_bucket(rp, true, 32, 128), want, "rp {rp}");
    }
    for &(rp, want) in CAUSAL {
        assert_eq!(
            relative_position_bucket(rp, false, 32, 128),
            want,
            "rp {rp}"
        );
    }
    for rp in 1..2000 {
        assert_eq!(relative_position_bucket(rp, false, 32, 128), 0, "rp {rp}");
    }
    for rp in -3000..3000 {
        for bi in [true, false] {
            assert_eq!(
                relative_position_bucket(rp, bi, 32, 128),
                relative_position_bucket_f32(rp, bi, 32, 128),
                "rp {rp} bidirectional {bi}"
            );
        }
    }
}

#[test]
fn bucket_table_matches_transformers() {
    // goldens/t5/gen.py: transformers' T5Attention._relative_position_bucket.
    let g = golden("t5/t5.json");
    for (mode, bi) in [("bidirectional", true), ("causal", false)] {
        let rps = g["buckets"][mode]["rp"].as_array().unwrap();
        let want = g["buckets"][mode]["bucket"].as_array().unwrap();
        assert!(rps.len() > 600);
        for (rp, w) in rps.iter().zip(want) {
            let rp = rp.as_i64().unwrap();
            let w = w.as_u64().unwrap() as usize;
            assert_eq!(
                relative_position_bucket(rp, bi, 32, 128),
                w,
                "{mode} rp {rp}"
            );
        }
    }
}

#[test]
fn bias_rows_depend_on_the_query_position_so_a_cached_step_equals_the_full_row() {
    let table = randn(&[32, 3], 1);
    for bi in [true, false] {
        let rb = RelativeBias::new(table.clone(), bi, 128);
        let full = rb.bias(10, 10, 0).unwrap(); // [1, 3, 10, 10]
        assert_eq!(full.dims(), &[1, 3, 10, 10]);
        // Step t = 7 alone (query position 7, keys 0..=7) is row 7 of the full bias.
        let step = rb.bias(1, 8, 7).unwrap();
        let row = full.narrow(2, 7, 1).unwrap().narrow(3, 0, 8).unwrap();
        assert_close(&step, &row, Tol::EXACT);
        // ...and not the row of query position 0 (the bug the acceptance check guards against).
        let wrong = rb.bias(1, 8, 0).unwrap();
        assert!(
            to_vec(&(wrong - &step).unwrap())
                .iter()
                .any(|d| d.abs() > 1e-3)
        );
        // Entry (h, i, j) is table[bucket(j − i), h].
        let tv = table.to_vec2::<f32>().unwrap();
        let fv = full.squeeze(0).unwrap().to_vec3::<f32>().unwrap();
        for (i, j) in [(0, 9), (9, 0), (4, 4), (2, 7)] {
            let bk = relative_position_bucket(j as i64 - i as i64, bi, 32, 128);
            for (h, fh) in fv.iter().enumerate() {
                assert_eq!(fh[i][j], tv[bk][h]);
            }
        }
    }
}

#[test]
fn biased_attention_with_zero_bias_is_scaled_attention_on_prescaled_queries() {
    // T5 has no 1/√d: attention(√d·q) of canon-nn equals biased_attention(q) with B = 0.
    let d = 8;
    let q = randn(&[2, 3, 5, d], 1);
    let k = randn(&[2, 3, 5, d], 2);
    let v = randn(&[2, 3, 5, d], 3);
    let keep = Tensor::new(
        &[[1f32, 1., 1., 1., 1.], [1., 1., 1., 0., 0.]],
        &Device::Cpu,
    )
    .unwrap();
    let zero = Tensor::zeros((1, 3, 5, 5), DType::F32, &Device::Cpu).unwrap();
    let qs = (&q * (d as f64).sqrt()).unwrap();
    for mask in [
        AttnMask::None,
        AttnMask::Causal { offset: 0 },
        AttnMask::Padding(&keep),
    ] {
        let ours = biased_attention(&q, &k, &v, Some(&zero), mask).unwrap();
        let theirs = attention(&qs, &k, &v, mask).unwrap();
        assert_close(&ours, &theirs, Tol::new(1e-5, 1e-4));
    }
    // A non-zero bias changes the result.
    let b = randn(&[1, 3, 5, 5], 4);
    let with = biased_attention(&q, &k, &v, Some(&b), AttnMask::None).unwrap();
    let without = biased_attention(&q, &k, &v, None, AttnMask::None).unwrap();
    assert!(
        to_vec(&(with - without).unwrap())
            .iter()
            .any(|x| x.abs() > 1e-3)
    );
}

#[test]
fn gradients_reach_the_table_through_the_attention() {
    let table = Var::from_tensor(&randn(&[32, 2], 5)).unwrap();
    let rb = RelativeBias::new(table.as_tensor().clone(), false, 128);
    let q = randn(&[1, 2, 6, 4], 1);
    let k = randn(&[1, 2, 6, 4], 2);
    let v = randn(&[1, 2, 6, 4], 3);
    let bias = rb.bias(6, 6, 0).unwrap();
    let y = biased_attention(&q, &k, &v, Some(&bias), AttnMask::Causal { offset: 0 }).unwrap();
    let g = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    let gt = to_vec(g.get(table.as_tensor()).expect("table gradient"));
    // Causal offsets 0..=5 use buckets 0..=5 only; the rest get no gradient.
    assert!(gt[..12].iter().any(|x| x.abs() > 0.0));
    assert!(gt[12..].iter().all(|x| *x == 0.0));
}
