//! RoPE against its formula, the composed ops and the fused passes.

use super::*;
use canon_testkit::{Tol, assert_close, randn, to_vec};

fn dot(a: &Tensor, b: &Tensor) -> f64 {
    to_vec(a)
        .iter()
        .zip(to_vec(b))
        .map(|(x, y)| *x as f64 * y as f64)
        .sum()
}

/// Frequency factors divide each pair's angle: a linear factor `s` at position `m·s` gives
/// plain RoPE's rotation at `m`; a wrong count or a non-positive factor is an error.
#[test]
fn frequency_factors_slow_the_rotation() {
    let d = 8;
    let plain = Rope::new(d, 64, 10000.0, RopeLayout::HalfSplit, &Device::Cpu).unwrap();
    let slow = Rope::new(d, 64, 10000.0, RopeLayout::HalfSplit, &Device::Cpu)
        .unwrap()
        .with_freq_factors(&[4.0; 4])
        .unwrap();
    let x = randn(&[1, 1, 1, d], 3);
    let a = plain.apply(&x, 3).unwrap();
    let b = slow.apply(&x, 12).unwrap();
    assert_close(&b, &a, Tol::new(1e-5, 1e-5));
    let r = || Rope::new(d, 64, 10000.0, RopeLayout::HalfSplit, &Device::Cpu).unwrap();
    assert!(r().with_freq_factors(&[1.0; 3]).is_err());
    assert!(r().with_freq_factors(&[1.0, 0.0, 1.0, 1.0]).is_err());
    assert!(r().with_freq_factors(&[1.0, f32::NAN, 1.0, 1.0]).is_err());
    // Llama 3's factors: high frequencies kept, low ones slowed by the factor, one blended.
    let f = Rope::llama3_factors(16, 50000.0, 8.0, 1.0, 4.0, 64.0);
    assert_eq!(f[0], 1.0);
    assert!(f[1] > 1.0 && f[1] < 8.0, "{f:?}");
    assert!(f[2..].iter().all(|&x| x == 8.0), "{f:?}");
}

/// The fused attention-input pass equals norm, RoPE and scale applied one after the other,
/// bit for bit, on a projection's head view (`[b, t, h·d]` seen as `[b, h, t, d]`) and on a
/// contiguous tensor, at an offset, with and without each part.
#[test]
fn heads_prepared_equals_norm_rope_scale_in_turn() {
    let (b, t, h, d) = (2, 37, 3, 16);
    let proj = randn(&[b, t, h * d], 5);
    let view = proj.reshape((b, t, h, d)).unwrap().transpose(1, 2).unwrap();
    let w = (randn(&[d], 6) * 0.3).unwrap();
    let norm = crate::norm::RmsNorm::new(w.clone(), 1e-6);
    for layout in [RopeLayout::Interleaved, RopeLayout::HalfSplit] {
        let rope = Rope::new(d, 256, 10000.0, layout, &Device::Cpu).unwrap();
        for (x, offset) in [(view.clone(), 0), (view.contiguous().unwrap(), 11)] {
            let contiguous = x.contiguous().unwrap();
            let normed = norm.forward(&contiguous).unwrap();
            let rotated = rope.apply(&normed, offset).unwrap();
            let want = (&rotated * 0.7f64).unwrap();
            let got = heads_prepared(&x, Some((&w, 1e-6)), Some((&rope, offset)), Some(0.7))
                .unwrap()
                .expect("f32 CPU input takes the fused pass");
            assert!(got.is_contiguous());
            assert_eq!(to_vec(&got), to_vec(&want));
            let rope_only = heads_prepared(&x, None, Some((&rope, offset)), None)
                .unwrap()
                .unwrap();
            assert_eq!(
                to_vec(&rope_only),
                to_vec(&rope.apply(&contiguous, offset).unwrap())
            );
            let norm_only = heads_prepared(&x, Some((&w, 1e-6)), None, None)
                .unwrap()
                .unwrap();
            assert_eq!(to_vec(&norm_only), to_vec(&normed));
            let copy = heads_prepared(&x, None, None, None).unwrap().unwrap();
            assert_eq!(to_vec(&copy), to_vec(&contiguous));
        }
        // A position past the table is an error, as for `apply`.
        assert!(heads_prepared(&view, None, Some((&rope, 250)), None).is_err());
    }
    // Gradients take the composed ops.
    let var = candle_core::Var::from_tensor(&view.contiguous().unwrap()).unwrap();
    assert!(
        heads_prepared(var.as_tensor(), None, None, None)
            .unwrap()
            .is_none()
    );
}

