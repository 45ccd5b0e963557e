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
