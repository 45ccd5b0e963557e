//! DistilBERT (Sanh et al., 2019, paper 7): a student BERT with half the teacher's layers, the
//! teacher's hidden size, no token types and no pooler, initialised from the teacher (embeddings,
//! MLM head, one layer out of two), trained with the triple loss
//!
//!   `L = α_ce·L_ce + α_mlm·L_mlm + α_cos·L_cos`
//!   `L_ce  = T² · (1/n) Σ_rows KL(softmax(z_t/T) ‖ softmax(z_s/T))` (HF `KLDivLoss(batchmean)`·T²),
//!           over every non-pad position, or only the masked ones with `restrict_ce_to_mask`;
//!   `L_mlm` = the student's masked-LM cross-entropy at T = 1;
//!   `L_cos = mean(1 − cos(h_s, h_t))` over the non-pad positions of the last hidden layer
//!           (PyTorch's `CosineEmbeddingLoss` with target +1).
//!
//! The T² factor keeps the soft-target gradient, `T·(softmax(z_s/T) − softmax(z_t/T))/n`, on the
//! scale of the hard-label one as T changes (Hinton et al., 2015). Defaults are the reference
//! `train.py`'s: T = 2, α = (5, 2, 1). Data: single segments `[CLS] text [SEP]`, dynamic masking
//! (a new mask every batch), no NSP. Deviation: masked positions are drawn uniformly, not with the
//! reference's `count^-0.7` token smoothing.
//!
//! The teacher is frozen: its weights are detached, so it runs the fast inference encoder.

use std::time::Instant;

use candle_core::{D, DType, Tensor};
use canon_models::bert_heads::{BertPretraining, gather_rows};
use canon_models::source::WeightSource;
use canon_models::{BertConfig, Encoder, ModelError, VarStore};
use canon_nn::ops::argmax_rows;
use canon_nn::{IGNORE_INDEX, SplitMix64, masked_cross_entropy};

use crate::bert_data::{MlmBatch, PairConfig, SentenceData, Specials, collate, draw_example};
use crate::bert_pretrain::{MicroBatch, batch_tensors};
use crate::engine::{BatchLoss, Objective};
use crate::objectives::mlm::MlmConfig;
use crate::{Result, TrainError};

/// `softmax(z / T)` over the last dimension (composed, records a backward pass).
pub fn softmax_t(z: &Tensor, t: f64) -> Result<Tensor> {
    Ok(log_softmax_t(z, t)?.exp()?)
}

/// `log softmax(z / T)` over the last dimension, stabilised by the (detached) row maximum.
pub fn log_softmax_t(z: &Tensor, t: f64) -> Result<Tensor> {
    let s = (z / t)?;
    let m = s.max_keepdim(D::Minus1)?.detach();
    let s = s.broadcast_sub(&m)?;
    let lse = s.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(s.broadcast_sub(&lse)?)
}

/// `T² · (1/n) Σ_rows KL(softmax(z_t/T) ‖ softmax(z_s/T))` for `z_s, z_t: [n, V]`; the teacher's
/// logits are treated as constants.
pub fn soft_target_loss(zs: &Tensor, zt: &Tensor, t: f64) -> Result<Tensor> {
    if zs.dims() != zt.dims() || zs.rank() != 2 {
        return Err(TrainError::Data(format!(
            "student logits {:?} and teacher logits {:?} must be the same [n, V]",
            zs.dims(),
            zt.dims()
        )));
    }
    if !(t > 0.0 && t.is_finite()) {
        return Err(TrainError::Data(format!(
            "the temperature must be positive, found {t}"
        )));
    }
    let n = zs.dim(0)?.max(1) as f64;
    let lt = log_softmax_t(&zt.detach(), t)?;
    let pt = lt.exp()?;
    let ls = log_softmax_t(zs, t)?;
    let kl = (pt * (lt - ls)?)?.sum_all()?;
    Ok((kl * (t * t / n))?)
}

