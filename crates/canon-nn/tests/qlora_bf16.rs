//! QLoRA's base product in bf16 (`set_bf16_products`, process-wide, hence a test binary of its
//! own): with bf16 products on, a LoRA layer over an NF4 base multiplies the dequantized weight
//! and the input rounded to bfloat16 (QLoRA's compute dtype) with f32 accumulation, instead of
//! the f32 product; with them off, the f32 product is unchanged.

use std::sync::Arc;

use canon_nn::train_ops::set_bf16_products;
use canon_nn::{Linear, Lora, Weight};
use canon_quant::Nf4Tensor;
use canon_testkit::randn;
use half::bf16;

fn values(t: &candle_core::Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

#[test]
fn an_nf4_base_multiplies_in_bf16_when_bf16_products_are_on() {
    let (n, out, inp, r) = (20, 600, 64, 3);
    let wv = values(&randn(&[out, inp], 31));
    let nf4 = Weight::Nf4(Arc::new(Nf4Tensor::quantize(&wv, out, inp, true).unwrap()));
    // A tracked input, as in training: the LoRA layer then runs its fused op.
    let xvar = candle_core::Var::from_tensor(&randn(&[n, inp], 32)).unwrap();
    let x = xvar.as_tensor().clone();
    let mut l = Linear::new(nf4.clone(), None);
    // B = 0: the output is the base product alone.
    l.set_lora(Lora {
        a: randn(&[r, inp], 33),
        b: candle_core::Tensor::zeros((out, r), candle_core::DType::F32, &candle_core::Device::Cpu)
            .unwrap(),
        scale: 0.5,
        dropout: None,
    })
    .unwrap();
    let y32 = values(&l.forward(&x).unwrap());
    if set_bf16_products(true).is_err() {
        eprintln!("skipped: this CPU has no AVX512_BF16");
        return;
    }
    let y16 = values(&l.forward(&x).unwrap());
    set_bf16_products(false).unwrap();
    assert_eq!(
        values(&l.forward(&x).unwrap()),
        y32,
        "f32 again once bf16 is off"
    );
    // The reference: the dequantized weight and the input rounded to bf16, products exact, sums
    // in f64.
    let w = values(&nf4.to_dense().unwrap());
    let xv = values(&x);
    let round = |v: f32| bf16::from_f32(v).to_f32();
    let scale = y32.iter().fold(0f32, |m, v| m.max(v.abs()));
    let (mut worst16, mut worst32) = (0f32, 0f32);
    for i in 0..n {
        for o in 0..out {
            let want: f64 = (0..inp)
                .map(|k| f64::from(round(xv[i * inp + k])) * f64::from(round(w[o * inp + k])))
                .sum();
            worst16 = worst16.max((y16[i * out + o] - want as f32).abs());
            worst32 = worst32.max((y32[i * out + o] - want as f32).abs());
        }
    }
    // bf16 operands, f32 sums: within f32 rounding of the bf16 reference; the f32 product is
    // not (its operands keep their low bits).
    assert!(
        worst16 <= 1e-5 * scale,
        "bf16 base off its reference by {worst16} (scale {scale})"
    );
    assert!(
        worst32 > 1e-3 * scale,
        "the f32 product is as close ({worst32}): bf16 not exercised"
    );
}
