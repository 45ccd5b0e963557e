//! RAG's end-to-end fine-tuning (Lewis et al., 2020, paper 9, §2.4; `canon finetune --method
//! rag`): the query encoder and the generator are trained together through the marginal
//! likelihood of the reference answer over the top-k retrieved passages, with the document
//! encoder and the index frozen, as the paper does.
//!
//! Per training question x with answer y: the query encoder (MiniLM, every weight trained) embeds x
//! with its graph; the top k passages z are retrieved from the frozen index by that vector; the
//! prior is `p(z|x) = softmax_z(scale · d(z)·q(x))` with the stored document vectors as constants;
//! the generator (a causal LM with LoRA adapters) scores y after each passage's prompt, the prompt
//! `canon ask --rag` decodes from; the loss is RAG-Sequence's `−log Σ_z p(z|x) Π_i p(y_i|x,z,y<i)`
//! or RAG-Token's `−Σ_i log Σ_z p(z|x) p(y_i|x,z,y<i)`. One backward pass reaches both models.
//! The query encoder and the adapters are separate parameter groups (their own learning rates).
//!
//! Held-out evaluation, before training and at the end ([`evaluate_answers`]): recall@1/5 of the
//! source page with the current query encoder, and the answer produced by RAG-Token greedy
//! decoding (exact match and containment of the reference or an alias).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use canon_models::bert::Bert;
use canon_models::bert_heads::{bert_init_policy, copy_into};
use canon_models::sentence::Pooling;
use canon_models::{LoadedEncoder, ModelSpec, Positions, VarStore, WeightMode};
use canon_nn::SplitMix64;
use canon_rag::answer::Answerer;
use canon_rag::e2e;
use canon_rag::eval::Question;
use canon_rag::index::Index;
use canon_train::engine::{BatchLoss, Objective};
use canon_train::optim::Param;
use canon_train::sft::lora::{LoraSet, LoraSpec, attach};
use serde::{Deserialize, Serialize};

use crate::{Context, Result, bail};

mod eval;
pub mod opts;
mod run;

pub use eval::{AnswerEval, evaluate_answers};
pub use run::{RagEvent, RagJob, RagSummary, run};

/// Which of the paper's two models the loss is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RagLoss {
    Sequence,
    Token,
}

impl std::str::FromStr for RagLoss {
    type Err = crate::RunError;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "sequence" => RagLoss::Sequence,
            "token" => RagLoss::Token,
            o => bail!("expected --rag-loss sequence or token, found '{o}'"),
        })
    }
}

/// The settings of a run, written to `rag.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RagSettings {
    pub index: PathBuf,
    /// Training questions (JSON lines of `canon eval rag`'s question format).
    pub data: PathBuf,
    /// Held-out questions.
    pub eval_data: PathBuf,
    /// The generator.
    pub model: String,
    /// The query encoder to start from (default: the index's embedding model).
    pub query_encoder: String,
    /// Passages retrieved per question.
    pub k: usize,
    /// Inverse temperature of the retrieval scores.
    pub scale: f64,
    pub loss: RagLoss,
    pub rank: usize,
    pub alpha: f64,
    pub targets: Vec<String>,
    /// Learning rate of the generator's adapters.
    pub lr: f64,
    /// Learning rate of the query encoder (0: frozen).
    pub query_lr: f64,
    /// Questions per step.
    pub batch_size: usize,
    pub seed: u64,
}

impl RagSettings {
    pub fn check(&self) -> Result<()> {
        if self.k == 0 || self.k > 32 {
            bail!("--k: expected between 1 and 32 passages, found {}", self.k);
        }
        if !(self.scale > 0.0 && self.scale.is_finite()) {
            bail!("--scale: expected a positive number, found {}", self.scale);
        }
        if self.rank == 0 {
            bail!("--rank 0: a LoRA rank must be at least 1");
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            bail!("--lr: expected a positive learning rate, found {}", self.lr);
        }
        if !(self.query_lr >= 0.0 && self.query_lr.is_finite()) {
            bail!(
                "--query-lr: expected a learning rate of 0 (frozen) or more, found {}",
                self.query_lr
            );
        }
        if self.batch_size == 0 {
            bail!("--batch-size: expected at least 1 question a step");
        }
        Ok(())
    }
}

