//! Weak-to-strong with a fine-tuned strong student (`canon align w2s --student finetune`): the
//! paper's setting, where the whole strong model is trained, instead of [`crate::w2s`]'s linear
//! probe on frozen embeddings.
//!
//! The student is a BERT encoder (all-MiniLM-L6-v2 by default) with EVERY weight trained — word,
//! position and type embeddings, all transformer layers and their layer norms — mean-pooled over
//! the real tokens ([CLS] and [SEP] included) and L2-normalised when the sentence embedder
//! normalises (as [`canon_models::SentenceEmbedder`] does: at step 0 the student sees exactly the
//! probe's features), then a linear head to two classes. Training runs on [`canon_train::Engine`]:
//! AdamW, linear warm-up (10 %) then linear decay, gradient clipping at 1, a few epochs of shuffled
//! minibatches. The gradients come from canon-models' composed BERT forward (no hand-written
//! backward).
//!
//! The head learns at `head_lr` and the encoder at `lr`: the head is stored as `W′ = W / c` with
//! `c = head_lr / lr` and the logits are `c · (W′·h̄ + b′)`, so Adam's per-coordinate steps of
//! size ≈ `lr` on `W′` are steps of ≈ `head_lr` on `W` (one optimizer, one learning rate).
//!
//! Targets per minibatch: the weak supervisor's soft labels (plain cross-entropy), the same mixed
//! with the student's own hardened predictions (the paper's auxiliary confidence loss, with
//! [`crate::losses::logconf_coef`] and [`crate::losses::logconf_targets`] exactly as the probe
//! path uses them), or the gold labels (the ceiling).

use std::path::Path;

use candle_core::{D, Device, Tensor};
use canon_models::bert_heads::{bert_init_policy, copy_into};
use canon_models::source::WeightSource;
use canon_models::{Bert, BertConfig, VarStore};
use canon_nn::SplitMix64;
use canon_train::{BatchLoss, Engine, Objective, OptimizerConfig, Schedule, TrainConfig};

use crate::losses::{logconf_coef, logconf_loss, logconf_targets, pgr};
use crate::w2s::{LogReg, Loss, Task, W2sResult, hashed_trigrams, split};
use crate::{Result, data_err};

/// The head's variable names (MiniLM has no such tensors, so they keep their fresh values).
const HEAD_W: &str = "w2s_head.weight";
const HEAD_B: &str = "w2s_head.bias";

/// The fine-tuning hyper-parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct FtConfig {
    /// Peak learning rate of the encoder.
    pub lr: f64,
    /// Peak learning rate of the linear head.
    pub head_lr: f64,
    pub epochs: usize,
    pub batch_size: usize,
    /// Longest input in tokens, [CLS] and [SEP] included.
    pub max_len: usize,
    pub weight_decay: f64,
    /// The confidence loss's weight after warm-up (the reference's 0.5); its warm-up is 10 %.
    pub aux: f64,
    pub seed: u64,
}

impl Default for FtConfig {
    fn default() -> Self {
        Self {
            lr: 5e-5,
            head_lr: 1e-2,
            epochs: 3,
            batch_size: 16,
            max_len: 32,
            weight_decay: 0.01,
            aux: 0.5,
            seed: 1,
        }
    }
}

impl FtConfig {
    pub fn check(&self) -> Result<()> {
        let ok = |x: f64| x > 0.0 && x.is_finite();
        if !ok(self.lr) || !ok(self.head_lr) {
            return Err(data_err(format!(
                "fine-tuning: learning rates must be positive, found lr {} and head lr {}",
                self.lr, self.head_lr
            )));
        }
        if self.epochs == 0 || self.batch_size == 0 || self.max_len < 3 {
            return Err(data_err(format!(
                "fine-tuning: expected epochs ≥ 1, batch size ≥ 1 and max_len ≥ 3, found {}, {} and {}",
                self.epochs, self.batch_size, self.max_len
            )));
        }
        Ok(())
    }
}