/// `mean_rows (1 − cos(h_s, h_t))` for `[n, d]` states (the teacher's treated as constants).
pub fn cosine_loss(hs: &Tensor, ht: &Tensor) -> Result<Tensor> {
    if hs.dims() != ht.dims() || hs.rank() != 2 {
        return Err(TrainError::Data(format!(
            "student states {:?} and teacher states {:?} must be the same [n, d]",
            hs.dims(),
            ht.dims()
        )));
    }
    let ht = ht.detach();
    let dot = (hs * &ht)?.sum(D::Minus1)?;
    let ns = hs.sqr()?.sum(D::Minus1)?.sqrt()?;
    let nt = ht.sqr()?.sum(D::Minus1)?.sqrt()?;
    // PyTorch's CosineSimilarity clamps the norms' product at ε = 1e-8.
    let cos = (dot / (ns * nt)?.clamp(1e-8, f64::MAX)?)?;
    Ok(cos.affine(-1.0, 1.0)?.mean_all()?)
}

/// The triple loss's weights and temperature (reference defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DistillWeights {
    pub temperature: f64,
    pub alpha_ce: f64,
    pub alpha_mlm: f64,
    pub alpha_cos: f64,
    pub restrict_ce_to_mask: bool,
}

impl Default for DistillWeights {
    fn default() -> Self {
        Self {
            temperature: 2.0,
            alpha_ce: 5.0,
            alpha_mlm: 2.0,
            alpha_cos: 1.0,
            restrict_ce_to_mask: false,
        }
    }
}

impl DistillWeights {
    pub fn validate(&self) -> std::result::Result<(), String> {
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return Err(format!(
                "distill.temperature must be positive, found {}",
                self.temperature
            ));
        }
        let a = [self.alpha_ce, self.alpha_mlm, self.alpha_cos];
        if a.iter().any(|x| *x < 0.0 || !x.is_finite()) || a.iter().all(|x| *x == 0.0) {
            return Err(format!(
                "distill.alpha_ce/alpha_mlm/alpha_cos must be ≥ 0 and not all 0, found {a:?}"
            ));
        }
        Ok(())
    }
}

/// Teacher layers the student's layers start from: one out of two (`[0, 2, 4, …]`), except the
/// reference extraction's map for 12 → 6, `[0, 2, 4, 7, 9, 11]`.
pub fn layer_map(
    teacher_layers: usize,
    student_layers: usize,
) -> std::result::Result<Vec<usize>, String> {
    if student_layers == 0 || student_layers > teacher_layers {
        return Err(format!(
            "a student of {student_layers} layers cannot start from a teacher of {teacher_layers}"
        ));
    }
    if (teacher_layers, student_layers) == (12, 6) {
        return Ok(vec![0, 2, 4, 7, 9, 11]);
    }
    let step = teacher_layers / student_layers;
    Ok((0..student_layers).map(|i| i * step).collect())
}

/// The student's config: the teacher's with `layers` layers and a single token type.
pub fn student_config(teacher: &BertConfig, layers: usize) -> BertConfig {
    BertConfig {
        num_hidden_layers: layers,
        type_vocab_size: 1,
        ..teacher.clone()
    }
}

/// Copies the teacher's embeddings (row 0 of its token-type table: the student has no token
/// types, so that row is a constant added at every position), its MLM head and layer `map[j]` into
/// student layer `j`. Every student variable must be covered. Returns `(student, teacher)` names.
pub fn init_student(
    teacher: &dyn WeightSource,
    student: &VarStore,
    map: &[usize],
) -> Result<Vec<(String, String)>> {
    let mut copied = Vec::new();
    for (name, var, _) in student.vars() {
        let from = match name.strip_prefix("encoder.layer.") {
            Some(rest) => {
                let (j, tail) = rest.split_once('.').ok_or_else(|| bad_name(&name))?;
                let j: usize = j.parse().map_err(|_| bad_name(&name))?;
                let i = map.get(j).ok_or_else(|| {
                    TrainError::Data(format!("no teacher layer for student layer {j}"))
                })?;
                format!("encoder.layer.{i}.{tail}")
            }
            None => name.clone(),
        };
        let t = if name == "embeddings.token_type_embeddings.weight" {
            let d = var.dim(1)?;
            let full = teacher.tensor(&from, &[teacher_types(teacher, d)?, d])?;
            full.narrow(0, 0, 1)?
        } else {
            teacher.tensor(&from, var.dims())?
        };
        var.set(&t.detach().contiguous()?)?;
        copied.push((name, from));
    }
    Ok(copied)
}