/// MiniLM (or any BERT sentence encoder) with trainable weights: the same pooling and
/// normalisation as its inference embedder, through the composed (differentiable) layers.
pub struct QueryEncoder {
    pub bert: Bert,
    pub store: VarStore,
    /// The inference embedder of the same folder: its tokenizer, pooling and normalisation.
    pub enc: LoadedEncoder,
}

impl QueryEncoder {
    pub fn load(spec: &str, progress: &dyn canon_assets::FetchProgress) -> Result<Self> {
        let enc = canon_models::load_encoder(&ModelSpec::parse(spec)?, progress)
            .with_context(|| format!("cannot load the query encoder '{spec}'"))?;
        let pre = canon_train::bert_pretrain::open_pretrained(&enc.path)
            .with_context(|| format!("cannot open {} as a BERT folder", enc.path.display()))?;
        let store = VarStore::new_random(1, bert_init_policy(0.02));
        let bert = Bert::load(pre.config.clone(), &store)?;
        let (_, kept) = copy_into(&store, &*pre.weights)?;
        if !kept.is_empty() {
            bail!(
                "{}: the encoder's weights lack {} tensors (e.g. '{}')",
                enc.path.display(),
                kept.len(),
                kept[0]
            );
        }
        Ok(QueryEncoder { bert, store, enc })
    }

    /// The query vector `[d]`, pooled and normalised as the embedder does, with its graph.
    pub fn embed(&self, text: &str) -> Result<Tensor> {
        let e = &self.enc.embedder;
        let ids = e.token_ids(text)?;
        let t = ids.len();
        let dev = &Device::Cpu;
        let idt = Tensor::from_vec(ids, (1, t), dev)?;
        let mask = Tensor::ones((1, t), DType::F32, dev)?;
        let h = self.bert.forward_composed(&idt, None, &mask)?.squeeze(0)?; // [t, d]
        let pooled = match e.pooling {
            Pooling::Mean => h.mean(0)?,
            Pooling::Cls => h.get(0)?,
        };
        Ok(if e.normalize {
            pooled.broadcast_div(&pooled.sqr()?.sum_keepdim(0)?.sqrt()?)?
        } else {
            pooled
        })
    }

    pub fn params(&self) -> Vec<Param> {
        canon_train::Engine::params_of(&self.store)
    }

    /// Writes the encoder as a folder `canon index` / `canon ask --query-encoder` load like the
    /// original: its files copied, `model.safetensors` replaced by the trained weights.
    /// `scale` is recorded beside the weights ([`canon_rag::answer::PRIOR_FILE`]) so that
    /// `canon ask --query-encoder` computes the prior the encoder was trained with.
    pub fn save(&self, out: &Path, scale: f64) -> Result<()> {
        let src = &self.enc.path;
        let tmp = out.with_extension("tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)
                .with_context(|| format!("cannot clear {}", tmp.display()))?;
        }
        copy_dir(src, &tmp, &|p| {
            p.file_name().is_some_and(|n| n == "model.safetensors")
        })?;
        let tensors: std::collections::HashMap<String, Tensor> = self
            .store
            .vars()
            .into_iter()
            .map(|(n, v, _)| (n, v.as_tensor().clone()))
            .collect();
        candle_core::safetensors::save(&tensors, tmp.join("model.safetensors"))?;
        write_json(
            &tmp.join(canon_rag::answer::PRIOR_FILE),
            &serde_json::json!({ "scale": scale }),
        )?;
        if out.exists() {
            std::fs::remove_dir_all(out)
                .with_context(|| format!("cannot replace {}", out.display()))?;
        }
        std::fs::rename(&tmp, out).with_context(|| format!("cannot write {}", out.display()))?;
        Ok(())
    }
}

fn copy_dir(src: &Path, dst: &Path, skip: &dyn Fn(&Path) -> bool) -> Result<()> {
    std::fs::create_dir_all(dst).with_context(|| format!("cannot create {}", dst.display()))?;
    for e in std::fs::read_dir(src).with_context(|| format!("cannot read {}", src.display()))? {
        let p = e?.path();
        if skip(&p) {
            continue;
        }
        let to = dst.join(p.file_name().unwrap_or_default());
        if p.is_dir() {
            copy_dir(&p, &to, skip)?;
        } else {
            std::fs::copy(&p, &to).with_context(|| format!("cannot copy {}", p.display()))?;
        }
    }
    Ok(())
}

