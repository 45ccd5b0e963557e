//! Attention's paths against the composed formula and each other.

use super::*;
use canon_testkit::{Tol, assert_close, randn};

#[test]
fn gqa_equals_mha_over_explicitly_replicated_heads() {
    let q = randn(&[2, 6, 5, 8], 1);
    let k = randn(&[2, 2, 5, 8], 2);
    let v = randn(&[2, 2, 5, 8], 3);
    let gqa = attention(&q, &k, &v, AttnMask::Causal { offset: 0 }).unwrap();
    // Explicit replication: head j uses kv head j / 3.
    let idx = Tensor::new(&[0u32, 0, 0, 1, 1, 1], &Device::Cpu).unwrap();
    let kr = k.index_select(&idx, 1).unwrap();
    let vr = v.index_select(&idx, 1).unwrap();
    let mha = attention(&q, &kr, &vr, AttnMask::Causal { offset: 0 }).unwrap();
    assert_close(&gqa, &mha, Tol::F32);
    assert_close(&repeat_kv(&k, 3).unwrap(), &kr, Tol::EXACT);
    assert_close(&repeat_kv(&k, 1).unwrap(), &k, Tol::EXACT);
}

#[test]
fn future_keys_do_not_change_past_outputs() {
    let q = randn(&[1, 2, 6, 4], 1);
    let k = randn(&[1, 2, 6, 4], 2);
    let v = randn(&[1, 2, 6, 4], 3);
    let full = attention(&q, &k, &v, AttnMask::Causal { offset: 0 }).unwrap();
    let q3 = q.narrow(2, 0, 3).unwrap();
    let part = attention(
        &q3,
        &k.narrow(2, 0, 3).unwrap(),
        &v.narrow(2, 0, 3).unwrap(),
        AttnMask::Causal { offset: 0 },
    )
    .unwrap();
    assert_close(&full.narrow(2, 0, 3).unwrap(), &part, Tol::F32);
    // A cached query at offset 4 sees keys 0..=4.
    let last = attention(
        &q.narrow(2, 4, 1).unwrap(),
        &k.narrow(2, 0, 5).unwrap(),
        &v.narrow(2, 0, 5).unwrap(),
        AttnMask::Causal { offset: 4 },
    )
    .unwrap();
    assert_close(&full.narrow(2, 4, 1).unwrap(), &last, Tol::F32);
}

#[test]
fn inference_paths_equal_the_composed_path_on_strided_cache_views() {
    // A cache-like buffer with room for 10 positions, of which 7 are used.
    let buf = randn(&[2, 3, 10, 16], 4);
    let (k, v) = (
        buf.narrow(2, 0, 7).unwrap(),
        (buf.narrow(2, 0, 7).unwrap() * 0.5).unwrap(),
    );
    for (tq, mask) in [
        (1, AttnMask::Causal { offset: 6 }),
        (3, AttnMask::Causal { offset: 4 }),
        (2, AttnMask::None),
        (7, AttnMask::Causal { offset: 0 }),
        (5, AttnMask::Causal { offset: 2 }),
        (6, AttnMask::None),
    ] {
        let q = randn(&[2, 6, tq, 16], 5 + tq as u64);
        let direct = attention(&q, &k, &v, mask).unwrap();
        // The matmul path: a tracked query forces it.
        let qv = candle_core::Var::from_tensor(&q).unwrap();
        let general = attention(qv.as_tensor(), &k, &v, mask).unwrap();
        assert_close(&direct, &general.detach(), Tol::F32);
    }
}

/// Prompts longer than one block of queries (`QB`): each causal block stops at its own last
/// key, the unmasked ones read every key; all equal the composed path, on strided cache views
/// with grouped-query heads, from an empty cache and after a prefix; sliding windows shorter
/// than a block, longer than one, and longer than the context.
#[test]
fn prompt_blocks_equal_the_composed_path() {
    let buf = randn(&[1, 2, 400, 8], 21);
    // (queries, cached keys before them, Some(window) / None for causal, causal at all)
    for (tq, past, window, mask_causal) in [
        (150, 0, None, true),
        (150, 37, None, true),
        (QB, 0, None, true),
        (QB + 1, 5, None, true),
        (130, 0, None, false),
        (150, 0, Some(40), true),
        (150, 37, Some(QB + 3), true),
        (QB + 1, 5, Some(1), true),
        (140, 2, Some(500), true),
    ] {
        let tk = past + tq;
        let k = buf.narrow(2, 0, tk).unwrap();
        let v = (buf.narrow(2, 0, tk).unwrap() * -0.7).unwrap();
        let q = randn(&[1, 6, tq, 8], 40 + tq as u64);
        let mask = match (mask_causal, window) {
            (true, Some(window)) => AttnMask::SlidingCausal {
                offset: past,
                window,
            },
            (true, None) => AttnMask::Causal { offset: past },
            (false, _) => AttnMask::None,
        };
        let fast = attention(&q, &k, &v, mask).unwrap();
        let reference = attention_composed(&q, &k, &v, mask).unwrap();
        assert_close(&fast, &reference, Tol::F32);
    }
}