/// The pretrained strong model: its config and weights, how the embedder pools, the pad id.
pub struct Base<'a> {
    pub config: BertConfig,
    pub weights: &'a dyn WeightSource,
    /// Whether the sentence embedder L2-normalises the mean-pooled vector (MiniLM's does).
    pub normalize: bool,
    pub pad_id: u32,
}

/// A fine-tuned student: its own copy of the encoder and the head.
pub struct FtStudent {
    store: VarStore,
    bert: Bert,
    head_w: Tensor,
    head_b: Tensor,
    /// `head_lr / lr` (see the module docs).
    head_scale: f64,
    normalize: bool,
    pad_id: u32,
}

/// `rows` truncated to `max_len` tokens each, the last token (the [SEP]) kept.
pub fn truncate_rows(rows: &[Vec<u32>], max_len: usize) -> Vec<Vec<u32>> {
    rows.iter()
        .map(|r| {
            if r.len() <= max_len || max_len < 2 {
                r.clone()
            } else {
                let mut v = r[..max_len - 1].to_vec();
                v.extend(r.last());
                v
            }
        })
        .collect()
}

/// The targets `[p(0), p(1)]` of one minibatch: the soft labels `soft` (probability of class 1)
/// for [`Loss::Xent`]; for [`Loss::Logconf`], the reference mix with the student's hardened
/// predictions `p1` at `step_frac` of training (weight `aux`, warm-up 10 %).
pub fn batch_targets(
    loss: Loss,
    p1: &[f64],
    soft: &[f64],
    step_frac: f64,
    aux: f64,
) -> Result<Vec<[f64; 2]>> {
    let weak: Vec<[f64; 2]> = soft.iter().map(|&s| [1.0 - s, s]).collect();
    match loss {
        Loss::Xent => Ok(weak),
        Loss::Logconf => {
            let p0: Vec<f64> = p1.iter().map(|p| 1.0 - p).collect();
            logconf_targets(&p0, &weak, logconf_coef(step_frac, aux, 0.1))
        }
    }
}

impl FtStudent {
    /// A fresh student: the base model's weights copied into its own variables, a new head.
    pub fn new(base: &Base, cfg: &FtConfig) -> Result<Self> {
        cfg.check()?;
        if cfg.max_len > base.config.max_position_embeddings {
            return Err(data_err(format!(
                "fine-tuning: max_len {} exceeds the model's {} positions",
                cfg.max_len, base.config.max_position_embeddings
            )));
        }
        let store = VarStore::new_random(cfg.seed, bert_init_policy(0.02));
        let bert = Bert::load(base.config.clone(), &store)?;
        let d = base.config.hidden_size;
        let head_w = store.tensor(HEAD_W, &[2, d])?;
        let head_b = store.tensor(HEAD_B, &[2])?;
        let (copied, kept) = copy_into(&store, base.weights)?;
        if copied.is_empty() || kept.iter().any(|k| k != HEAD_W && k != HEAD_B) {
            return Err(data_err(format!(
                "fine-tuning: the base model ({}) lacks encoder tensors: {}",
                base.weights.describe(),
                kept.join(", ")
            )));
        }
        let head_scale = cfg.head_lr / cfg.lr;
        // The head starts at the encoder's initialisation scale in `W`: W′ = W / c.
        for name in [HEAD_W, HEAD_B] {
            if let Some(v) = store.get(name) {
                v.set(&(v.as_tensor() / head_scale)?)?;
            }
        }
        Ok(Self {
            store,
            bert,
            head_w,
            head_b,
            head_scale,
            normalize: base.normalize,
            pad_id: base.pad_id,
        })
    }

