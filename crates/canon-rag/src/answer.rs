//! Answering from an index with a real model: the retriever (index + query encoder), the answerer
//! (a generator with its prompt budget) that writes an answer citing numbered passages, and paper
//! 9's RAG-Sequence / RAG-Token scoring and decoding over the retrieved passages.
//!
//! `canon ask`, `canon eval rag` and `canon ask --graph` are built on these; the binary only loads
//! the models, calls them and prints.

use canon_infer::{GenerateRequest, LmGenerator};
use canon_models::{LoadedEncoder, LoadedLm};
use serde::Serialize;

use crate::ask::{Passage, build_prompt_with, cited};
use crate::index::{Hit, Index, Mode};
use crate::marginal::{SeqDecoding, beams_for_doc, rag_sequence_decode, rag_token_beam};

/// Errors of answering: retrieval, the models, or a request that does not fit.
#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Rag(#[from] crate::RagError),
    #[error(transparent)]
    Model(#[from] canon_models::ModelError),
    #[error(transparent)]
    Infer(#[from] canon_infer::InferError),
    #[error(transparent)]
    Text(#[from] canon_text::TextError),
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    /// The continuation scorer's own error.
    #[error(transparent)]
    Scorer(Box<dyn std::error::Error + Send + Sync>),
}

pub type Result<T> = std::result::Result<T, AnswerError>;

macro_rules! bail {
    ($($t:tt)*) => {
        return Err(AnswerError::Invalid(format!($($t)*)))
    };
}

/// A loaded index with its query encoder (when the mode needs one).
pub struct Retriever {
    pub index: Index,
    enc: Option<canon_models::LoadedEncoder>,
    /// The index's GraphRAG graph, when [`Retriever::with_graph`] found one.
    pub graph: Option<crate::graph_answer::LoadedGraph>,
    /// The inverse temperature of `p(z|x)` over the dense scores: 1, or what an end-to-end
    /// trained query encoder was trained with ([`PRIOR_FILE`] in its folder).
    pub prior_scale: f64,
}

/// The file in a trained query encoder's folder that records its retrieval prior's scale
/// (`{"scale": 20.0}`).
pub const PRIOR_FILE: &str = "rag-prior.json";

/// The prior scale recorded in a query encoder's folder, if it has one.
pub fn prior_scale_of(dir: &std::path::Path) -> Result<Option<f64>> {
    let p = dir.join(PRIOR_FILE);
    if !p.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&p)
        .map_err(|e| AnswerError::Invalid(format!("cannot read {}: {e}", p.display())))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| AnswerError::Invalid(format!("{}: not JSON: {e}", p.display())))?;
    match v["scale"].as_f64() {
        Some(s) if s > 0.0 && s.is_finite() => Ok(Some(s)),
        _ => Err(AnswerError::Invalid(format!(
            "{}: expected {{\"scale\": a positive number}}, found {v}",
            p.display()
        ))),
    }
}

impl Retriever {
    /// An opened index and, for dense or hybrid search, the encoder named in its metadata
    /// (`load_encoder` loads it by that name; it is not called for BM25 alone).
    pub fn open<E>(
        path: &std::path::Path,
        need_dense: bool,
        load_encoder: impl FnOnce(&str) -> std::result::Result<LoadedEncoder, E>,
    ) -> std::result::Result<Self, E>
    where
        E: From<AnswerError>,
    {
        let index = Index::open(path, None).map_err(AnswerError::from)?;
        let enc = if need_dense {
            let enc = load_encoder(&index.meta.model)?;
            if enc.embedder.dim() != index.meta.dim {
                return Err(AnswerError::Invalid(format!(
                    "expected a {}-wide embedding model for this index, found {}",
                    index.meta.dim,
                    enc.embedder.dim()
                ))
                .into());
            }
            Some(enc)
        } else {
            None
        };
        Ok(Retriever {
            index,
            enc,
            graph: None,
            prior_scale: 1.0,
        })
    }

