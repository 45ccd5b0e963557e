//! The held-out evaluation of a RAG run, before training and at the end: recall of the source
//! page, RAG-Token greedy answers and the reference's marginal NLL.

use candle_core::DType;
use canon_rag::answer::{RagDecoding, rag_decode};
use canon_rag::eval::score;
use serde::Serialize;

use super::{RagObjective, value};
use crate::{Context, Result};

/// Held-out figures of one evaluation.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct AnswerEval {
    pub questions: usize,
    pub recall_at_1: f64,
    pub recall_at_k: f64,
    pub exact: f64,
    pub contains: f64,
    /// Mean negative marginal log-likelihood of the reference answers.
    pub nll: f64,
    /// One record per question: id, pages retrieved, answer, exact, contains.
    #[serde(skip)]
    pub rows: Vec<serde_json::Value>,
}

/// Retrieval and answers on the first `limit` held-out questions: recall@1/k of the source page
/// with the current query encoder, the RAG-Token greedy answer (`max_tokens`), exact match and
/// containment, and the reference's marginal NLL. `on_question(i)` before each.
pub fn evaluate_answers(
    obj: &mut RagObjective,
    limit: usize,
    on_question: &mut dyn FnMut(usize),
) -> Result<AnswerEval> {
    obj.lora.set_tracking(obj.ans.lm.lm.model.as_mut(), false)?;
    let r = evaluate_answers_inner(obj, limit, on_question);
    obj.lora.set_tracking(obj.ans.lm.lm.model.as_mut(), true)?;
    r
}

fn evaluate_answers_inner(
    obj: &RagObjective,
    limit: usize,
    on_question: &mut dyn FnMut(usize),
) -> Result<AnswerEval> {
    let qs = &obj.eval[..limit.min(obj.eval.len())];
    let mut e = AnswerEval {
        questions: qs.len(),
        ..AnswerEval::default()
    };
    for (i, q) in qs.iter().enumerate() {
        on_question(i);
        let (lprior, ids) = obj.prior(&q.question)?;
        let prior: Vec<f64> = lprior.detach().to_dtype(DType::F64)?.to_vec1::<f64>()?;
        let prompts = ids
            .iter()
            .map(|&id| obj.prompt_ids(id, &q.question))
            .collect::<Result<Vec<_>>>()?;
        let dec = rag_decode(&obj.ans, &prior, prompts, RagDecoding::Token, 1)
            .context("RAG-Token decoding")?;
        let pages: Vec<String> = ids
            .iter()
            .map(|&i| obj.index.chunks[i].page.clone())
            .collect();
        let o = score(q, &pages, Some(&dec.answer), &[]);
        let nll = value(&obj.question_loss(q)?.nll)?;
        e.recall_at_1 += (o.rank == Some(1)) as usize as f64;
        e.recall_at_k += o.rank.is_some() as usize as f64;
        e.exact += o.exact as usize as f64;
        e.contains += o.contains as usize as f64;
        e.nll += nll;
        e.rows.push(serde_json::json!({
            "id": q.id, "question": q.question, "reference": q.answer, "answer": dec.answer,
            "pages": pages, "exact": o.exact, "contains": o.contains, "nll": nll,
        }));
    }
    let n = qs.len().max(1) as f64;
    e.recall_at_1 /= n;
    e.recall_at_k /= n;
    e.exact /= n;
    e.contains /= n;
    e.nll /= n;
    Ok(e)
}