    /// Logits `[b, 2]` of `rows` (token ids, [CLS] … [SEP]), recording a backward pass.
    fn logits(&self, rows: &[&[u32]]) -> Result<Tensor> {
        let b = rows.len();
        let t = rows.iter().map(|r| r.len()).max().unwrap_or(0).max(1);
        let mut ids = vec![self.pad_id; b * t];
        let mut mask = vec![0f32; b * t];
        for (i, r) in rows.iter().enumerate() {
            ids[i * t..i * t + r.len()].copy_from_slice(r);
            mask[i * t..i * t + r.len()].fill(1.0);
        }
        let dev = &Device::Cpu;
        let ids = Tensor::from_vec(ids, (b, t), dev)?;
        let mask = Tensor::from_vec(mask, (b, t), dev)?;
        let h = self.bert.forward_composed(&ids, None, &mask)?; // [b, t, d]
        let sum = h.broadcast_mul(&mask.unsqueeze(2)?)?.sum(1)?; // [b, d]
        let count = mask.sum_keepdim(1)?.clamp(1e-9, f64::MAX)?; // [b, 1]
        let mut pooled = sum.broadcast_div(&count)?;
        if self.normalize {
            let norm = pooled
                .sqr()?
                .sum_keepdim(D::Minus1)?
                .sqrt()?
                .clamp(1e-12, f64::MAX)?;
            pooled = pooled.broadcast_div(&norm)?;
        }
        let z = pooled
            .matmul(&self.head_w.t()?)?
            .broadcast_add(&self.head_b)?;
        Ok((z * self.head_scale)?)
    }

    /// The probability of class 1 for each row (batches of 32, no gradients kept).
    pub fn probs(&self, rows: &[Vec<u32>]) -> Result<Vec<f64>> {
        let mut out = Vec::with_capacity(rows.len());
        for chunk in rows.chunks(32) {
            let refs: Vec<&[u32]> = chunk.iter().map(Vec::as_slice).collect();
            let z = self.logits(&refs)?.detach();
            let z: Vec<Vec<f32>> = z.to_vec2()?;
            out.extend(
                z.iter()
                    .map(|r| 1.0 / (1.0 + (r[0] as f64 - r[1] as f64).exp())),
            );
        }
        Ok(out)
    }

    pub fn accuracy(&self, rows: &[Vec<u32>], labels: &[u8]) -> Result<f64> {
        let predicted: Vec<bool> = self.probs(rows)?.iter().map(|&p| p > 0.5).collect();
        let gold: Vec<bool> = labels.iter().take(rows.len()).map(|&y| y == 1).collect();
        Ok(canon_nn::ops::accuracy(&predicted, &gold))
    }

    /// Fine-tunes on `targets` (probability of class 1 per row) with `loss`; returns the mean
    /// training loss of every optimizer step.
    pub fn train(
        &mut self,
        rows: &[Vec<u32>],
        targets: &[f64],
        loss: Loss,
        cfg: &FtConfig,
    ) -> Result<Vec<f64>> {
        cfg.check()?;
        if rows.is_empty() || rows.len() != targets.len() {
            return Err(data_err(format!(
                "fine-tuning: {} texts for {} targets (expected the same, at least 1)",
                rows.len(),
                targets.len()
            )));
        }
        let per_epoch = rows.len().div_ceil(cfg.batch_size) as u64;
        let steps = per_epoch * cfg.epochs as u64;
        let tc = TrainConfig {
            batch_size: cfg.batch_size,
            block_size: cfg.max_len,
            grad_accum: 1,
            max_steps: steps,
            lr: cfg.lr,
            schedule: Schedule::Linear {
                warmup: steps.div_ceil(10),
            },
            optimizer: OptimizerConfig::AdamW {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: cfg.weight_decay,
            },
            grad_clip: Some(1.0),
            eval_every: steps.max(1),
            eval_batches: 1,
            log_every: steps.max(1),
            checkpoint_every: steps.max(1),
            seed: cfg.seed,
            z_loss: 0.0,
            moe_aux_weight: 0.0,
        };
        let mut engine = Engine::new(Engine::params_of(&self.store), tc)?;
        let mut obj = FtObjective {
            student: self,
            rows,
            targets,
            loss,
            order: Vec::new(),
            batch: cfg.batch_size,
            per_epoch,
            steps,
            aux: cfg.aux,
        };
        let mut losses = Vec::with_capacity(steps as usize);
        for _ in 0..steps {
            losses.push(engine.train_step(&mut obj)?.loss);
        }
        Ok(losses)
    }
}

