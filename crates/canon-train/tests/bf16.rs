//! bf16 mixed precision (`canon_nn::train_ops::set_bf16_products`): a tiny GPT trained on the same
//! seed in f32 and with bf16 products follows the same loss curve within tolerance. The switch is
//! process-wide, so the tests here take one lock.

use std::sync::Mutex;

use canon_models::ModelConfig;
use canon_models::gpt::{BlockStyle, FfnKind, GptConfig, NormKind, PosKind};
use canon_nn::Activation;
use canon_nn::train_ops::set_bf16_products;
use canon_train::data::{TokenizerKind, train_tokenizer};
use canon_train::{OptimizerConfig, Schedule, TokenData, TrainConfig, Trainer};

static MODE: Mutex<()> = Mutex::new(());

fn data() -> TokenData {
    let docs: Vec<String> = (0..80)
        .map(|i| format!("def f{i}(x):\n    return x * {} + {}\n\n", i % 7, i % 5))
        .collect();
    let tok = train_tokenizer(TokenizerKind::Char, &docs, 0).unwrap();
    TokenData::encode(&tok, &docs, 0.1).unwrap()
}

/// nanoGPT's block at a size whose products reach the bf16 kernel (64 rows, 64–256 columns).
fn model(vocab: usize) -> ModelConfig {
    ModelConfig::Gpt(GptConfig {
        vocab_size: vocab,
        n_layer: 2,
        n_head: 2,
        n_kv_head: None,
        d_model: 64,
        d_ff: 256,
        max_seq_len: 32,
        block: BlockStyle::PreLn,
        norm: NormKind::LayerNorm,
        norm_bias: false,
        positions: PosKind::Learned,
        ffn: FfnKind::Mlp,
        activation: Activation::Gelu,
        bias: false,
        tie_embeddings: true,
        final_norm: true,
        scaled_residual_init: true,
        init_std: 0.02,
        embed_init_std: None,
        scale_logits: false,
        norm_eps: 1e-5,
        rope_theta: 10000.0,
        moe: None,
        moe_every: 2,
        dropout: 0.0,
    })
}

/// Training losses of `steps` steps and the held-out loss after them.
fn run(d: &TokenData, steps: u64, seed: u64, bf16: bool) -> (Vec<f64>, f64) {
    set_bf16_products(bf16).unwrap();
    let cfg = TrainConfig {
        batch_size: 4,
        block_size: 16,
        grad_accum: 1,
        max_steps: steps,
        lr: 3e-3,
        schedule: Schedule::Cosine {
            warmup: 5,
            min_lr_ratio: 0.1,
        },
        optimizer: OptimizerConfig::default(),
        grad_clip: Some(1.0),
        eval_every: 1000,
        eval_batches: 4,
        log_every: 1,
        checkpoint_every: 1000,
        seed,
        z_loss: 0.0,
        moe_aux_weight: 0.0,
    };
    let mut t = Trainer::new(&model(d.vocab_size), cfg).unwrap();
    let losses = (0..steps).map(|_| t.train_step(d).unwrap().loss).collect();
    let eval = t.evaluate(d, 16).unwrap();
    set_bf16_products(false).unwrap();
    (losses, eval)
}

fn supported() -> bool {
    if set_bf16_products(true).is_err() {
        eprintln!("skipped: this CPU has no AVX512_BF16");
        return false;
    }
    set_bf16_products(false).unwrap();
    true
}

#[test]
fn bf16_products_follow_the_f32_loss_curve() {
    let _mode = MODE.lock().unwrap_or_else(|e| e.into_inner());
    if !supported() {
        return;
    }
    let d = data();
    let (f32_losses, f32_eval) = run(&d, 30, 3, false);
    let (bf_losses, bf_eval) = run(&d, 30, 3, true);
    // The switch is live: rounding the operands changes the arithmetic.
    assert_ne!(f32_losses, bf_losses);
    for (i, (a, b)) in f32_losses.iter().zip(&bf_losses).enumerate() {
        assert!(
            (a - b).abs() <= 0.02 * a,
            "step {}: f32 {a} vs bf16 {b}",
            i + 1
        );
    }
    assert!(f32_losses[29] < f32_losses[0] - 0.5, "{f32_losses:?}");
    assert!(
        (f32_eval - bf_eval).abs() <= 0.02 * f32_eval,
        "held-out {f32_eval} vs {bf_eval}"
    );
}

/// The claim over 200 steps and three seeds: the held-out loss with bf16 products is within 3 % of
/// f32's for every seed, and the mean over seeds within 1 %. Why 3 % per seed: a bf16 run is far
/// more sensitive to last-bit changes than an f32 run (a changed bit can flip an operand's bf16
/// rounding, a 2⁻⁸ step). Changing only the summation order of the layer norms (eight lanes, Dec
/// 6) moved the bf16 held-out losses 0.4362 / 0.4582 / 0.4832 to 0.4503 / 0.4516 / 0.4693 (up to
/// 3.2 %) while f32's stayed at 0.4409 / 0.4508 / 0.4800–0.4802; the seeds themselves spread by
/// 9 %. The mean over the seeds moved by 0.1 %.
#[test]
#[ignore = "slow: 6 runs of 200 steps"]
fn bf16_products_match_f32_over_200_steps_and_three_seeds() {
    let _mode = MODE.lock().unwrap_or_else(|e| e.into_inner());
    if !supported() {
        return;
    }
    let d = data();
    let (mut fs, mut bs) = (0.0, 0.0);
    for seed in [1, 2, 3] {
        let (fl, fe) = run(&d, 200, seed, false);
        let (bl, be) = run(&d, 200, seed, true);
        eprintln!(
            "seed {seed}: train loss f32 {:.4} bf16 {:.4}, held-out f32 {fe:.4} bf16 {be:.4}",
            fl[199], bl[199]
        );
        assert!(
            (fe - be).abs() <= 0.03 * fe,
            "seed {seed}: held-out {fe} vs {be}"
        );
        fs += fe;
        bs += be;
    }
    assert!(
        (fs - bs).abs() <= 0.01 * fs,
        "mean held-out {} vs {}",
        fs / 3.0,
        bs / 3.0
    );
}
