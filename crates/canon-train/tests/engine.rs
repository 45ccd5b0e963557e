//! The training engine end to end on tiny models: exact resume, falling loss for every family,
//! checkpoint contents, metrics and plot.

use std::sync::atomic::AtomicBool;

use canon_models::ModelConfig;
use canon_models::family::LlamaTrainConfig;
use canon_models::gpt::{BlockStyle, FfnKind, GptConfig, NormKind, PosKind};
use canon_models::transformer_xl::TxlConfig;
use canon_nn::{Activation, MoeConfig};
use canon_train::data::{TokenizerKind, train_tokenizer};
use canon_train::trainer::RunFiles;
use canon_train::{OptimizerConfig, Outcome, Schedule, TokenData, TrainConfig, Trainer};

fn corpus() -> Vec<String> {
    (0..60)
        .map(|i| format!("def f{i}(x):\n    return x * {} + {}\n\n", i % 7, i % 5))
        .collect()
}

fn data() -> TokenData {
    let docs = corpus();
    let tok = train_tokenizer(TokenizerKind::Char, &docs, 0).unwrap();
    TokenData::encode(&tok, &docs, 0.1).unwrap()
}

fn gpt(vocab: usize, block: BlockStyle) -> GptConfig {
    GptConfig {
        vocab_size: vocab,
        n_layer: 2,
        n_head: 2,
        n_kv_head: None,
        d_model: 32,
        d_ff: 64,
        max_seq_len: 32,
        block,
        norm: NormKind::LayerNorm,
        norm_bias: true,
        positions: PosKind::Learned,
        ffn: FfnKind::Mlp,
        activation: Activation::GeluTanh,
        bias: true,
        tie_embeddings: block != BlockStyle::PostLn,
        final_norm: block == BlockStyle::PreLn,
        scaled_residual_init: block == BlockStyle::PreLn,
        init_std: 0.02,
        embed_init_std: None,
        scale_logits: false,
        norm_eps: 1e-5,
        rope_theta: 10000.0,
        moe: None,
        moe_every: 2,
    }
}

fn train_cfg(steps: u64) -> TrainConfig {
    TrainConfig {
        batch_size: 4,
        block_size: 16,
        grad_accum: 2,
        max_steps: steps,
        lr: 3e-3,
        schedule: Schedule::Cosine {
            warmup: 2,
            min_lr_ratio: 0.1,
        },
        optimizer: OptimizerConfig::default(),
        grad_clip: Some(1.0),
        eval_every: 5,
        eval_batches: 2,
        log_every: 1,
        checkpoint_every: 1000,
        seed: 7,
        z_loss: 0.0,
        moe_aux_weight: 0.01,
    }
}

fn params_bits(t: &Trainer) -> Vec<u32> {
    t.engine
        .params
        .iter()
        .flat_map(|p| {
            p.var
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        })
        .map(f32::to_bits)
        .collect()
}

fn txl(vocab: usize) -> ModelConfig {
    ModelConfig::TransformerXl(TxlConfig {
        vocab_size: vocab,
        n_layer: 2,
        n_head: 2,
        d_model: 32,
        d_inner: 64,
        mem_len: 16,
        eval_mem_len: 32,
        max_seq_len: 32,
        init_std: 0.02,
    })
}

#[test]
fn resume_is_exact_bit_for_bit() {
    let d = data();
    let v = d.vocab_size;
    exact_resume(&d, ModelConfig::Gpt(gpt(v, BlockStyle::PreLn)));
    // Transformer-XL: the memory travels in the checkpoint.
    exact_resume(&d, txl(v));
}

fn exact_resume(d: &TokenData, mc: ModelConfig) {
    let d = d.clone();
    let n = 8;
    let dir = tempfile::tempdir().unwrap();
    let stop = AtomicBool::new(false);

    let straight_dir = dir.path().join("straight");
    std::fs::create_dir(&straight_dir).unwrap();
    let mut a = Trainer::new(&mc, train_cfg(n)).unwrap();
    let mut losses_a = Vec::new();
    a.run(&d, n, &stop, &RunFiles::in_dir(&straight_dir), &mut |r| {
        losses_a.push(r.loss.to_bits())
    })
    .unwrap();

    let half_dir = dir.path().join("half");
    std::fs::create_dir(&half_dir).unwrap();
    let files = RunFiles::in_dir(&half_dir);
    let mut b = Trainer::new(&mc, train_cfg(n)).unwrap();
    let mut losses_b = Vec::new();
    b.run(&d, n / 2, &stop, &files, &mut |r| {
        losses_b.push(r.loss.to_bits())
    })
    .unwrap();
    drop(b);
    // A new process would start from a different random init: the checkpoint must restore it all.
    let mut other = train_cfg(n);
    other.seed = 99;
    let mut c = Trainer::new(&mc, other).unwrap();
    c.engine.cfg.seed = 7;
    c.resume(&files.checkpoint).unwrap();
    assert_eq!(c.engine.step, n / 2);
    c.run(&d, n, &stop, &files, &mut |r| {
        losses_b.push(r.loss.to_bits())
    })
    .unwrap();

    assert_eq!(losses_a, losses_b, "per-step losses");
    assert_eq!(params_bits(&a), params_bits(&c), "final weights");
    // metrics.jsonl of the resumed run holds each step once.
    let lines = canon_train::metrics::read_lines(&files.metrics).unwrap();
    let steps: Vec<u64> = lines.iter().map(|l| l.step).collect();
    assert_eq!(steps, (1..=n).collect::<Vec<_>>());
    assert!(files.plot.is_file());
}