/// The engine's view of one fine-tuning run.
struct FtObjective<'a> {
    student: &'a FtStudent,
    rows: &'a [Vec<u32>],
    targets: &'a [f64],
    loss: Loss,
    order: Vec<usize>,
    batch: usize,
    per_epoch: u64,
    steps: u64,
    aux: f64,
}

impl Objective for FtObjective<'_> {
    fn train_batch(&mut self, rng: &mut SplitMix64, index: u64) -> Result<BatchLoss> {
        if index.is_multiple_of(self.per_epoch) || self.order.is_empty() {
            self.order = (0..self.rows.len()).collect();
            for i in (1..self.order.len()).rev() {
                self.order.swap(i, rng.below(i + 1));
            }
        }
        let k = (index % self.per_epoch) as usize * self.batch;
        let ii = &self.order[k..(k + self.batch).min(self.order.len())];
        let refs: Vec<&[u32]> = ii.iter().map(|&i| self.rows[i].as_slice()).collect();
        let logits = self.student.logits(&refs)?;
        let z: Vec<Vec<f32>> = logits.detach().to_vec2()?;
        let p1: Vec<f64> = z
            .iter()
            .map(|r| 1.0 / (1.0 + (r[0] as f64 - r[1] as f64).exp()))
            .collect();
        let soft: Vec<f64> = ii.iter().map(|&i| self.targets[i]).collect();
        let frac = index as f64 / self.steps as f64;
        let tg = batch_targets(self.loss, &p1, &soft, frac, self.aux)?;
        let total = logconf_loss(&logits, &tg)?;
        Ok(BatchLoss {
            loss: total.to_scalar::<f32>()? as f64,
            total,
            tokens: refs.iter().map(|r| r.len()).sum(),
            extra: Vec::new(),
        })
    }

    fn evaluate(&mut self) -> Result<Vec<(String, f64)>> {
        Ok(Vec::new())
    }
}

/// The protocol of [`crate::w2s::run_task`] (same splits, same weak model) with fine-tuned
/// students: w2s with cross-entropy, w2s with the confidence loss, and the gold ceiling. The
/// bootstrapping columns are not run here (`NaN`, PGR `None`). `log` receives one line per
/// student trained.
#[allow(clippy::too_many_arguments)] // the probe's run_task arguments plus the student's own
pub fn run_task(
    name: &str,
    weak_x: &[Vec<f32>],
    rows: &[Vec<u32>],
    labels: &[u8],
    seeds: u64,
    base: &Base,
    cfg: &FtConfig,
    log: &mut dyn FnMut(&str),
) -> Result<W2sResult> {
    let n = labels.len();
    if weak_x.len() != n || rows.len() != n {
        return Err(data_err(format!(
            "weak-to-strong: {n} labels but {} weak feature rows and {} token rows",
            weak_x.len(),
            rows.len()
        )));
    }
    let rows = truncate_rows(rows, cfg.max_len);
    let (mut weak, mut wx, mut wl, mut ceil) = (0.0, 0.0, 0.0, 0.0);
    for s in 0..seeds {
        let idx = split(n, s);
        let (a, rest) = idx.split_at(n * 2 / 5);
        let (b, test) = rest.split_at(n * 2 / 5);
        let weak_a: Vec<Vec<f32>> = a.iter().map(|&i| weak_x[i].clone()).collect();
        let gold = |ii: &[usize]| -> Vec<f64> { ii.iter().map(|&i| labels[i] as f64).collect() };
        let test_l: Vec<u8> = test.iter().map(|&i| labels[i]).collect();
        let test_x: Vec<Vec<f32>> = test.iter().map(|&i| weak_x[i].clone()).collect();
        let wm = LogReg::train(&weak_a, &gold(a), Loss::Xent, 20, 0.05, s)?;
        weak += wm.accuracy(&test_x, &test_l);
        let soft: Vec<f64> = b.iter().map(|&i| wm.p(&weak_x[i])).collect();
        let rb: Vec<Vec<u32>> = b.iter().map(|&i| rows[i].clone()).collect();
        let rt: Vec<Vec<u32>> = test.iter().map(|&i| rows[i].clone()).collect();
        let c = FtConfig {
            seed: cfg.seed ^ s,
            ..cfg.clone()
        };
        let mut one = |targets: &[f64], loss: Loss, what: &str| -> Result<f64> {
            let mut st = FtStudent::new(base, &c)?;
            let losses = st.train(&rb, targets, loss, &c)?;
            let acc = st.accuracy(&rt, &test_l)?;
            log(&format!(
                "  {name} seed {s} {what}: {} steps, loss {:.3} -> {:.3}, test accuracy {acc:.3}",
                losses.len(),
                losses.first().copied().unwrap_or(f64::NAN),
                losses.last().copied().unwrap_or(f64::NAN)
            ));
            Ok(acc)
        };
        wx += one(&soft, Loss::Xent, "w2s xent")?;
        wl += one(&soft, Loss::Logconf, "w2s logconf")?;
        ceil += one(&gold(b), Loss::Xent, "ceiling")?;
    }
    let k = seeds.max(1) as f64;
    let (weak, wx, wl, ceil) = (weak / k, wx / k, wl / k, ceil / k);
    Ok(W2sResult {
        task: name.into(),
        texts: n,
        weak,
        w2s_xent: wx,
        w2s_logconf: wl,
        ceiling: ceil,
        pgr_xent: pgr(weak, wx, ceil),
        pgr_logconf: pgr(weak, wl, ceil),
        w2s_logconf_half: f64::NAN,
        w2s_bootstrap: f64::NAN,
        pgr_logconf_half: None,
        pgr_bootstrap: None,
    })
}