/// Decoding against a long cache runs the heads on the kernel pool: the same values as the
/// composed path, with grouped-query heads, causal and windowed.
#[test]
fn long_context_decoding_equals_the_composed_path() {
    let buf = randn(&[1, 2, 700, 64], 31);
    let (k, v) = (
        buf.narrow(2, 0, 650).unwrap(),
        (buf.narrow(2, 50, 650).unwrap() * 0.5).unwrap(),
    );
    let q = randn(&[1, 6, 2, 64], 32);
    const { assert!(6 * 2 * 650 * 64 >= DIRECT_PARALLEL_MACS) };
    for mask in [
        AttnMask::Causal { offset: 648 },
        AttnMask::SlidingCausal {
            offset: 648,
            window: 300,
        },
    ] {
        let fast = attention(&q, &k, &v, mask).unwrap();
        let reference = attention_composed(&q, &k, &v, mask).unwrap();
        assert_close(&fast, &reference, Tol::F32);
    }
}

#[test]
fn a_sliding_window_sees_only_the_last_keys() {
    let buf = randn(&[1, 4, 9, 8], 11);
    let (k, v) = (
        buf.narrow(1, 0, 2).unwrap(),
        buf.narrow(1, 2, 2).unwrap().contiguous().unwrap(),
    );
    let q = randn(&[1, 4, 9, 8], 12);
    let window = 3;
    // Query 7 (offset 0) sees keys 5, 6, 7: the same as plain attention over those keys.
    let want = attention(
        &q.narrow(2, 7, 1).unwrap(),
        &k.narrow(2, 5, 3).unwrap(),
        &v.narrow(2, 5, 3).unwrap(),
        AttnMask::None,
    )
    .unwrap();
    let all = attention(&q, &k, &v, AttnMask::SlidingCausal { offset: 0, window }).unwrap();
    assert_close(&all.narrow(2, 7, 1).unwrap(), &want, Tol::F32);
    // Decoding (direct loops), the masked matmul path and the composed path agree.
    for (tq, offset) in [(1usize, 8usize), (2, 7), (9, 0), (5, 4)] {
        let qi = q.narrow(2, 9 - tq, tq).unwrap();
        let mask = AttnMask::SlidingCausal { offset, window };
        let direct = attention(&qi, &k, &v, mask).unwrap();
        let qv = candle_core::Var::from_tensor(&qi).unwrap();
        let general = attention(qv.as_tensor(), &k, &v, mask).unwrap();
        assert_close(&direct, &general.detach(), Tol::F32);
        // A window as long as the context is plain causal attention.
        let wide = AttnMask::SlidingCausal { offset, window: 9 };
        let causal = attention(&qi, &k, &v, AttnMask::Causal { offset }).unwrap();
        assert_close(&attention(&qi, &k, &v, wide).unwrap(), &causal, Tol::F32);
    }
}

#[test]
fn padding_keys_are_ignored() {
    let q = randn(&[1, 2, 3, 4], 1);
    let k = randn(&[1, 2, 5, 4], 2);
    let v = randn(&[1, 2, 5, 4], 3);
    let keep = Tensor::new(&[[1f32, 1., 1., 0., 0.]], &Device::Cpu).unwrap();
    let padded = attention(&q, &k, &v, AttnMask::Padding(&keep)).unwrap();
    let short = attention(
        &q,
        &k.narrow(2, 0, 3).unwrap(),
        &v.narrow(2, 0, 3).unwrap(),
        AttnMask::None,
    )
    .unwrap();
    assert_close(&padded, &short, Tol::F32);
}