    /// Loads the index's GraphRAG graph (`canon graph build`) when the folder has one; an index
    /// without a graph is returned unchanged, a damaged graph is an error.
    pub fn with_graph(mut self) -> Result<Self> {
        if self.index.path.join(crate::graph::GRAPH_FILE).exists() {
            self.graph = Some(crate::graph_answer::load_graph(&self.index)?);
        }
        Ok(self)
    }

    /// The normalised query embedding.
    pub fn embed(&self, q: &str) -> Result<Option<Vec<f32>>> {
        let Some(enc) = &self.enc else {
            return Ok(None);
        };
        let mut v = enc
            .embedder
            .embed(&[q.to_string()], 1)?
            .into_iter()
            .next()
            .ok_or_else(|| AnswerError::Invalid("no query embedding".into()))?;
        crate::dense::normalize(&mut v);
        Ok(Some(v))
    }

    pub fn search(&self, q: &str, mode: Mode, k: usize) -> Result<Vec<Hit>> {
        let v = if mode == Mode::Bm25 {
            None
        } else {
            self.embed(q)?
        };
        Ok(self.index.search(q, v.as_deref(), mode, k)?)
    }
}

/// A generator with its prompt budget.
pub struct Answerer {
    pub lm: LmGenerator,
    pub budget: usize,
    pub max_tokens: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Answer {
    pub question: String,
    pub answer: String,
    pub citations: Vec<Passage>,
    pub chunks: Vec<Passage>,
    pub prompt_tokens: usize,
    pub dropped_passages: usize,
    pub prefill_ms: f64,
    pub decode_ms: f64,
}

impl Answerer {
    /// A generator over `lm` answering in at most `max_tokens` tokens from prompts of at most
    /// `context` tokens (default: the model's context less `max_tokens`, at most 2048).
    pub fn new(lm: LoadedLm, context: Option<usize>, max_tokens: usize) -> Result<Self> {
        let max_seq = lm.model.max_seq_len();
        if max_tokens == 0 || max_tokens >= max_seq {
            bail!(
                "expected --max-tokens between 1 and {} (the model's context), found {max_tokens}",
                max_seq - 1
            );
        }
        let room = max_seq - max_tokens;
        let budget = match context {
            Some(c) if c > room => bail!(
                "expected --context at most {room} (model context {max_seq} less --max-tokens), found {c}"
            ),
            Some(c) => c,
            None => room.min(2048),
        };
        Ok(Answerer {
            lm: LmGenerator::new(lm),
            budget,
            max_tokens,
        })
    }

    pub fn count(&self, s: &str) -> usize {
        self.lm
            .lm
            .tokenizer
            .encode(s, false)
            .map(|t| t.len())
            .unwrap_or_else(|_| s.len())
    }

    /// The chat-templated prompt of a user message (the message itself without a template).
    pub fn render(&self, user: &str) -> Result<String> {
        let msgs = [("user".to_string(), user.to_string())];
        Ok(canon_text::chat_prompt(
            self.lm.lm.chat_template.as_ref(),
            &msgs,
        )?)
    }

    /// Generates greedily from a user message, checking the templated prompt fits.
    pub fn complete(&mut self, user: &str, max_tokens: usize) -> Result<(String, f64, f64, usize)> {
        let prompt = self.render(user)?;
        let n = self.count(&prompt);
        let max_seq = self.lm.lm.model.max_seq_len();
        if n + max_tokens > max_seq {
            bail!(
                "expected a prompt that fits the model's context of {max_seq} tokens with {max_tokens} answer tokens, found {n} prompt tokens"
            );
        }
        let req = GenerateRequest::new(prompt, max_tokens);
        let g = self.lm.generate_streaming(&req, &mut |_| true)?;
        Ok((g.text.trim().to_string(), g.prefill_ms, g.decode_ms, n))
    }