#[test]
fn the_inference_loop_equals_the_composed_formula() {
    for layout in [RopeLayout::Interleaved, RopeLayout::HalfSplit] {
        let rope = Rope::new(8, 64, 10000.0, layout, &Device::Cpu).unwrap();
        let x = randn(&[2, 3, 5, 8], 9);
        let fast = rope.apply(&x, 7).unwrap();
        let tracked = candle_core::Var::from_tensor(&x).unwrap();
        let composed = rope.apply(tracked.as_tensor(), 7).unwrap();
        assert_close(&fast, &composed.detach(), Tol::EXACT);
    }
}

/// The training op equals the composed formula forward and backward, and finite differences.
#[test]
fn the_training_op_equals_the_composed_formula_and_finite_differences() {
    use candle_core::Var;
    for layout in [RopeLayout::Interleaved, RopeLayout::HalfSplit] {
        let rope = Rope::new(8, 64, 10000.0, layout, &Device::Cpu).unwrap();
        let x = Var::from_tensor(&randn(&[2, 3, 5, 8], 9)).unwrap();
        let w = randn(&[2, 3, 5, 8], 4);
        let ours = rope.apply(x.as_tensor(), 7).unwrap();
        let refr = rope.apply_composed(x.as_tensor(), 7).unwrap();
        assert_close(&ours, &refr, Tol::F32);
        let g1 = (&ours * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (&refr * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let x = x.as_tensor();
        assert_close(g1.get(x).unwrap(), g2.get(x).unwrap(), Tol::F32);
        let v = Var::from_tensor(&randn(&[1, 2, 3, 8], 2)).unwrap();
        crate::gradcheck::check_gradients(
            &[v],
            |t| (rope.apply(&t[0], 3)? * randn(&[1, 2, 3, 8], 5))?.sum_all(),
            1e-2,
            2e-3,
            2e-2,
        )
        .unwrap();
    }
}

#[test]
fn score_depends_only_on_relative_position() {
    for layout in [RopeLayout::Interleaved, RopeLayout::HalfSplit] {
        let rope = Rope::new(64, 5000, 10000.0, layout, &Device::Cpu).unwrap();
        let q = randn(&[1, 1, 1, 64], 1);
        let k = randn(&[1, 1, 1, 64], 2);
        let score =
            |m: usize, n: usize| dot(&rope.apply(&q, m).unwrap(), &rope.apply(&k, n).unwrap());
        for (m, n, s) in [(3, 10, 100), (0, 7, 4000), (50, 20, 1234)] {
            let a = score(m, n);
            let b = score(m + s, n + s);
            assert!(
                (a - b).abs() <= 1e-4 * a.abs().max(1.0),
                "{layout:?} {m} {n} {s}: {a} vs {b}"
            );
        }
    }
}

#[test]
fn preserves_norm_and_position_zero_is_identity() {
    let rope = Rope::new(64, 100, 10000.0, RopeLayout::Interleaved, &Device::Cpu).unwrap();
    let x = randn(&[2, 3, 4, 64], 3);
    assert_close(
        &rope.apply(&x.narrow(2, 0, 1).unwrap(), 0).unwrap(),
        &x.narrow(2, 0, 1).unwrap(),
        Tol::EXACT,
    );
    let y = rope.apply(&x, 17).unwrap();
    let nx = x.sqr().unwrap().sum(3).unwrap();
    let ny = y.sqr().unwrap().sum(3).unwrap();
    assert_close(&ny, &nx, Tol::new(1e-4, 1e-5));
}

#[test]
fn matches_candle_fused_rope_in_both_layouts() {
    let (t, d) = (7, 32);
    let x = randn(&[2, 3, t, d], 5);
    for (layout, off) in [(RopeLayout::Interleaved, 0), (RopeLayout::HalfSplit, 5)] {
        let rope = Rope::new(d, 64, 10000.0, layout, &Device::Cpu).unwrap();
        let ours = rope.apply(&x, off).unwrap();
        let (c, s) = angles(&rope.inv_freq, off..off + t);
        let cos = Tensor::from_vec(c, (t, d / 2), &Device::Cpu).unwrap();
        let sin = Tensor::from_vec(s, (t, d / 2), &Device::Cpu).unwrap();
        let fused = match layout {
            RopeLayout::Interleaved => candle_nn::rotary_emb::rope_i(&x, &cos, &sin).unwrap(),
            RopeLayout::HalfSplit => candle_nn::rotary_emb::rope(&x, &cos, &sin).unwrap(),
        };
        assert_close(&ours, &fused, Tol::new(1e-6, 1e-6));
    }
}

/// Positions past the kept table (computed per call) rotate exactly as tabled ones would:
/// inference loop, training op (forward and backward) and composed formula agree across the
/// table's end, bit for bit with a rope whose table is the same numbers.
#[test]
fn positions_past_the_table_are_computed_the_same_way() {
    let (t, d) = (12, 16);
    let off = ROPE_TABLE_POSITIONS - 5;
    let rope = Rope::new(
        d,
        ROPE_TABLE_POSITIONS + 100,
        10000.0,
        RopeLayout::Interleaved,
        &Device::Cpu,
    )
    .unwrap();
    let x = randn(&[1, 2, t, d], 3);
    let inference = rope.apply(&x, off).unwrap();
    let (c, s) = angles(&rope.inv_freq, off..off + t);
    let cos = Tensor::from_vec(c, (t, d / 2), &Device::Cpu).unwrap();
    let sin = Tensor::from_vec(s, (t, d / 2), &Device::Cpu).unwrap();
    let reference = candle_nn::rotary_emb::rope_i(&x, &cos, &sin).unwrap();
    assert_close(&inference, &reference, Tol::new(1e-6, 1e-6));
    assert_close(
        &rope.apply_composed(&x, off).unwrap(),
        &reference,
        Tol::new(1e-6, 1e-6),
    );
    let v = candle_core::Var::from_tensor(&x).unwrap();
    let y = rope.apply(v.as_tensor(), off).unwrap();
    assert_close(&y, &reference, Tol::new(1e-6, 1e-6));
    // The backward rotates back: the gradient of sum(y ⊙ y) is 2x (rotations keep norms).
    let g = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    let gx = g.get(v.as_tensor()).unwrap();
    assert_close(gx, &(x * 2.0).unwrap(), Tol::new(1e-5, 1e-5));
    assert!(
        rope.apply(&randn(&[1, 1, 1, d], 4), ROPE_TABLE_POSITIONS + 100)
            .is_err()
    );
}

/// The kept table grows with the positions reached (a power of two, at least 256, at most the
/// cap) and a grown table gives the same rotation as a fresh rope that computes it at once.
#[test]
fn the_kept_table_grows_with_the_positions_reached() {
    let d = 8;
    let rope = Rope::new(d, 5000, 10000.0, RopeLayout::HalfSplit, &Device::Cpu).unwrap();
    let kept = |r: &Rope| r.table.read().unwrap().positions;
    assert_eq!(kept(&rope), 0);
    let x = randn(&[1, 1, 3, d], 5);
    let early = rope.apply(&x, 10).unwrap();
    assert_eq!(kept(&rope), ROPE_TABLE_STEP);
    let clone = rope.clone();
    clone.apply(&x, 600).unwrap();
    assert_eq!(kept(&rope), 1024, "clones share the table");
    // Rows computed before and after growing are the same numbers.
    assert_close(&rope.apply(&x, 10).unwrap(), &early, Tol::new(0.0, 0.0));
    let fresh = Rope::new(d, 5000, 10000.0, RopeLayout::HalfSplit, &Device::Cpu).unwrap();
    assert_close(
        &fresh.apply(&x, 600).unwrap(),
        &rope.apply(&x, 600).unwrap(),
        Tol::new(0.0, 0.0),
    );
    rope.apply(&x, ROPE_TABLE_POSITIONS - 3).unwrap();
    assert_eq!(kept(&rope), ROPE_TABLE_POSITIONS);
    let short = Rope::new(d, 300, 10000.0, RopeLayout::HalfSplit, &Device::Cpu).unwrap();
    short.apply(&x, 297).unwrap();
    assert_eq!(kept(&short), 300, "never past max_pos");
}

#[test]
fn layouts_are_equivalent_up_to_the_row_permutation() {
    let d = 16;
    let x = randn(&[1, 1, 3, d], 9);
    let perm = interleaved_to_half_split_rows(d);
    let idx = Tensor::from_vec(
        perm.iter().map(|&p| p as u32).collect::<Vec<_>>(),
        d,
        &Device::Cpu,
    )
    .unwrap();
    let xp = x.index_select(&idx, 3).unwrap();
    let ri = Rope::new(d, 8, 10000.0, RopeLayout::Interleaved, &Device::Cpu).unwrap();
    let rh = Rope::new(d, 8, 10000.0, RopeLayout::HalfSplit, &Device::Cpu).unwrap();
    let a = ri.apply(&x, 4).unwrap().index_select(&idx, 3).unwrap();
    let b = rh.apply(&xp, 4).unwrap();
    assert_close(&a, &b, Tol::new(1e-6, 1e-6));
}

#[test]
fn row_prepared_gives_the_bits_of_heads_prepared() {
    // One position of 3 heads, with and without norm and scale, in both layouts, at a position
    // inside the kept table and one beyond it (computed rows).
    let d = 8;
    let w = randn(&[d], 21);
    for layout in [RopeLayout::HalfSplit, RopeLayout::Interleaved] {
        let rope = Rope::new(d, 5000, 10000.0, layout, &Device::Cpu).unwrap();
        for pos in [0, 37, ROPE_TABLE_POSITIONS + 5] {
            let x = randn(&[1, 3, 1, d], pos as u64 + 3);
            let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
            for (norm, scale) in [
                (None, None),
                (Some((&w, 1e-6)), Some(0.7)),
                (Some((&w, 1e-6)), None),
            ] {
                let want: Vec<f32> = heads_prepared(&x, norm, Some((&rope, pos)), scale)
                    .unwrap()
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                let mut got = vec![f32::NAN; xs.len()];
                assert!(row_prepared(&xs, d, norm, Some((&rope, pos)), scale, &mut got).unwrap());
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&got),
                    bits(&want),
                    "{layout:?} pos {pos} norm {}",
                    norm.is_some()
                );
            }
        }
    }
    // A norm weight of another width is declined untouched; rows of the wrong width are an error.
    let mut y = vec![1.0f32; 2 * d];
    let narrow = randn(&[d / 2], 1);
    let rope = Rope::new(d, 64, 10000.0, RopeLayout::HalfSplit, &Device::Cpu).unwrap();
    assert!(
        !row_prepared(
            &vec![0.5; 2 * d],
            d,
            Some((&narrow, 1e-6)),
            None,
            None,
            &mut y
        )
        .unwrap()
    );
    assert!(y.iter().all(|&v| v == 1.0));
    assert!(
        row_prepared(
            &vec![0.5; 2 * d + 1],
            d,
            None,
            Some((&rope, 0)),
            None,
            &mut y
        )
        .is_err()
    );
    assert!(row_prepared(&vec![0.5; 2 * d], d, None, Some((&rope, 64)), None, &mut y).is_err());
}