fn bad_name(name: &str) -> TrainError {
    TrainError::Data(format!("unexpected parameter name '{name}'"))
}

/// The number of token types the teacher has (1 or 2).
fn teacher_types(teacher: &dyn WeightSource, d: usize) -> Result<usize> {
    for n in [2, 1] {
        if teacher
            .tensor("embeddings.token_type_embeddings.weight", &[n, d])
            .is_ok()
        {
            return Ok(n);
        }
    }
    Err(TrainError::Model(ModelError::MissingTensor {
        file: teacher.describe(),
        name: "embeddings.token_type_embeddings.weight".into(),
    }))
}

/// The teacher's weights, detached (no gradients: the fast inference path).
pub use canon_models::source::Detached as Frozen;

/// The three terms of one batch.
#[derive(Debug, Clone)]
pub struct TripleLoss {
    pub total: Tensor,
    pub ce: f64,
    pub mlm: f64,
    pub cos: f64,
    pub mlm_predicted: usize,
    pub mlm_correct: usize,
}

/// Non-pad flat positions of a batch.
fn real_rows(b: &MlmBatch) -> Vec<u32> {
    (0..b.b * b.t)
        .filter(|&i| b.mask[i] > 0.0)
        .map(|i| i as u32)
        .collect()
}

/// The teacher's logits at `rows` and last hidden states at the non-pad rows.
pub struct TeacherOut {
    pub logits: Tensor,
    pub hidden: Tensor,
}

fn teacher_out(teacher: &BertPretraining, b: &MlmBatch, ce_rows: &[u32]) -> Result<TeacherOut> {
    let (ids, _, mask) = batch_tensors(b)?;
    let h = Encoder::forward(&teacher.bert, &ids, None, &mask)?;
    Ok(TeacherOut {
        logits: teacher.mlm.forward(&gather_rows(&h, ce_rows)?)?.detach(),
        hidden: gather_rows(&h, &real_rows(b))?.detach(),
    })
}

/// The rows the soft-target loss covers and the MLM label at each.
fn ce_rows(b: &MlmBatch, restrict: bool) -> (Vec<u32>, Vec<i64>) {
    if restrict {
        return (b.rows.clone(), b.labels.clone());
    }
    let mut label = vec![IGNORE_INDEX; b.b * b.t];
    for (&r, &l) in b.rows.iter().zip(&b.labels) {
        label[r as usize] = l;
    }
    let rows = real_rows(b);
    let labels = rows.iter().map(|&r| label[r as usize]).collect();
    (rows, labels)
}

/// The triple loss of `student` against `teacher` on `b`.
pub fn triple_loss(
    student: &BertPretraining,
    teacher: &BertPretraining,
    b: &MlmBatch,
    w: &DistillWeights,
) -> Result<TripleLoss> {
    let (rows, labels) = ce_rows(b, w.restrict_ce_to_mask);
    let t = teacher_out(teacher, b, &rows)?;
    let (ids, _, mask) = batch_tensors(b)?;
    let out = student.forward(&ids, None, &mask, &rows)?;
    let ce = soft_target_loss(&out.mlm_logits, &t.logits, w.temperature)?;
    let (mlm, k) = masked_cross_entropy(&out.mlm_logits, &labels, 0.0)?;
    let hs = gather_rows(&out.hidden, &real_rows(b))?;
    let cos = cosine_loss(&hs, &t.hidden)?;
    let mlm_correct = argmax_rows(&out.mlm_logits)?
        .iter()
        .zip(&labels)
        .filter(|(p, l)| **l != IGNORE_INDEX && **p as i64 == **l)
        .count();
    let total = ((&ce * w.alpha_ce)? + (&mlm * w.alpha_mlm)?)?;
    let total = (total + (&cos * w.alpha_cos)?)?;
    let f = |x: &Tensor| -> Result<f64> { Ok(x.to_dtype(DType::F64)?.to_scalar::<f64>()?) };
    Ok(TripleLoss {
        ce: f(&ce)?,
        mlm: f(&mlm)?,
        cos: f(&cos)?,
        total,
        mlm_predicted: k,
        mlm_correct,
    })
}