    /// Answers `question` from `hits` with citations.
    pub fn answer(&mut self, question: &str, hits: &[Hit]) -> Result<Answer> {
        self.answer_with("", question, hits)
    }

    /// [`Answerer::answer`] with extra context before the passages.
    pub fn answer_with(&mut self, preamble: &str, question: &str, hits: &[Hit]) -> Result<Answer> {
        // The chat template's own tokens come out of the budget.
        let overhead = self.count(&self.render("")?);
        let budget = self.budget.saturating_sub(overhead);
        let p = {
            let count = |s: &str| self.count(s);
            build_prompt_with(preamble, question, hits, budget, &count)?
        };
        let (text, prefill_ms, decode_ms, n) = self.complete(&p.text, self.max_tokens)?;
        let citations = cited(&text, p.passages.len())
            .into_iter()
            .map(|n| p.passages[n - 1].clone())
            .collect();
        Ok(Answer {
            question: question.trim().to_string(),
            answer: text,
            citations,
            chunks: p.passages,
            prompt_tokens: n,
            dropped_passages: p.dropped,
            prefill_ms,
            decode_ms,
        })
    }
}

/// Each continuation's per-token log-probabilities after a context, under a model.
pub type ContinuationScorer<E> = dyn Fn(
    &dyn canon_models::CausalLm,
    &[u32],
    &[Vec<u32>],
) -> std::result::Result<Vec<Vec<f64>>, E>;

/// Candidate scores: (RAG-Sequence, RAG-Token, no-retrieval) log-probabilities and the
/// per-passage sums, for each candidate.
pub struct CandidateScores {
    pub sequence: Vec<f64>,
    pub token: Vec<f64>,
    pub no_retrieval: Vec<f64>,
    pub per_passage: Vec<Vec<f64>>,
    pub tokens: Vec<usize>,
}

/// Paper 9's two models as scorers of candidate answers: for each passage z, the generator's
/// log-probabilities of the candidate's tokens after a prompt holding z and the question; then
/// RAG-Sequence and RAG-Token marginalise them with `log_prior` = log p(z|x).
///
/// `score(lm, context, continuations)` returns each continuation's per-token log-probabilities
/// after `context` (the few-shot scorer, `canon_agent::fewshot::continuation_logprobs`).
pub fn rag_candidate_scores<E>(
    ans: &Answerer,
    question: &str,
    hits: &[Hit],
    log_prior: &[f64],
    candidates: &[String],
    score: &ContinuationScorer<E>,
) -> Result<CandidateScores>
where
    E: std::error::Error + Send + Sync + 'static,
{
    use crate::marginal::{rag_sequence_from_token_logprobs, rag_token_from_token_logprobs};
    let scorer = |ids: &[u32], c: &[Vec<u32>]| {
        score(lm_of(ans), ids, c).map_err(|e| AnswerError::Scorer(Box::new(e)))
    };
    let tok = &ans.lm.lm.tokenizer;
    let cands: Vec<Vec<u32>> = candidates
        .iter()
        .map(|c| tok.encode(&format!(" {}", c.trim()), false))
        .collect::<std::result::Result<_, _>>()?;
    let prompt_for = |passage: Option<&Hit>| -> Result<Vec<u32>> {
        let user = match passage {
            Some(h) => crate::e2e::passage_message(&h.chunk, question),
            None => format!("Question: {}\nAnswer briefly.", question.trim()),
        };
        Ok(tok.encode(&(ans.render(&user)? + "Answer:"), true)?)
    };
    // token_lp[c][z][i]
    let mut token_lp: Vec<Vec<Vec<f64>>> = vec![Vec::new(); cands.len()];
    for h in hits {
        let ids = prompt_for(Some(h))?;
        let lps = scorer(&ids, &cands)?;
        for (c, lp) in lps.into_iter().enumerate() {
            token_lp[c].push(lp);
        }
    }
    let base = scorer(&prompt_for(None)?, &cands)?;
    Ok(CandidateScores {
        sequence: token_lp
            .iter()
            .map(|m| rag_sequence_from_token_logprobs(log_prior, m))
            .collect(),
        token: token_lp
            .iter()
            .map(|m| rag_token_from_token_logprobs(log_prior, m))
            .collect(),
        no_retrieval: base.iter().map(|l| l.iter().sum()).collect(),
        per_passage: token_lp
            .iter()
            .map(|m| m.iter().map(|l| l.iter().sum()).collect())
            .collect(),
        tokens: cands.iter().map(Vec::len).collect(),
    })
}

/// log p(z|x) ∝ exp(scale · d(z)·q(x)) over the retrieved passages, as DPR's inner product.
pub fn dense_log_prior(r: &Retriever, question: &str, hits: &[Hit]) -> Result<Vec<f64>> {
    let q = r
        .embed(question)?
        .ok_or_else(|| AnswerError::Invalid("no query embedding".into()))?;
    let scores: Vec<f64> = hits
        .iter()
        .map(|h| {
            r.index
                .vector(h.id)
                .iter()
                .zip(&q)
                .map(|(x, y)| (x * y) as f64)
                .sum()
        })
        .collect();
    let scaled: Vec<f64> = scores.iter().map(|s| s * r.prior_scale).collect();
    Ok(crate::marginal::doc_log_prior(&scaled))
}

fn lm_of(ans: &Answerer) -> &dyn canon_models::CausalLm {
    ans.lm.lm.model.as_ref()
}

/// Next-token log-probabilities of one generator under several passage prompts, with one KV cache
/// per passage that follows the decoded prefix (rewound to the prompt when a prefix is not an
/// extension of what it holds).
struct DocLm<'a> {
    lm: &'a dyn canon_models::CausalLm,
    prompts: Vec<Vec<u32>>,
    caches: Vec<canon_models::Cache>,
    fed: Vec<Vec<u32>>,
    last: Vec<Vec<f32>>,
}

