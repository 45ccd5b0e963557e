//! Evaluating retrieval and answers over a question file (`canon eval rag`): one method at a time
//! (flat hybrid/dense/BM25 search or a GraphRAG query), recall and MRR of the source page, and with
//! a model, generated answers and RAG scoring of the reference answer against distractors.

use std::time::Instant;

use crate::answer::{
    AnswerError, Answerer, ContinuationScorer, Result, Retriever, dense_log_prior,
    rag_candidate_scores,
};
use crate::eval::{Outcome, Question, score};
use crate::graph::EntityMatch;
use crate::graph_answer::{LoadedGraph, Matching};
use crate::index::Mode;
use serde_json::json;

/// A retrieval method of `canon eval rag`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Flat(Mode),
    /// GraphRAG local search, entities matched by description embedding or BM25.
    GraphLocal(EntityMatch),
    GraphGlobal,
}

impl std::str::FromStr for Method {
    type Err = AnswerError;
    fn from_str(s: &str) -> Result<Method> {
        Ok(match s {
            "hybrid" | "dense" | "bm25" => Method::Flat(s.parse::<Mode>()?),
            "graph-local" => Method::GraphLocal(EntityMatch::Embedding),
            "graph-local-bm25" => Method::GraphLocal(EntityMatch::Bm25),
            "graph-global" => Method::GraphGlobal,
            o => {
                return Err(AnswerError::Invalid(format!(
                    "expected methods among hybrid, dense, bm25, graph-local, graph-local-bm25, graph-global, found '{o}'"
                )));
            }
        })
    }
}

impl Method {
    pub fn name(&self) -> String {
        match self {
            Method::Flat(Mode::Hybrid) => "hybrid".into(),
            Method::Flat(Mode::Dense) => "dense".into(),
            Method::Flat(Mode::Bm25) => "bm25".into(),
            Method::GraphLocal(EntityMatch::Embedding) => "graph-local".into(),
            Method::GraphLocal(EntityMatch::Bm25) => "graph-local-bm25".into(),
            Method::GraphGlobal => "graph-global".into(),
        }
    }

    pub fn is_graph(&self) -> bool {
        matches!(self, Method::GraphLocal(_) | Method::GraphGlobal)
    }

    /// Whether the method embeds the question.
    pub fn needs_embedding(&self) -> bool {
        matches!(
            self,
            Method::Flat(Mode::Dense | Mode::Hybrid) | Method::GraphLocal(EntityMatch::Embedding)
        )
    }
}

/// The reference answer and up to `n` distractors: other questions' answers of the same kind
/// (not an alias of the reference), picked by a fixed stride from the question's position.
pub fn option_candidates(qs: &[Question], q: &Question, n: usize) -> Vec<String> {
    let mut cands = vec![q.answer.clone()];
    let pool: Vec<&str> = qs
        .iter()
        .filter(|o| o.kind == q.kind && o.answer != q.answer && !q.aliases.contains(&o.answer))
        .map(|o| o.answer.as_str())
        .collect();
    let qi = qs.iter().position(|o| o.id == q.id).unwrap_or(0);
    for j in 0..pool.len() {
        if cands.len() > n {
            break;
        }
        let c = pool[(qi * 7 + j * 13) % pool.len()];
        if !cands.iter().any(|x| x == c) {
            cands.push(c.to_string());
        }
    }
    cands
}

/// The results of one method over the questions.
pub struct MethodEval {
    pub outcomes: Vec<Outcome>,
    /// Search time per question (ms), and query-embedding time (0 for graph methods).
    pub search_ms: Vec<f64>,
    pub embed_ms: Vec<f64>,
    /// HNSW hits that the exact dense search also returns, and the exact results (dense method on
    /// an index with HNSW).
    pub ann_found: usize,
    pub ann_total: usize,
    /// Option scoring: (questions, RAG-Sequence right, RAG-Token right, no-retrieval right,
    /// retrieval raised the reference's log-probability).
    pub options: (usize, usize, usize, usize, usize),
}