/// The distillation objective.
pub struct Distill {
    pub student: BertPretraining,
    /// The student's variables (a frozen copy of them measures its inference speed).
    pub store: VarStore,
    pub teacher: BertPretraining,
    pub data: SentenceData,
    pub specials: Specials,
    pub weights: DistillWeights,
    pub segments: PairConfig,
    pub mlm: MlmConfig,
    pub batch_size: usize,
    eval: Vec<MlmBatch>,
    /// The teacher's held-out MLM loss and accuracy on the same batches (computed once).
    teacher_eval: (f64, f64),
}

/// MLM loss (weighted by predictions) and accuracy of a model with its own head on `batches`.
fn mlm_eval(model: &BertPretraining, batches: &[MlmBatch], fast: bool) -> Result<(f64, f64)> {
    let (mut sum, mut k, mut right) = (0.0, 0usize, 0usize);
    for b in batches {
        let (ids, _, mask) = batch_tensors(b)?;
        let h = if fast {
            Encoder::forward(&model.bert, &ids, None, &mask)?
        } else {
            model.bert.forward_composed(&ids, None, &mask)?
        };
        let z = model.mlm.forward(&gather_rows(&h, &b.rows)?)?;
        let (l, n) = masked_cross_entropy(&z, &b.labels, 0.0)?;
        sum += l.to_scalar::<f32>()? as f64 * n as f64;
        k += n;
        right += argmax_rows(&z)?
            .iter()
            .zip(&b.labels)
            .filter(|(p, l)| **p as i64 == **l)
            .count();
    }
    Ok((sum / k.max(1) as f64, right as f64 / k.max(1) as f64))
}

/// Real tokens per second of the encoder's inference pass over `batches` (best of 2 passes).
pub fn encoder_tokens_per_s(bert: &canon_models::Bert, batches: &[MlmBatch]) -> Result<f64> {
    let tokens: usize = batches.iter().map(|b| b.tokens).sum();
    let mut best = f64::MAX;
    for _ in 0..2 {
        let t0 = Instant::now();
        for b in batches {
            let (ids, _, mask) = batch_tensors(b)?;
            Encoder::forward(bert, &ids, None, &mask)?;
        }
        best = best.min(t0.elapsed().as_secs_f64());
    }
    Ok(tokens as f64 / best.max(1e-9))
}

