//! The differentiable side of RAG (paper 9, §2.4): the retrieval prior and the two marginal
//! likelihoods as tensors, so that one backward pass reaches both the query encoder (through
//! `p(z|x)`) and the generator (through `p(y_i|x,z,y<i)`). The document vectors are constants, as
//! in the paper, which keeps the document encoder and the index frozen.
//!
//! The f64 functions of [`crate::marginal`] compute the same quantities for scoring and decoding;
//! the tests hold the two to each other.

use candle_core::{D, DType, Tensor};

use crate::chunk::Chunk;

/// The user message of one passage's prompt: what RAG's generator reads for document `z`
/// (`canon ask --rag`, `--candidate` and the end-to-end training all use this one text).
pub fn passage_message(chunk: &Chunk, question: &str) -> String {
    format!(
        "Passage ({}, {}):\n{}\n\nQuestion: {}\nAnswer briefly.",
        chunk.page,
        chunk.section,
        chunk.text,
        question.trim()
    )
}

/// `log Σ_j exp x_j` along the last dimension (kept as size 1), with the maximum subtracted
/// first; the maximum is a constant of the graph, so the gradient is the softmax.
pub fn logsumexp_last(x: &Tensor) -> candle_core::Result<Tensor> {
    let m = x.max_keepdim(D::Minus1)?.detach();
    x.broadcast_sub(&m)?
        .exp()?
        .sum_keepdim(D::Minus1)?
        .log()?
        .broadcast_add(&m)
}

/// `log p(z|x) = s_z − log Σ_z' exp s_z'` of the scores `[k]` of the retrieved documents.
pub fn log_prior(scores: &Tensor) -> candle_core::Result<Tensor> {
    scores.broadcast_sub(&logsumexp_last(scores)?)
}

/// The retrieval scores `scale · d(z)·q(x)`: `docs [k, d]` constant rows, `query [d]` with its
/// graph. `scale` is the inverse temperature of the inner product (the paper's DPR vectors are
/// unnormalised; a normalised encoder such as MiniLM needs one to make `p(z|x)` anything but
/// uniform over the top k).
pub fn scores(docs: &Tensor, query: &Tensor, scale: f64) -> candle_core::Result<Tensor> {
    docs.matmul(&query.unsqueeze(1)?)?.squeeze(1)? * scale
}

/// The log-probabilities `[n]` of the target tokens `target` under `logits [n, V]` (row i
/// predicts `target[i]`), differentiable with respect to the logits.
pub fn token_logprobs(logits: &Tensor, target: &[u32]) -> candle_core::Result<Tensor> {
    let logits = logits.to_dtype(DType::F32)?;
    let idx = Tensor::new(target, logits.device())?.unsqueeze(1)?;
    let picked = logits.gather(&idx, 1)?.squeeze(1)?;
    picked - logsumexp_last(&logits)?.squeeze(1)?
}

/// RAG-Sequence's negative log-likelihood `−log Σ_z p(z|x) Π_i p(y_i|x,z,y<i)` from
/// `log_prior [k]` and `token_lp [k, n]`.
pub fn rag_sequence_nll(log_prior: &Tensor, token_lp: &Tensor) -> candle_core::Result<Tensor> {
    let per_doc = (log_prior + token_lp.sum(1)?)?;
    logsumexp_last(&per_doc)?.squeeze(0)?.neg()
}

/// RAG-Token's negative log-likelihood `−Σ_i log Σ_z p(z|x) p(y_i|x,z,y<i)`.
pub fn rag_token_nll(log_prior: &Tensor, token_lp: &Tensor) -> candle_core::Result<Tensor> {
    let joint = token_lp.broadcast_add(&log_prior.unsqueeze(1)?)?; // [k, n]
    logsumexp_last(&joint.t()?.contiguous()?)?.sum_all()?.neg()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::marginal::{
        doc_log_prior, rag_sequence_from_token_logprobs, rag_token_from_token_logprobs,
    };
    use candle_core::{Device, Var};

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() <= 1e-5 + 1e-5 * b.abs(), "{a} vs {b}");
    }

    fn fixture() -> (Vec<f64>, Vec<Vec<f64>>) {
        let scores = vec![0.3, -1.2, 2.0, 0.7];
        let lp = vec![
            vec![-0.5, -2.0, -0.1],
            vec![-3.0, -0.2, -1.5],
            vec![-0.05, -0.9, -4.0],
            vec![-1.1, -1.1, -0.3],
        ];
        (scores, lp)
    }

    fn t1(v: &[f64]) -> Tensor {
        let f: Vec<f32> = v.iter().map(|&x| x as f32).collect();
        Tensor::new(f.as_slice(), &Device::Cpu).unwrap()
    }

    fn t2(m: &[Vec<f64>]) -> Tensor {
        let f: Vec<f32> = m.iter().flatten().map(|&x| x as f32).collect();
        Tensor::from_vec(f, (m.len(), m[0].len()), &Device::Cpu).unwrap()
    }

    fn scalar(t: &Tensor) -> f64 {
        t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
    }

    #[test]
    fn the_tensor_marginals_equal_the_scoring_functions() {
        let (s, lp) = fixture();
        let prior = doc_log_prior(&s);
        let tp = log_prior(&t1(&s)).unwrap();
        for (a, b) in tp.to_vec1::<f32>().unwrap().iter().zip(&prior) {
            close(*a as f64, *b);
        }
        let seq = rag_sequence_nll(&tp, &t2(&lp)).unwrap();
        close(scalar(&seq), -rag_sequence_from_token_logprobs(&prior, &lp));
        let tok = rag_token_nll(&tp, &t2(&lp)).unwrap();
        close(scalar(&tok), -rag_token_from_token_logprobs(&prior, &lp));
    }

    #[test]
    fn the_prior_gradient_is_prior_minus_posterior() {
        // d(−log Σ_z p(z) p(y|z)) / d s_z = p(z|x) − p(z|x, y) for RAG-Sequence.
        let (s, lp) = fixture();
        let sv = Var::from_tensor(&t1(&s)).unwrap();
        let nll = rag_sequence_nll(&log_prior(sv.as_tensor()).unwrap(), &t2(&lp)).unwrap();
        let g = nll.backward().unwrap();
        let grad = g.get(sv.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        let prior = doc_log_prior(&s);
        let joint: Vec<f64> = prior
            .iter()
            .zip(&lp)
            .map(|(p, l)| p + l.iter().sum::<f64>())
            .collect();
        let z = crate::marginal::logsumexp(&joint);
        for i in 0..s.len() {
            close(grad[i] as f64, prior[i].exp() - (joint[i] - z).exp());
        }
    }

    #[test]
    fn token_logprobs_are_log_softmax_picks() {
        let logits = t2(&[vec![1.0, 2.0, 0.5], vec![-1.0, 0.0, 3.0]]);
        let lp = token_logprobs(&logits, &[1, 0])
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let ls = |row: [f64; 3], i: usize| row[i] - row.iter().map(|x| x.exp()).sum::<f64>().ln();
        close(lp[0] as f64, ls([1.0, 2.0, 0.5], 1));
        close(lp[1] as f64, ls([-1.0, 0.0, 3.0], 0));
    }

    #[test]
    fn scores_are_scaled_inner_products() {
        let docs = t2(&[vec![1.0, 0.0], vec![0.6, 0.8]]);
        let q = t1(&[0.5, 0.5]);
        let s = scores(&docs, &q, 20.0).unwrap().to_vec1::<f32>().unwrap();
        close(s[0] as f64, 10.0);
        close(s[1] as f64, 14.0);
    }
}