/// Token ids of a batch of texts ([CLS] … [SEP]), e.g. from the sentence embedder's tokenizer.
pub type TokenizeFn<'a> = dyn FnMut(&[String]) -> Result<Vec<Vec<u32>>> + 'a;

/// The whole experiment with fine-tuned students: every task, then `w2s.json` and `w2s.png` (PGR
/// per task with and without the confidence loss) in `out`.
pub fn run(
    tasks: &[Task],
    tokenize: &mut TokenizeFn,
    base: &Base,
    cfg: &FtConfig,
    seeds: u64,
    out: &Path,
    log: &mut dyn FnMut(&str),
) -> Result<Vec<W2sResult>> {
    let mut results = Vec::new();
    for t in tasks {
        let weak_x: Vec<Vec<f32>> = t.texts.iter().map(|s| hashed_trigrams(s, 16)).collect();
        let rows = tokenize(&t.texts)?;
        results.push(run_task(
            &t.name, &weak_x, &rows, &t.labels, seeds, base, cfg, log,
        )?);
    }
    crate::w2s::write_report(
        &results,
        out,
        "Weak-to-strong, fine-tuned student: performance gap recovered (PGR)",
        &format!(
            "weak: logistic regression on 16 hashed char-trigram buckets; strong: MiniLM fine-tuned (all weights), {} epochs, lr {:e}, head lr {:e}; mean of {seeds} splits",
            cfg.epochs, cfg.lr, cfg.head_lr
        ),
        false,
    )?;
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;
    use canon_models::bert_heads::BertTrainConfig;
    use canon_nn::Activation;

    fn tiny() -> BertConfig {
        BertTrainConfig {
            vocab_size: 40,
            n_layer: 1,
            n_head: 2,
            d_model: 32,
            d_ff: Some(64),
            max_seq_len: 32,
            type_vocab_size: 2,
            activation: Activation::Gelu,
            layer_norm_eps: 1e-12,
            init_std: 0.02,
        }
        .to_bert()
    }

    /// Rows `[CLS]=1 … [SEP]=2` of 6 random tokens from 10..40; class 1 iff token 7 occurs.
    fn toy(n: usize, seed: u64) -> (Vec<Vec<u32>>, Vec<u8>) {
        let mut rng = SplitMix64::new(seed);
        let mut rows = Vec::new();
        let mut y = Vec::new();
        for i in 0..n {
            let c = (i % 2) as u8;
            let mut r = vec![1u32];
            r.extend((0..6).map(|_| 10 + rng.below(30) as u32));
            if c == 1 {
                r[1 + rng.below(6)] = 7;
            }
            r.push(2);
            rows.push(r);
            y.push(c);
        }
        (rows, y)
    }

    #[test]
    fn a_fine_tuned_student_learns_from_soft_labels_and_moves_its_encoder() {
        let src = VarStore::new_random(9, bert_init_policy(0.02));
        // Materialise the base's encoder tensors (the random store creates them on demand).
        let _ = Bert::load(tiny(), &src).unwrap();
        let base = Base {
            config: tiny(),
            weights: &src,
            normalize: true,
            pad_id: 0,
        };
        let cfg = FtConfig {
            lr: 1e-3,
            head_lr: 1e-2,
            epochs: 8,
            ..Default::default()
        };
        let (rows, y) = toy(160, 3);
        let (test, ty) = toy(80, 4);
        // Soft labels: right but unsure (0.75 / 0.25).
        let soft: Vec<f64> = y.iter().map(|&c| 0.25 + 0.5 * c as f64).collect();
        let mut st = FtStudent::new(&base, &cfg).unwrap();
        let before = st.accuracy(&test, &ty).unwrap();
        let losses = st.train(&rows, &soft, Loss::Xent, &cfg).unwrap();
        let after = st.accuracy(&test, &ty).unwrap();
        let k = losses.len();
        assert_eq!(k, 80);
        let (first, last) = (
            losses[..5].iter().sum::<f64>(),
            losses[k - 5..].iter().sum::<f64>(),
        );
        assert!(last < first, "loss {first} -> {last}");
        assert!(
            after > 0.9 && after > before,
            "accuracy {before} -> {after}"
        );
        // Every encoder tensor moved, not only the head.
        let mut moved = 0;
        let mut total = 0;
        for (name, var, _) in st.store.vars() {
            if name.starts_with("w2s_head") {
                continue;
            }
            total += 1;
            let orig = src.tensor(&name, var.dims()).unwrap();
            let d: f32 = (var.as_tensor() - orig)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar()
                .unwrap();
            if d > 1e-6 {
                moved += 1;
            }
        }
        assert!(total > 10 && moved == total, "{moved} of {total} moved");
        // The confidence loss trains too (less well here: it hardens the tiny model's own early,
        // partly wrong predictions within batches of 16).
        let mut st2 = FtStudent::new(&base, &cfg).unwrap();
        st2.train(&rows, &soft, Loss::Logconf, &cfg).unwrap();
        let acc2 = st2.accuracy(&test, &ty).unwrap();
        assert!(acc2 > 0.6, "confidence-loss accuracy {acc2}");
        // Bad input is named.
        let e = st.train(&rows, &soft[..3], Loss::Xent, &cfg).unwrap_err();
        assert!(e.to_string().contains("targets"), "{e}");
    }

    #[test]
    fn confidence_targets_at_aux_zero_are_the_plain_targets() {
        let p1 = [0.9, 0.2, 0.6, 0.4];
        let soft = [0.7, 0.1, 0.55, 0.3];
        for frac in [0.0, 0.05, 0.5, 1.0] {
            let plain = batch_targets(Loss::Xent, &p1, &soft, frac, 0.5).unwrap();
            let conf0 = batch_targets(Loss::Logconf, &p1, &soft, frac, 0.0).unwrap();
            assert_eq!(plain, conf0);
        }
        // After warm-up with aux 0.5 the targets move halfway to the hardened predictions.
        let c = batch_targets(Loss::Logconf, &p1, &soft, 0.5, 0.5).unwrap();
        assert_ne!(c, batch_targets(Loss::Xent, &p1, &soft, 0.5, 0.5).unwrap());
        assert_eq!(
            truncate_rows(&[vec![1, 5, 6, 7, 2], vec![1, 2]], 4),
            vec![vec![1, 5, 6, 2], vec![1, 2]]
        );
    }
}