fn loss_falls(mc: ModelConfig, steps: u64) -> (f64, f64) {
    let d = data();
    let mut cfg = train_cfg(steps);
    cfg.grad_accum = 1;
    let mut t = Trainer::new(&mc, cfg).unwrap();
    let before = t.evaluate(&d, 16).unwrap();
    let mut last = None;
    for _ in 0..steps {
        last = Some(t.train_step(&d).unwrap());
    }
    let after = t.evaluate(&d, 16).unwrap();
    assert!(
        after < before - 0.5,
        "{mc:?}: eval loss {before} -> {after}"
    );
    assert!(last.unwrap().loss.is_finite());
    (before, after)
}

#[test]
fn every_family_learns_a_tiny_corpus() {
    let v = data().vocab_size;
    loss_falls(ModelConfig::Gpt(gpt(v, BlockStyle::PostLn)), 40); // GPT-1
    loss_falls(ModelConfig::Gpt(gpt(v, BlockStyle::PreLn)), 40); // GPT-2
    let palm = GptConfig {
        n_kv_head: Some(1),
        norm_bias: false,
        positions: PosKind::Rope,
        ffn: FfnKind::SwiGlu,
        bias: false,
        tie_embeddings: true,
        final_norm: true,
        embed_init_std: Some(1.0),
        scale_logits: true,
        ..gpt(v, BlockStyle::Parallel)
    };
    loss_falls(ModelConfig::Gpt(palm), 40);
    let glam = GptConfig {
        moe: Some(MoeConfig {
            n_experts: 4,
            top_k: 2,
            capacity_factor: 2.0,
        }),
        ..gpt(v, BlockStyle::PreLn)
    };
    loss_falls(ModelConfig::Gpt(glam), 40);
    let llama = LlamaTrainConfig {
        vocab_size: v,
        n_layer: 2,
        n_head: 2,
        n_kv_head: None,
        d_model: 32,
        d_ff: None,
        multiple_of: Some(16),
        max_seq_len: 32,
        norm_eps: 1e-5,
        rope_theta: 10000.0,
        tie_embeddings: false,
        init_std: 0.02,
    };
    loss_falls(ModelConfig::Llama(llama), 40);
    loss_falls(txl(v), 40);
}

#[test]
fn transformer_xl_evaluates_with_and_without_memory() {
    let d = data();
    let mut cfg = train_cfg(20);
    cfg.grad_accum = 1;
    cfg.batch_size = 2;
    let mut t = Trainer::new(&txl(d.vocab_size), cfg).unwrap();
    for _ in 0..20 {
        t.train_step(&d).unwrap();
    }
    let with = t.evaluate(&d, 16).unwrap();
    let without = t.evaluate_recurrent(&d, 0).unwrap().unwrap();
    assert!(with.is_finite() && without.is_finite());
    assert_ne!(with, without, "memory must change the evaluation");
}

#[test]
fn sgd_trains_and_z_loss_is_counted() {
    let d = data();
    let mut cfg = train_cfg(30);
    cfg.optimizer = OptimizerConfig::Sgd {
        momentum: 0.9,
        weight_decay: 0.0,
    };
    cfg.lr = 0.5;
    cfg.z_loss = 1e-4;
    let mc = ModelConfig::Gpt(gpt(d.vocab_size, BlockStyle::PreLn));
    let mut t = Trainer::new(&mc, cfg).unwrap();
    let before = t.evaluate(&d, 16).unwrap();
    for _ in 0..30 {
        t.train_step(&d).unwrap();
    }
    assert!(t.evaluate(&d, 16).unwrap() < before - 0.3);
}

#[test]
fn interrupt_writes_a_checkpoint_and_reports_it() {
    let d = data();
    let mc = ModelConfig::Gpt(gpt(d.vocab_size, BlockStyle::PreLn));
    let mut t = Trainer::new(&mc, train_cfg(10)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let files = RunFiles::in_dir(dir.path());
    let stop = AtomicBool::new(false);
    t.run(&d, 2, &stop, &files, &mut |_| {}).unwrap();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let out = t.run(&d, 10, &stop, &files, &mut |_| {}).unwrap();
    assert_eq!(out, Outcome::Interrupted);
    assert_eq!(t.step(), 2);
    assert!(files.checkpoint.is_file());
    // No temporary file is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty());
    // A checkpoint of another optimizer is refused with a clear message.
    let mut cfg = train_cfg(10);
    cfg.optimizer = OptimizerConfig::Sgd {
        momentum: 0.9,
        weight_decay: 0.0,
    };
    let mut s = Trainer::new(&mc, cfg).unwrap();
    let e = s.resume(&files.checkpoint).unwrap_err().to_string();
    assert!(e.contains("optimizer"), "{e}");
}