fn forward_last(
    lm: &dyn canon_models::CausalLm,
    ids: &[u32],
    cache: &mut canon_models::Cache,
) -> Result<Vec<f32>> {
    let t = candle_core::Tensor::new(ids, &candle_core::Device::Cpu)?.unsqueeze(0)?;
    let out = lm.forward(&t, cache, canon_models::Positions::Last)?;
    Ok(out
        .flatten_all()?
        .to_dtype(candle_core::DType::F32)?
        .to_vec1::<f32>()?)
}

impl<'a> DocLm<'a> {
    fn new(lm: &'a dyn canon_models::CausalLm, prompts: Vec<Vec<u32>>) -> Result<Self> {
        let mut caches = Vec::new();
        let mut last = Vec::new();
        for p in &prompts {
            let mut c = lm.new_cache();
            last.push(forward_last(lm, p, &mut c)?);
            caches.push(c);
        }
        Ok(DocLm {
            lm,
            fed: vec![Vec::new(); prompts.len()],
            prompts,
            caches,
            last,
        })
    }

    fn next(&mut self, z: usize, prefix: &[u32]) -> Result<Vec<f64>> {
        if !prefix.starts_with(&self.fed[z]) {
            // Rewind to the longest prefix shared with what was fed (beam search hops between
            // hypotheses): keep the cache up to the token before it and run that token again.
            let c = self.fed[z]
                .iter()
                .zip(prefix)
                .take_while(|(a, b)| a == b)
                .count();
            let n = self.prompts[z].len();
            let keep = n + c;
            for layer in &mut self.caches[z].layers {
                layer.truncate(keep - 1)?;
            }
            let last_tok = if c == 0 {
                self.prompts[z][n - 1]
            } else {
                self.fed[z][c - 1]
            };
            self.last[z] = forward_last(self.lm, &[last_tok], &mut self.caches[z])?;
            self.fed[z].truncate(c);
        }
        let rest = prefix[self.fed[z].len()..].to_vec();
        if !rest.is_empty() {
            self.last[z] = forward_last(self.lm, &rest, &mut self.caches[z])?;
            self.fed[z].extend_from_slice(&rest);
        }
        let l = &self.last[z];
        let max = l.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let lse = max + l.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
        Ok(l.iter().map(|&v| v as f64 - lse).collect())
    }
}