/// Settings of [`evaluate_method`].
pub struct EvalSettings<'a, E> {
    /// Retrieval depth.
    pub k: usize,
    /// Passages in the answer prompt and for option scoring.
    pub answer_k: usize,
    /// Generate answers with the answerer.
    pub answer: bool,
    /// Score the reference against this many distractors.
    pub score_options: Option<usize>,
    /// The continuation scorer of option scoring.
    pub score: &'a ContinuationScorer<E>,
}

/// Runs `method` over the questions. `on_question(i)` is called as question `i` starts, `on_line`
/// with each question's JSON record.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_method<E>(
    method: Method,
    qs: &[Question],
    r: &Retriever,
    graph: Option<&LoadedGraph>,
    mut ans: Option<&mut Answerer>,
    set: &EvalSettings<E>,
    on_question: &mut dyn FnMut(usize),
    on_line: &mut dyn FnMut(&str),
) -> Result<MethodEval>
where
    E: std::error::Error + Send + Sync + 'static,
{
    let (k, answer_k, answer, score_options, scorer) = (
        set.k,
        set.answer_k,
        set.answer,
        set.score_options,
        set.score,
    );
    let m = &method;
    let name = method.name();
    let mut outs: Vec<Outcome> = Vec::new();
    let mut ms = Vec::new();
    let mut ems = Vec::new();
    let (mut ann_found, mut ann_total) = (0usize, 0usize);
    let mut opt_stats = (0usize, 0usize, 0usize, 0usize, 0usize);
    for (line_no, q) in qs.iter().enumerate() {
        on_question(line_no);
        let t0 = Instant::now();
        let mut qvec: Option<Vec<f32>> = None;
        let hits = match m {
            Method::Flat(mode) => {
                qvec = if *mode == Mode::Bm25 {
                    None
                } else {
                    r.embed(&q.question)?
                };
                let v = &qvec;
                ems.push(t0.elapsed().as_secs_f64() * 1e3);
                let t1 = Instant::now();
                let h = r.index.search(&q.question, v.as_deref(), *mode, k)?;
                ms.push(t1.elapsed().as_secs_f64() * 1e3);
                if let (Some(qv), Mode::Dense, Some(_)) = (&v, mode, &r.index.hnsw) {
                    let exact: Vec<usize> = r
                        .index
                        .dense(qv, k, true)
                        .into_iter()
                        .map(|x| x.0)
                        .collect();
                    ann_found += h.iter().filter(|x| exact.contains(&x.id)).count();
                    ann_total += exact.len();
                }
                h
            }
            Method::GraphLocal(how) => {
                let g = graph.ok_or_else(|| AnswerError::Invalid("graph not loaded".into()))?;
                qvec = if *how == EntityMatch::Embedding {
                    r.embed(&q.question)?
                } else {
                    None
                };
                ems.push(t0.elapsed().as_secs_f64() * 1e3);
                let t1 = Instant::now();
                let h = crate::graph_answer::graph_hits(
                    g,
                    &r.index,
                    &q.question,
                    Some(*how),
                    qvec.as_deref(),
                    k,
                )?;
                ms.push(t1.elapsed().as_secs_f64() * 1e3);
                h
            }
            Method::GraphGlobal => {
                let g = graph.ok_or_else(|| AnswerError::Invalid("graph not loaded".into()))?;
                let h = crate::graph_answer::graph_hits(g, &r.index, &q.question, None, None, k)?;
                ms.push(t0.elapsed().as_secs_f64() * 1e3);
                ems.push(0.0);
                h
            }
        };
        let pages: Vec<String> = hits.iter().map(|h| h.chunk.page.clone()).collect();
        if let (Some(nd), Some(llm)) = (score_options, ans.as_deref()) {
            let cands = option_candidates(qs, q, nd);
            let top = &hits[..hits.len().min(answer_k)];
            let prior = dense_log_prior(r, &q.question, top)?;
            let sc = rag_candidate_scores(llm, &q.question, top, &prior, &cands, scorer)?;
            let best = |v: &[f64]| {
                v.iter()
                    .enumerate()
                    .max_by(|x, y| x.1.total_cmp(y.1))
                    .map(|x| x.0)
            };
            opt_stats.0 += 1;
            opt_stats.1 += (best(&sc.sequence) == Some(0)) as usize;
            opt_stats.2 += (best(&sc.token) == Some(0)) as usize;
            opt_stats.3 += (best(&sc.no_retrieval) == Some(0)) as usize;
            opt_stats.4 += (sc.sequence[0] > sc.no_retrieval[0]) as usize;
        }
        let o = match ans.as_deref_mut().filter(|_| answer) {
            Some(llm) => match (m, graph) {
                (Method::GraphLocal(how), Some(g)) => {
                    let matching = Matching {
                        how: *how,
                        qvec: qvec.as_deref(),
                    };
                    let (out, _) = crate::graph_answer::local_answer(
                        llm,
                        &r.index,
                        g,
                        &q.question,
                        matching,
                        answer_k,
                    )?;
                    let cited: Vec<&str> = out.citations.iter().map(|p| p.text.as_str()).collect();
                    score(q, &pages, Some(&out.answer), &cited)
                }
                (Method::GraphGlobal, Some(g)) => {
                    // The model maps the top 2 × answer-k reports (pre-ranked by BM25) to scored
                    // key points and reduces them; the cited "passages" are the key points.
                    let ga = crate::graph_answer::global_answer(
                        llm,
                        &g.g,
                        &r.index,
                        &q.question,
                        answer_k,
                        false,
                        &mut |_, _| {},
                    )?;
                    let cited: Vec<&str> = ga
                        .citations
                        .iter()
                        .filter_map(|&n| ga.points.get(n.wrapping_sub(1)))
                        .filter_map(|p| p["point"].as_str())
                        .collect();
                    score(q, &pages, Some(&ga.answer), &cited)
                }
                _ => {
                    let top = &hits[..hits.len().min(answer_k)];
                    let out = llm.answer(&q.question, top)?;
                    let cited: Vec<&str> = out.citations.iter().map(|p| p.text.as_str()).collect();
                    score(q, &pages, Some(&out.answer), &cited)
                }
            },
            None => score(q, &pages, None, &[]),
        };
        let line =
            json!({"method": name, "question": q.id, "kind": q.kind, "outcome": o, "pages": pages})
                .to_string();
        on_line(&line);
        outs.push(o);
    }
    Ok(MethodEval {
        outcomes: outs,
        search_ms: ms,
        embed_ms: ems,
        ann_found,
        ann_total,
        options: opt_stats,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_parse_by_name_and_name_back() {
        for n in [
            "hybrid",
            "dense",
            "bm25",
            "graph-local",
            "graph-local-bm25",
            "graph-global",
        ] {
            let m: Method = n.parse().expect("a method");
            assert_eq!(m.name(), n);
            assert_eq!(m.is_graph(), n.starts_with("graph"));
        }
        let e = "tfidf".parse::<Method>().expect_err("unknown");
        assert!(e.to_string().contains("found 'tfidf'"), "{e}");
    }

    #[test]
    fn distractors_share_the_kind_and_skip_the_reference_and_its_aliases() {
        let text = [
            r#"{"id": "a", "question": "q1", "answer": "1.0", "aliases": ["1"], "page": "p", "kind": "v"}"#,
            r#"{"id": "b", "question": "q2", "answer": "2.0", "page": "p", "kind": "v"}"#,
            r#"{"id": "c", "question": "q3", "answer": "1", "page": "p", "kind": "v"}"#,
            r#"{"id": "d", "question": "q4", "answer": "bob", "page": "p", "kind": "m"}"#,
            r#"{"id": "e", "question": "q5", "answer": "3.0", "page": "p", "kind": "v"}"#,
        ]
        .join("\n");
        let qs = crate::eval::read_questions(&text, "q.jsonl").expect("questions");
        let c = option_candidates(&qs, &qs[0], 5);
        assert_eq!(c[0], "1.0");
        let mut rest = c[1..].to_vec();
        rest.sort();
        assert_eq!(rest, ["2.0", "3.0"]);
        assert_eq!(option_candidates(&qs, &qs[0], 1).len(), 2);
        assert_eq!(option_candidates(&qs, &qs[3], 3), ["bob"]);
    }
}