/// Reads a question file of `canon eval rag`'s format.
pub fn read_questions(path: &Path) -> Result<Vec<Question>> {
    let text = canon_fs::lines::read_text(path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    canon_rag::eval::read_questions(&text, &path.display().to_string())
        .with_context(|| format!("{}", path.display()))
}

/// The training objective: one question's marginal likelihood over its retrieved passages.
pub struct RagObjective {
    pub query: QueryEncoder,
    pub ans: Answerer,
    pub lora: LoraSet,
    pub index: Index,
    pub train: Vec<Question>,
    pub eval: Vec<Question>,
    pub settings: RagSettings,
    /// Held-out questions scored by `evaluate` (its marginal NLL; 0 = all).
    pub eval_questions: usize,
}

/// One question's loss and what it touched.
pub struct QuestionLoss {
    pub nll: Tensor,
    /// Generator tokens processed.
    pub tokens: usize,
    /// The retrieved passages' ids, best first.
    pub passages: Vec<usize>,
}

impl RagObjective {
    /// Top-k passage ids for a query vector (exact search, as the paper's MIPS over the index).
    pub fn retrieve(&self, q: &[f32]) -> Vec<usize> {
        self.index
            .dense(q, self.settings.k, true)
            .into_iter()
            .map(|x| x.0)
            .collect()
    }

    /// The prompt ids of passage `id` for `question` (`canon ask --rag`'s prompt).
    pub fn prompt_ids(&self, id: usize, question: &str) -> Result<Vec<u32>> {
        let user = e2e::passage_message(&self.index.chunks[id], question);
        let text = self
            .ans
            .render(&user)
            .context("cannot render the passage prompt")?;
        self.ans
            .lm
            .lm
            .tokenizer
            .encode(&text, true)
            .context("cannot tokenize the passage prompt")
    }

    /// The answer's target tokens: its text, then the end of the turn.
    pub fn target_ids(&self, answer: &str) -> Result<Vec<u32>> {
        let tok = &self.ans.lm.lm.tokenizer;
        let mut ids = tok
            .encode(answer.trim(), false)
            .context("cannot tokenize the answer")?;
        ids.extend(tok.eos_id.or_else(|| tok.eog_ids.first().copied()));
        if ids.is_empty() {
            bail!("expected an answer with at least one token, found '{answer}'");
        }
        Ok(ids)
    }

    /// `log p(z|x)` `[k]` (with the query encoder's graph) and the passages.
    pub fn prior(&self, question: &str) -> Result<(Tensor, Vec<usize>)> {
        let q = self.query.embed(question)?;
        let qv = q.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let ids = self.retrieve(&qv);
        if ids.is_empty() {
            bail!("the index returned no passages");
        }
        let d = self.index.meta.dim;
        let mut flat = Vec::with_capacity(ids.len() * d);
        for &i in &ids {
            flat.extend_from_slice(self.index.vector(i));
        }
        let docs = Tensor::from_vec(flat, (ids.len(), d), &Device::Cpu)?;
        let lp = e2e::log_prior(&e2e::scores(&docs, &q, self.settings.scale)?)?;
        Ok((lp, ids))
    }

    /// The question's negative marginal log-likelihood with the graph of both models.
    pub fn question_loss(&self, q: &Question) -> Result<QuestionLoss> {
        let (lprior, ids) = self.prior(&q.question)?;
        let target = self.target_ids(&q.answer)?;
        let n = target.len();
        let lm = self.ans.lm.lm.model.as_ref();
        let max = lm.max_seq_len();
        // The k passage prompts with the answer, right-padded into one batch (padding after a
        // sequence cannot change its causal logits).
        let mut seqs = Vec::with_capacity(ids.len());
        let mut starts = Vec::with_capacity(ids.len());
        for &id in &ids {
            let mut seq = self.prompt_ids(id, &q.question)?;
            starts.push(seq.len());
            seq.extend_from_slice(&target);
            if seq.len() > max {
                bail!(
                    "question '{}': a passage prompt with its answer takes {} tokens, more than the model's {max}",
                    q.id,
                    seq.len()
                );
            }
            seqs.push(seq);
        }
        let tokens: usize = seqs.iter().map(Vec::len).sum();
        let tok = &self.ans.lm.lm.tokenizer;
        let pad = tok.pad_id.or(tok.eos_id).unwrap_or(0);
        let width = seqs.iter().map(Vec::len).max().unwrap_or(0);
        let mut flat = Vec::with_capacity(seqs.len() * width);
        for s in &seqs {
            flat.extend_from_slice(s);
            flat.extend(std::iter::repeat_n(pad, width - s.len()));
        }
        let x = Tensor::from_vec(flat, (seqs.len(), width), &Device::Cpu)?;
        let logits = lm.forward(&x, &mut lm.new_cache(), Positions::All)?;
        let mut rows = Vec::with_capacity(ids.len());
        for (z, &p) in starts.iter().enumerate() {
            // Position p − 1 + i predicts target token i.
            let rows_z = logits.get(z)?.narrow(0, p - 1, n)?;
            rows.push(e2e::token_logprobs(&rows_z, &target)?);
        }
        let lp = Tensor::stack(&rows, 0)?; // [k, n]
        let nll = match self.settings.loss {
            RagLoss::Sequence => e2e::rag_sequence_nll(&lprior, &lp)?,
            RagLoss::Token => e2e::rag_token_nll(&lprior, &lp)?,
        };
        Ok(QuestionLoss {
            nll,
            tokens,
            passages: ids,
        })
    }

    /// The learning-rate multipliers of `params()`: the adapters at 1, the query encoder at
    /// `query_lr / lr`.
    pub fn lr_scales(&self) -> Vec<f64> {
        let mut s = vec![1.0; self.lora.params().len()];
        if self.settings.query_lr > 0.0 {
            s.extend(std::iter::repeat_n(
                self.settings.query_lr / self.settings.lr,
                self.query.params().len(),
            ));
        }
        s
    }

    /// The parameters the engine updates: the adapters, then (unless frozen) the query encoder.
    pub fn params(&self) -> Vec<Param> {
        let mut p = self.lora.params();
        if self.settings.query_lr > 0.0 {
            p.extend(self.query.params());
        }
        p
    }
}

fn write_json(path: &Path, v: &impl Serialize) -> Result<()> {
    canon_fs::write_atomic(path, serde_json::to_string_pretty(v)?.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

fn value(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

impl Objective for RagObjective {
    fn train_batch(&mut self, rng: &mut SplitMix64, _index: u64) -> canon_train::Result<BatchLoss> {
        let mut total: Option<Tensor> = None;
        let (mut sum, mut tokens) = (0.0, 0);
        let bs = self.settings.batch_size;
        for _ in 0..bs {
            let q = &self.train[rng.below(self.train.len())];
            let l = self
                .question_loss(q)
                .map_err(|e| canon_train::TrainError::Data(crate::chain(&e)))?;
            sum += value(&l.nll).map_err(|e| canon_train::TrainError::Data(e.to_string()))?;
            tokens += l.tokens;
            let scaled = (l.nll / bs as f64)?;
            total = Some(match total {
                Some(t) => (t + scaled)?,
                None => scaled,
            });
        }
        let total = total.ok_or_else(|| canon_train::TrainError::Data("empty batch".into()))?;
        Ok(BatchLoss {
            total,
            loss: sum / bs as f64,
            tokens,
            extra: Vec::new(),
        })
    }

    fn evaluate(&mut self) -> canon_train::Result<Vec<(String, f64)>> {
        let n = match self.eval_questions {
            0 => self.eval.len(),
            m => m.min(self.eval.len()),
        };
        self.lora
            .set_tracking(self.ans.lm.lm.model.as_mut(), false)?;
        let r = (|| -> Result<Vec<(String, f64)>> {
            let mut nll = 0.0;
            for q in &self.eval[..n] {
                nll += value(&self.question_loss(q)?.nll)?;
            }
            let rec = self.recall()?;
            Ok(vec![
                ("eval_loss".into(), nll / n.max(1) as f64),
                ("eval_recall_at_1".into(), rec.0),
                ("eval_recall_at_k".into(), rec.1),
            ])
        })();
        self.lora
            .set_tracking(self.ans.lm.lm.model.as_mut(), true)?;
        r.map_err(|e| canon_train::TrainError::Data(crate::chain(&e)))
    }
}

impl RagObjective {
    /// Recall@1 and recall@k of the source page over all held-out questions.
    pub fn recall(&self) -> Result<(f64, f64)> {
        let (mut r1, mut rk) = (0usize, 0usize);
        for q in &self.eval {
            let v = self.query.embed(&q.question)?.detach().to_vec1::<f32>()?;
            let ids = self.retrieve(&v);
            let pages: Vec<&str> = ids
                .iter()
                .map(|&i| self.index.chunks[i].page.as_str())
                .collect();
            r1 += (pages.first() == Some(&q.page.as_str())) as usize;
            rk += pages.contains(&q.page.as_str()) as usize;
        }
        let n = self.eval.len().max(1) as f64;
        Ok((r1 as f64 / n, rk as f64 / n))
    }
}

/// Loads the index, the query encoder, the generator with fresh adapters and the questions.
pub fn prepare(
    s: &RagSettings,
    max_tokens: usize,
    eval_questions: usize,
    progress: &dyn canon_assets::FetchProgress,
) -> Result<RagObjective> {
    s.check()?;
    let index = Index::open(&s.index, None)
        .with_context(|| format!("cannot open the index {}", s.index.display()))?;
    if index.chunks.is_empty() {
        bail!("--index {}: the index holds no passages", s.index.display());
    }
    let query = QueryEncoder::load(&s.query_encoder, progress)?;
    if query.enc.embedder.dim() != index.meta.dim {
        bail!(
            "--query-encoder: expected a {}-wide encoder for this index, found {}",
            index.meta.dim,
            query.enc.embedder.dim()
        );
    }
    let mut lm = canon_models::load_causal_lm(
        &ModelSpec::parse(&s.model)?,
        WeightMode::KeepQuantized,
        progress,
    )
    .with_context(|| format!("cannot load model '{}'", s.model))?;
    let lora = attach(
        lm.model.as_mut(),
        &LoraSpec {
            rank: s.rank,
            alpha: s.alpha,
            targets: s.targets.clone(),
            seed: s.seed,
            dropout: 0.0,
        },
    )?;
    let ans = Answerer::new(lm, None, max_tokens).context("the generator")?;
    let train = read_questions(&s.data)?;
    let eval = read_questions(&s.eval_data)?;
    Ok(RagObjective {
        query,
        ans,
        lora,
        index,
        train,
        eval,
        settings: s.clone(),
        eval_questions,
    })
}

pub const SETTINGS_FILE: &str = "rag.json";
pub const QUERY_ENCODER_DIR: &str = "query-encoder";
pub const ADAPTER_DIR: &str = "adapter";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trainable_query_encoder_embeds_as_the_inference_embedder() {
        let q = QueryEncoder::load("minilm", &canon_assets::Quiet).expect("minilm");
        let texts = [
            "Which option of tar changes to a directory before extracting?",
            "how do I list files sorted by time",
        ];
        for t in texts {
            let a = q.embed(t).unwrap().to_vec1::<f32>().unwrap();
            let mut b = q.enc.embedder.embed(&[t.to_string()], 1).unwrap().remove(0);
            canon_rag::dense::normalize(&mut b);
            canon_testkit::assert_close_f32(&a, &b, canon_testkit::Tol::F32);
        }
    }

    #[test]
    fn settings_are_checked() {
        let s = RagSettings {
            index: "i".into(),
            data: "d".into(),
            eval_data: "e".into(),
            model: "m".into(),
            query_encoder: "minilm".into(),
            k: 4,
            scale: 20.0,
            loss: RagLoss::Sequence,
            rank: 8,
            alpha: 16.0,
            targets: vec!["q_proj".into()],
            lr: 1e-4,
            query_lr: 0.0,
            batch_size: 2,
            seed: 1,
        };
        assert!(s.check().is_ok());
        for (bad, needle) in [
            (RagSettings { k: 0, ..s.clone() }, "--k"),
            (
                RagSettings {
                    scale: 0.0,
                    ..s.clone()
                },
                "--scale",
            ),
            (
                RagSettings {
                    query_lr: -1.0,
                    ..s.clone()
                },
                "--query-lr",
            ),
            (
                RagSettings {
                    batch_size: 0,
                    ..s.clone()
                },
                "--batch-size",
            ),
        ] {
            let e = bad.check().unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
        assert!("token".parse::<RagLoss>().is_ok());
        assert!("both".parse::<RagLoss>().is_err());
    }
}