/// Retrieved passages, their log p(z|x), and one token prompt per passage.
pub type PassagePrompts = (Vec<Hit>, Vec<f64>, Vec<Vec<u32>>);

/// The top passages, their p(z|x) from dense scores, and one prompt per passage.
pub fn passage_prompts(
    r: &Retriever,
    question: &str,
    mode: Mode,
    k: usize,
    ans: &Answerer,
) -> Result<PassagePrompts> {
    let hits = r.search(question, mode, k)?;
    if hits.is_empty() {
        bail!("expected retrieved passages, found none");
    }
    let prior = dense_log_prior(r, question, &hits)?;
    let tok = &ans.lm.lm.tokenizer;
    let mut prompts = Vec::new();
    for h in &hits {
        let user = crate::e2e::passage_message(&h.chunk, question);
        let ids = tok.encode(&ans.render(&user)?, true)?;
        if ids.len() + ans.max_tokens > ans.lm.lm.model.max_seq_len() {
            bail!(
                "expected passage prompts that fit the model's context with --max-tokens, found one of {} tokens",
                ids.len()
            );
        }
        prompts.push(ids);
    }
    Ok((hits, prior, prompts))
}

/// Which of paper 9's decoders `rag_decode` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RagDecoding {
    /// RAG-Token: beam search on the per-step marginal over passages.
    Token,
    /// RAG-Sequence: a beam search per passage, its hypotheses rescored.
    Sequence(SeqDecoding),
}

impl std::str::FromStr for RagDecoding {
    type Err = AnswerError;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "token" => RagDecoding::Token,
            "sequence-thorough" => RagDecoding::Sequence(SeqDecoding::Thorough),
            "sequence-fast" => RagDecoding::Sequence(SeqDecoding::Fast),
            o => bail!("expected --rag token, sequence-thorough or sequence-fast, found '{o}'"),
        })
    }
}

/// The result of [`rag_decode`]: the answer text, its log-probability (RAG-Sequence), and every
/// ranked hypothesis with its log-probability (RAG-Sequence).
#[derive(Debug, Clone)]
pub struct RagDecoded {
    pub answer: String,
    pub logprob: Option<f64>,
    pub hypotheses: Vec<(String, f64)>,
}

