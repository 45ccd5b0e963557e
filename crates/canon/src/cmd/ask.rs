//! `canon ask`: retrieve passages, answer from them with `[n]` citations naming page and section.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use canon_infer::{GenerateRequest, LmGenerator};
use canon_rag::ask::{Passage, build_prompt_with, cited};
use canon_rag::index::{Hit, Index, Mode};
use canon_text::Message;
use clap::Args;
use serde::Serialize;
use serde_json::json;

use crate::{Ctx, model_gen};

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  canon ask --index man.idx \"how do I make tar extract into another directory?\"
  canon ask --index man.idx --k 3 --json \"which ls option sorts by modification time?\"
  canon ask --index man.idx --k 4 --candidate \"-C\" --candidate \"-x\" \"which tar option changes directory?\"
  canon ask --index man.idx --k 3 --rag sequence-thorough \"which tar option changes directory?\"
  canon ask --index man.idx --graph local \"which files does useradd read?\"
  canon ask --index man.idx --graph global \"what do these manuals say about compression?\"

The answer cites passages as [n]; the sources printed below it name page, section, file and
lines. --json prints {question, answer, citations, chunks, timings}.")]
pub struct AskArgs {
    /// The index folder (from `canon index build`).
    #[arg(long)]
    pub index: PathBuf,
    /// The question.
    pub question: String,
    /// Generating model: an alias (smollm2), a .gguf file or an HF-style folder.
    #[arg(long, default_value = "smollm2")]
    pub model: String,
    /// Passages retrieved.
    #[arg(long, default_value_t = 5)]
    pub k: usize,
    /// Retrieval: hybrid, dense or bm25.
    #[arg(long, default_value = "hybrid")]
    pub mode: String,
    /// Most answer tokens.
    #[arg(long, default_value_t = 200)]
    pub max_tokens: usize,
    /// Prompt budget in tokens (default: the model's context less --max-tokens, at most 2048).
    #[arg(long)]
    pub context: Option<usize>,
    /// Score these candidate answers under RAG-Sequence and RAG-Token over the top --k passages
    /// (p(z|x) = softmax of the passages' dense scores) instead of generating (repeatable).
    #[arg(long = "candidate", value_name = "TEXT", allow_hyphen_values = true)]
    pub candidates: Vec<String>,
    /// Generate with paper 9's decoders over the top --k passages instead of one prompt of
    /// numbered passages: token (RAG-Token, beam search on the per-step marginal), sequence-thorough
    /// or sequence-fast (RAG-Sequence: a beam search per passage, its hypotheses rescored).
    #[arg(long)]
    pub rag: Option<String>,
    /// Beam width of the --rag decoders (1 = greedy).
    #[arg(long, default_value_t = 1)]
    pub beams: usize,
    /// GraphRAG query over the index's graph (`canon graph build`): global or local.
    #[arg(long)]
    pub graph: Option<String>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// A loaded index with its query encoder (when the mode needs one).
pub struct Retriever {
    pub index: Index,
    enc: Option<canon_models::LoadedEncoder>,
}

impl Retriever {
    pub fn open(path: &std::path::Path, need_dense: bool, ctx: &Ctx) -> anyhow::Result<Self> {
        let index = Index::open(path, None)?;
        let enc = if need_dense {
            let enc = model_gen::load_encoder(&index.meta.model, ctx)?;
            if enc.embedder.dim() != index.meta.dim {
                bail!(
                    "expected a {}-wide embedding model for this index, found {}",
                    index.meta.dim,
                    enc.embedder.dim()
                );
            }
            Some(enc)
        } else {
            None
        };
        Ok(Retriever { index, enc })
    }

    /// The normalised query embedding.
    pub fn embed(&self, q: &str) -> anyhow::Result<Option<Vec<f32>>> {
        let Some(enc) = &self.enc else {
            return Ok(None);
        };
        let mut v = enc
            .embedder
            .embed(&[q.to_string()], 1)?
            .into_iter()
            .next()
            .context("no query embedding")?;
        canon_rag::dense::normalize(&mut v);
        Ok(Some(v))
    }

