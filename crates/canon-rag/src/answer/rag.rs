//! Paper 9's RAG-Sequence / RAG-Token scoring and decoding over the retrieved passages, and the
//! candidate and passage tables `canon ask` prints.

use super::{AnswerError, Answerer, Result, Retriever};
use crate::index::{Hit, Mode};
use crate::marginal::{SeqDecoding, beams_for_doc, rag_sequence_decode, rag_token_beam};

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
pub(super) struct DocLm<'a> {
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
    pub(super) fn new(lm: &'a dyn canon_models::CausalLm, prompts: Vec<Vec<u32>>) -> Result<Self> {
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

    pub(super) fn next(&mut self, z: usize, prefix: &[u32]) -> Result<Vec<f64>> {
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