/// Paper 9's decoders with a real model over passage prompts (from [`passage_prompts`]) and
/// their log p(z|x): RAG-Token beam search or RAG-Sequence per-passage beams, `beams` wide, at
/// most the answerer's `max_tokens` tokens.
pub fn rag_decode(
    ans: &Answerer,
    prior: &[f64],
    prompts: Vec<Vec<u32>>,
    how: RagDecoding,
    beams: usize,
) -> Result<RagDecoded> {
    if beams == 0 || beams > 64 {
        bail!("expected --beams between 1 and 64, found {beams}");
    }
    let max_tokens = ans.max_tokens;
    let eog = ans.lm.lm.tokenizer.eog_ids.clone();
    let mut dl = DocLm::new(ans.lm.lm.model.as_ref(), prompts)?;
    let mut failure: Option<AnswerError> = None;
    let mut f = |z: usize, prefix: &[u32]| -> Vec<f64> {
        match dl.next(z, prefix) {
            Ok(v) => v,
            Err(e) => {
                failure.get_or_insert(e);
                Vec::new()
            }
        }
    };
    let (best, lp, candidates) = match how {
        RagDecoding::Token => {
            let y = rag_token_beam(prior, beams, &eog, max_tokens, &mut f);
            (y, None, Vec::new())
        }
        RagDecoding::Sequence(m) => {
            let cands: Vec<Vec<Vec<u32>>> = (0..prior.len())
                .map(|z| beams_for_doc(z, beams, &eog, max_tokens, &mut f))
                .collect();
            let ranked = rag_sequence_decode(prior, &cands, m, &mut f);
            let (y, lp) = ranked.first().cloned().unwrap_or_default();
            (y, Some(lp), ranked)
        }
    };
    if let Some(e) = failure {
        return Err(e);
    }
    let tok = &ans.lm.lm.tokenizer;
    let text = |y: &[u32]| -> String {
        let cut: Vec<u32> = y.iter().copied().take_while(|t| !eog.contains(t)).collect();
        tok.decode(&cut, true)
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    Ok(RagDecoded {
        answer: text(&best),
        logprob: lp,
        hypotheses: candidates.iter().map(|(y, l)| (text(y), *l)).collect(),
    })
}

/// The candidates' scores as JSON rows (`candidate`, `tokens`, the RAG-Sequence, RAG-Token,
/// no-retrieval and per-passage log-probabilities), best RAG-Sequence log-probability first.
pub fn candidate_rows(candidates: &[String], sc: &CandidateScores) -> Vec<serde_json::Value> {
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    // Stable: equal scores keep the order given; a non-finite score (null in JSON) sorts last.
    let key = |c: usize| {
        Some(sc.sequence[c])
            .filter(|v| v.is_finite())
            .unwrap_or(f64::MIN)
    };
    order.sort_by(|&x, &y| key(y).total_cmp(&key(x)));
    order
        .into_iter()
        .map(|c| {
            serde_json::json!({"candidate": candidates[c], "tokens": sc.tokens[c],
                "rag_sequence_logprob": sc.sequence[c],
                "rag_token_logprob": sc.token[c],
                "no_retrieval_logprob": sc.no_retrieval[c],
                "per_passage_logprob": sc.per_passage[c]})
        })
        .collect()
}

/// The retrieved passages numbered from 1 with page, section and p(z|x) = exp(`log_prior`);
/// `located` adds the file and its line range.
pub fn passages_json(hits: &[Hit], log_prior: &[f64], located: bool) -> Vec<serde_json::Value> {
    let rows = hits.iter().zip(log_prior).enumerate();
    rows.map(|(i, (h, p))| {
        let c = &h.chunk;
        let mut v = serde_json::json!({"n": i + 1, "page": c.page, "section": c.section});
        if located {
            v["path"] = c.path.clone().into();
            v["lines"] = serde_json::json!([c.line_start, c.line_end]);
        }
        v["p_z_given_x"] = p.exp().into();
        v
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidate_rows_put_the_best_rag_sequence_score_first() {
        let sc = CandidateScores {
            sequence: vec![-3.0, -1.0, -3.0],
            token: vec![-2.5, -0.5, -2.0],
            no_retrieval: vec![-4.0, -4.0, -4.0],
            per_passage: vec![vec![-3.0], vec![-1.0], vec![-3.0]],
            tokens: vec![2, 1, 3],
        };
        let names = ["a", "b", "c"].map(String::from);
        let rows = candidate_rows(&names, &sc);
        let order: Vec<&str> = rows
            .iter()
            .filter_map(|r| r["candidate"].as_str())
            .collect();
        assert_eq!(order, ["b", "a", "c"]);
        assert_eq!(rows[0]["rag_token_logprob"], -0.5);
        assert_eq!(rows[2]["tokens"], 3);
    }

    #[test]
    fn passages_are_numbered_with_their_prior_and_optionally_located() {
        let chunk = crate::chunk::Chunk {
            path: "tar.1".into(),
            page: "tar".into(),
            section: "OPTIONS".into(),
            line_start: 3,
            line_end: 9,
            text: String::new(),
        };
        let hits = [Hit {
            id: 0,
            score: 1.0,
            chunk,
        }];
        let v = passages_json(&hits, &[0.0], false);
        assert_eq!(
            v[0],
            serde_json::json!({"n": 1, "page": "tar", "section": "OPTIONS", "p_z_given_x": 1.0})
        );
        let v = passages_json(&hits, &[0.0], true);
        assert_eq!(v[0]["lines"], serde_json::json!([3, 9]));
        assert_eq!(v[0]["path"], "tar.1");
    }

    fn tiny_lm(dir: &std::path::Path) -> LoadedLm {
        let p = dir.join("tiny.gguf");
        canon_testkit::tiny_gguf::write_tiny_llama(&p, &Default::default()).expect("write gguf");
        canon_models::load::load_gguf_lm(&p, canon_models::WeightMode::DequantizeF32).expect("load")
    }

    #[test]
    fn the_prompt_budget_is_checked_against_the_context() {
        let d = tempfile::tempdir().expect("tempdir");
        let e = Answerer::new(tiny_lm(d.path()), None, 0)
            .err()
            .expect("0 tokens");
        assert!(e.to_string().contains("between 1 and 63"), "{e}");
        let e = Answerer::new(tiny_lm(d.path()), Some(60), 8)
            .err()
            .expect("too long");
        assert!(e.to_string().contains("at most 56"), "{e}");
        let a = Answerer::new(tiny_lm(d.path()), None, 8).expect("fits");
        assert_eq!(a.budget, 56);
    }

    #[test]
    fn decoders_parse_and_beams_are_bounded() {
        assert_eq!(
            "token".parse::<RagDecoding>().ok(),
            Some(RagDecoding::Token)
        );
        assert_eq!(
            "sequence-fast".parse::<RagDecoding>().ok(),
            Some(RagDecoding::Sequence(SeqDecoding::Fast))
        );
        assert!("beam".parse::<RagDecoding>().is_err());
        let d = tempfile::tempdir().expect("tempdir");
        let a = Answerer::new(tiny_lm(d.path()), None, 4).expect("answerer");
        let e =
            rag_decode(&a, &[0.0], vec![vec![5, 6]], RagDecoding::Token, 0).expect_err("no beams");
        assert!(e.to_string().contains("--beams between 1 and 64"), "{e}");
    }

    /// The per-passage caches follow beam search as it hops between hypotheses: after any
    /// sequence of prefixes, the next-token distribution equals that of a fresh cache.
    #[test]
    fn passage_caches_rewind_to_the_same_log_probabilities() {
        let d = tempfile::tempdir().expect("tempdir");
        let lm = tiny_lm(d.path());
        let prompts = vec![vec![10, 11, 12, 13], vec![20, 21]];
        let mut hop = DocLm::new(lm.model.as_ref(), prompts.clone()).expect("doc lm");
        let walk: [(usize, &[u32]); 6] = [
            (0, &[40, 41, 42]),
            (1, &[7]),
            (0, &[40, 50]),
            (0, &[]),
            (1, &[7, 8, 9]),
            (0, &[40, 50, 60]),
        ];
        for (z, prefix) in walk {
            let got = hop.next(z, prefix).expect("next");
            let mut fresh = DocLm::new(lm.model.as_ref(), prompts.clone()).expect("doc lm");
            let want = fresh.next(z, prefix).expect("next");
            assert_eq!(got.len(), want.len());
            let worst = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f64, f64::max);
            assert!(
                worst < 1e-4,
                "passage {z} prefix {prefix:?}: max difference {worst}"
            );
            let total: f64 = got.iter().map(|l| l.exp()).sum();
            assert!(
                (total - 1.0).abs() < 1e-6,
                "log-probabilities sum to {total}"
            );
        }
    }
}