    pub fn search(&self, q: &str, mode: Mode, k: usize) -> anyhow::Result<Vec<Hit>> {
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
    pub fn load(
        model: &str,
        context: Option<usize>,
        max_tokens: usize,
        ctx: &Ctx,
    ) -> anyhow::Result<Self> {
        let lm = model_gen::load_lm(model, ctx)?;
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
    pub fn render(&self, user: &str) -> anyhow::Result<String> {
        Ok(match &self.lm.lm.chat_template {
            Some(t) => t.render(&[Message::new("user", user)], true)?,
            None => user.to_string(),
        })
    }

    /// Generates greedily from a user message, checking the templated prompt fits.
    pub fn complete(
        &mut self,
        user: &str,
        max_tokens: usize,
    ) -> anyhow::Result<(String, f64, f64, usize)> {
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
    pub fn answer(&mut self, question: &str, hits: &[Hit]) -> anyhow::Result<Answer> {
        self.answer_with("", question, hits)
    }

    /// [`Answerer::answer`] with extra context before the passages.
    pub fn answer_with(
        &mut self,
        preamble: &str,
        question: &str,
        hits: &[Hit],
    ) -> anyhow::Result<Answer> {
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

pub fn print_answer(a: &Answer, json: bool, extra: serde_json::Value) {
    if json {
        let mut v = json!(a);
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            for (k, x) in e {
                o.insert(k.clone(), x.clone());
            }
        }
        println!("{v}");
        return;
    }
    println!("{}", a.answer);
    println!();
    let show: Vec<&Passage> = if a.citations.is_empty() {
        println!("Sources (retrieved; the answer cites none):");
        a.chunks.iter().collect()
    } else {
        println!("Sources:");
        a.citations.iter().collect()
    };
    for p in show {
        println!(
            "[{}] {} ({}:{}-{})",
            p.n,
            p.source(),
            p.path,
            p.lines[0],
            p.lines[1]
        );
    }
}

pub fn run(a: AskArgs, ctx: &Ctx) -> anyhow::Result<()> {
    if a.question.trim().is_empty() {
        bail!("expected a non-empty question, found an empty one");
    }
    if a.k == 0 {
        bail!("expected --k of at least 1, found 0");
    }
    let mode: Mode = a.mode.parse()?;
    let chosen = [a.graph.is_some(), !a.candidates.is_empty(), a.rag.is_some()];
    if chosen.iter().filter(|&&x| x).count() > 1 {
        bail!("expected at most one of --graph, --candidate and --rag, found several");
    }
    if let Some(g) = &a.graph {
        return super::graph::ask(&a, g, ctx);
    }
    if !a.candidates.is_empty() {
        return score_candidates(&a, mode, ctx);
    }
    if let Some(r) = &a.rag {
        return rag_decode(&a, r, mode, ctx);
    }
    let t0 = Instant::now();
    let r = Retriever::open(&a.index, mode != Mode::Bm25, ctx)?;
    let mut ans = Answerer::load(&a.model, a.context, a.max_tokens, ctx)?;
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    let t1 = Instant::now();
    let hits = r.search(&a.question, mode, a.k)?;
    let search_ms = t1.elapsed().as_secs_f64() * 1e3;
    let out = ans.answer(&a.question, &hits)?;
    print_answer(
        &out,
        a.json,
        json!({"timings": {"load_ms": load_ms, "search_ms": search_ms, "prefill_ms": out.prefill_ms, "decode_ms": out.decode_ms}}),
    );
    Ok(())
}

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
pub fn rag_candidate_scores(
    ans: &Answerer,
    question: &str,
    hits: &[Hit],
    log_prior: &[f64],
    candidates: &[String],
) -> anyhow::Result<CandidateScores> {
    use canon_rag::marginal::{rag_sequence_from_token_logprobs, rag_token_from_token_logprobs};
    let tok = &ans.lm.lm.tokenizer;
    let cands: Vec<Vec<u32>> = candidates
        .iter()
        .map(|c| tok.encode(&format!(" {}", c.trim()), false))
        .collect::<Result<_, _>>()?;
    let prompt_for = |passage: Option<&Hit>| -> anyhow::Result<Vec<u32>> {
        let user = match passage {
            Some(h) => format!(
                "Passage ({}, {}):\n{}\n\nQuestion: {}\nAnswer briefly.",
                h.chunk.page,
                h.chunk.section,
                h.chunk.text,
                question.trim()
            ),
            None => format!("Question: {}\nAnswer briefly.", question.trim()),
        };
        Ok(tok.encode(&(ans.render(&user)? + "Answer:"), true)?)
    };
    let lm = ans.lm.lm.model.as_ref();
    // token_lp[c][z][i]
    let mut token_lp: Vec<Vec<Vec<f64>>> = vec![Vec::new(); cands.len()];
    for h in hits {
        let ids = prompt_for(Some(h))?;
        let lps = canon_agent::fewshot::continuation_logprobs(lm, &ids, &cands)?;
        for (c, lp) in lps.into_iter().enumerate() {
            token_lp[c].push(lp);
        }
    }
    let base = canon_agent::fewshot::continuation_logprobs(lm, &prompt_for(None)?, &cands)?;
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

/// log p(z|x) ∝ d(z)·q(x) over the retrieved passages, as DPR's inner product.
pub fn dense_log_prior(r: &Retriever, question: &str, hits: &[Hit]) -> anyhow::Result<Vec<f64>> {
    let q = r.embed(question)?.context("no query embedding")?;
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
    Ok(canon_rag::marginal::doc_log_prior(&scores))
}

fn score_candidates(a: &AskArgs, mode: Mode, ctx: &Ctx) -> anyhow::Result<()> {
    if a.candidates.iter().any(|c| c.trim().is_empty()) {
        bail!("expected non-empty --candidate answers, found an empty one");
    }
    let r = Retriever::open(&a.index, true, ctx)?;
    let hits = r.search(&a.question, mode, a.k)?;
    if hits.is_empty() {
        bail!("expected retrieved passages, found none");
    }
    let prior = dense_log_prior(&r, &a.question, &hits)?;
    let ans = Answerer::load(&a.model, a.context, a.max_tokens, ctx)?;
    let sc = rag_candidate_scores(&ans, &a.question, &hits, &prior, &a.candidates)?;
    let mut rows: Vec<serde_json::Value> = a
        .candidates
        .iter()
        .enumerate()
        .map(|(c, text)| {
            json!({"candidate": text, "tokens": sc.tokens[c],
                "rag_sequence_logprob": sc.sequence[c],
                "rag_token_logprob": sc.token[c],
                "no_retrieval_logprob": sc.no_retrieval[c],
                "per_passage_logprob": sc.per_passage[c]})
        })
        .collect();
    rows.sort_by(|x, y| {
        y["rag_sequence_logprob"]
            .as_f64()
            .unwrap_or(f64::MIN)
            .total_cmp(&x["rag_sequence_logprob"].as_f64().unwrap_or(f64::MIN))
    });
    let passages: Vec<serde_json::Value> = hits
        .iter()
        .zip(&prior)
        .enumerate()
        .map(|(i, (h, p))| json!({"n": i + 1, "page": h.chunk.page, "section": h.chunk.section, "p_z_given_x": p.exp()}))
        .collect();
    if a.json {
        println!(
            "{}",
            json!({"question": a.question.trim(), "candidates": rows, "passages": passages})
        );
    } else {
        println!("| candidate | log p RAG-Sequence | log p RAG-Token | log p without retrieval |");
        println!("|---|---|---|---|");
        for r in &rows {
            println!(
                "| {} | {:.3} | {:.3} | {:.3} |",
                r["candidate"].as_str().unwrap_or(""),
                r["rag_sequence_logprob"].as_f64().unwrap_or(f64::NAN),
                r["rag_token_logprob"].as_f64().unwrap_or(f64::NAN),
                r["no_retrieval_logprob"].as_f64().unwrap_or(f64::NAN)
            );
        }
        for p in &passages {
            println!(
                "[{}] {}, {} p(z|x) = {:.3}",
                p["n"],
                p["page"].as_str().unwrap_or(""),
                p["section"].as_str().unwrap_or(""),
                p["p_z_given_x"].as_f64().unwrap_or(0.0)
            );
        }
    }
    Ok(())
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
) -> anyhow::Result<Vec<f32>> {
    let t = candle_core::Tensor::new(ids, &candle_core::Device::Cpu)?.unsqueeze(0)?;
    let out = lm.forward(&t, cache, canon_models::Positions::Last)?;
    Ok(out
        .flatten_all()?
        .to_dtype(candle_core::DType::F32)?
        .to_vec1::<f32>()?)
}

impl<'a> DocLm<'a> {
    fn new(lm: &'a dyn canon_models::CausalLm, prompts: Vec<Vec<u32>>) -> anyhow::Result<Self> {
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

    fn next(&mut self, z: usize, prefix: &[u32]) -> anyhow::Result<Vec<f64>> {
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
type PassagePrompts = (Vec<Hit>, Vec<f64>, Vec<Vec<u32>>);

/// The top passages, their p(z|x) from dense scores, and one prompt per passage.
fn passage_prompts(
    a: &AskArgs,
    mode: Mode,
    ans: &Answerer,
    ctx: &Ctx,
) -> anyhow::Result<PassagePrompts> {
    let r = Retriever::open(&a.index, true, ctx)?;
    let hits = r.search(&a.question, mode, a.k)?;
    if hits.is_empty() {
        bail!("expected retrieved passages, found none");
    }
    let prior = dense_log_prior(&r, &a.question, &hits)?;
    let tok = &ans.lm.lm.tokenizer;
    let mut prompts = Vec::new();
    for h in &hits {
        let user = format!(
            "Passage ({}, {}):\n{}\n\nQuestion: {}\nAnswer briefly.",
            h.chunk.page,
            h.chunk.section,
            h.chunk.text,
            a.question.trim()
        );
        let ids = tok.encode(&ans.render(&user)?, true)?;
        if ids.len() + a.max_tokens > ans.lm.lm.model.max_seq_len() {
            bail!(
                "expected passage prompts that fit the model's context with --max-tokens, found one of {} tokens",
                ids.len()
            );
        }
        prompts.push(ids);
    }
    Ok((hits, prior, prompts))
}

/// `canon ask --rag token|sequence-thorough|sequence-fast`: paper 9's decoders with the real model.
fn rag_decode(a: &AskArgs, how: &str, mode: Mode, ctx: &Ctx) -> anyhow::Result<()> {
    use canon_rag::marginal::{SeqDecoding, beams_for_doc, rag_sequence_decode, rag_token_beam};
    if a.beams == 0 || a.beams > 64 {
        bail!("expected --beams between 1 and 64, found {}", a.beams);
    }
    let seq = match how {
        "token" => None,
        "sequence-thorough" => Some(SeqDecoding::Thorough),
        "sequence-fast" => Some(SeqDecoding::Fast),
        o => bail!("expected --rag token, sequence-thorough or sequence-fast, found '{o}'"),
    };
    let ans = Answerer::load(&a.model, a.context, a.max_tokens, ctx)?;
    let (hits, prior, prompts) = passage_prompts(a, mode, &ans, ctx)?;
    let eog = ans.lm.lm.tokenizer.eog_ids.clone();
    let t0 = Instant::now();
    let mut dl = DocLm::new(ans.lm.lm.model.as_ref(), prompts)?;
    let mut failure: Option<anyhow::Error> = None;
    let mut f = |z: usize, prefix: &[u32]| -> Vec<f64> {
        match dl.next(z, prefix) {
            Ok(v) => v,
            Err(e) => {
                failure.get_or_insert(e);
                Vec::new()
            }
        }
    };
    let (best, lp, candidates) = match seq {
        None => {
            let y = rag_token_beam(&prior, a.beams, &eog, a.max_tokens, &mut f);
            (y, None, Vec::new())
        }
        Some(m) => {
            let cands: Vec<Vec<Vec<u32>>> = (0..prior.len())
                .map(|z| beams_for_doc(z, a.beams, &eog, a.max_tokens, &mut f))
                .collect();
            let ranked = rag_sequence_decode(&prior, &cands, m, &mut f);
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
    let answer = text(&best);
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    let passages: Vec<serde_json::Value> = hits
        .iter()
        .zip(&prior)
        .enumerate()
        .map(|(i, (h, p))| json!({"n": i + 1, "page": h.chunk.page, "section": h.chunk.section, "path": h.chunk.path,
            "lines": [h.chunk.line_start, h.chunk.line_end], "p_z_given_x": p.exp()}))
        .collect();
    let hyps: Vec<serde_json::Value> = candidates
        .iter()
        .map(|(y, l)| json!({"text": text(y), "logprob": l}))
        .collect();
    if a.json {
        println!(
            "{}",
            json!({"question": a.question.trim(), "answer": answer, "decoding": how, "logprob": lp,
                "hypotheses": hyps, "passages": passages, "timings": {"decode_ms": ms}})
        );
    } else {
        println!("{answer}\n");
        for h in &hyps {
            println!(
                "hypothesis {:.3}: {}",
                h["logprob"].as_f64().unwrap_or(f64::NAN),
                h["text"].as_str().unwrap_or("")
            );
        }
        println!("Passages (p(z|x)):");
        for p in &passages {
            println!(
                "[{}] {}, {} {:.3}",
                p["n"],
                p["page"].as_str().unwrap_or(""),
                p["section"].as_str().unwrap_or(""),
                p["p_z_given_x"].as_f64().unwrap_or(0.0)
            );
        }
    }
    Ok(())
}