impl Distill {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        student: BertPretraining,
        store: VarStore,
        teacher: BertPretraining,
        data: SentenceData,
        specials: Specials,
        weights: DistillWeights,
        max_len: usize,
        batch_size: usize,
        eval_batches: usize,
        eval_seed: u64,
    ) -> Result<Self> {
        weights.validate().map_err(TrainError::Data)?;
        if batch_size == 0 {
            return Err(TrainError::Data("train.batch_size must be positive".into()));
        }
        let (sv, tv) = (
            student.bert.config.vocab_size,
            teacher.bert.config.vocab_size,
        );
        if sv != tv || student.bert.config.hidden_size != teacher.bert.config.hidden_size {
            return Err(TrainError::Data(format!(
                "student (vocab {sv}, width {}) and teacher (vocab {tv}, width {}) must share vocabulary and width",
                student.bert.config.hidden_size, teacher.bert.config.hidden_size
            )));
        }
        let segments = PairConfig {
            max_len,
            short_seq_prob: 0.0,
            pairs: false,
        };
        let mlm = MlmConfig::default();
        let mut rng = SplitMix64::new(eval_seed);
        let mut eval = Vec::new();
        for _ in 0..eval_batches.max(1) {
            let ex = (0..batch_size)
                .map(|_| draw_example(&data.val, &specials, &segments, &mut rng))
                .collect::<Result<Vec<_>>>()?;
            eval.push(collate(&ex, &specials, sv, &mlm, &mut rng));
        }
        let teacher_eval = mlm_eval(&teacher, &eval, true)?;
        Ok(Self {
            student,
            store,
            teacher,
            data,
            specials,
            weights,
            segments,
            mlm,
            batch_size,
            eval,
            teacher_eval,
        })
    }

    pub fn draw_batch(&self, rng: &mut SplitMix64) -> Result<MlmBatch> {
        let ex = (0..self.batch_size)
            .map(|_| draw_example(&self.data.train, &self.specials, &self.segments, rng))
            .collect::<Result<Vec<_>>>()?;
        Ok(collate(
            &ex,
            &self.specials,
            self.student.bert.config.vocab_size,
            &self.mlm,
            rng,
        ))
    }

    /// Training micro-batch: loss = the weighted triple loss; extras `ce_loss`, `mlm_loss`,
    /// `cos_loss`.
    pub fn micro_batch(&mut self, rng: &mut SplitMix64) -> Result<MicroBatch> {
        let b = self.draw_batch(rng)?;
        let l = triple_loss(&self.student, &self.teacher, &b, &self.weights)?;
        let w = &self.weights;
        Ok(MicroBatch {
            loss: w.alpha_ce * l.ce + w.alpha_mlm * l.mlm + w.alpha_cos * l.cos,
            total: l.total,
            tokens: b.tokens,
            extra: vec![
                ("ce_loss".into(), l.ce),
                ("mlm_loss".into(), l.mlm),
                ("cos_loss".into(), l.cos),
            ],
        })
    }

    /// Held-out: `eval_loss` (the student's MLM cross-entropy, comparable with the teacher's),
    /// `eval_mlm_accuracy`, `eval_ce_loss`, `eval_cos_loss`, `eval_triple_loss`, the teacher's
    /// `eval_teacher_mlm_loss` / `eval_teacher_mlm_accuracy` on the same batches, and both
    /// encoders' inference speed in tokens/s.
    pub fn eval_metrics(&self) -> Result<Vec<(String, f64)>> {
        let (mut ce, mut cos, mut mlm, mut k, mut right) = (0.0, 0.0, 0.0, 0usize, 0usize);
        for b in &self.eval {
            let l = triple_loss(&self.student, &self.teacher, b, &self.weights)?;
            ce += l.ce;
            cos += l.cos;
            // MLM over masked positions only (the same rows whatever restrict_ce_to_mask says).
            mlm += l.mlm * l.mlm_predicted as f64;
            k += l.mlm_predicted;
            right += l.mlm_correct;
        }
        let n = self.eval.len() as f64;
        let (ce, cos, mlm) = (ce / n, cos / n, mlm / k.max(1) as f64);
        let w = &self.weights;
        let frozen =
            canon_models::Bert::load(self.student.bert.config.clone(), &Frozen(&self.store));
        let mut out = vec![
            ("eval_loss".to_string(), mlm),
            ("eval_mlm_accuracy".into(), right as f64 / k.max(1) as f64),
            ("eval_ce_loss".into(), ce),
            ("eval_cos_loss".into(), cos),
            (
                "eval_triple_loss".into(),
                w.alpha_ce * ce + w.alpha_mlm * mlm + w.alpha_cos * cos,
            ),
            ("eval_teacher_mlm_loss".into(), self.teacher_eval.0),
            ("eval_teacher_mlm_accuracy".into(), self.teacher_eval.1),
        ];
        if let Ok(student) = frozen {
            out.push((
                "eval_student_tokens_per_s".into(),
                encoder_tokens_per_s(&student, &self.eval)?,
            ));
            out.push((
                "eval_teacher_tokens_per_s".into(),
                encoder_tokens_per_s(&self.teacher.bert, &self.eval)?,
            ));
        }
        Ok(out)
    }
}

impl Objective for Distill {
    fn train_batch(&mut self, rng: &mut SplitMix64, _index: u64) -> Result<BatchLoss> {
        let m = self.micro_batch(rng)?;
        Ok(BatchLoss {
            total: m.total,
            loss: m.loss,
            tokens: m.tokens,
            extra: m.extra,
        })
    }

    fn evaluate(&mut self) -> Result<Vec<(String, f64)>> {
        self.eval_metrics()
    }
}

#[cfg(test)]
#[path = "distill_tests.rs"]
mod tests;
