//! Direct Preference Optimization (Rafailov et al., 2023) on the reward model's preference pairs:
//! the policy (initialised from SFT) against the frozen SFT reference, loss
//! `−log σ(β[(log π(y_w|x) − log π_ref(y_w|x)) − (log π(y_l|x) − log π_ref(y_l|x))])` with
//! sequence log-probabilities summed over the response tokens (EOS included). No reward model,
//! no sampling during training.

use candle_core::{Device, Tensor};
use canon_nn::SplitMix64;
use canon_train::{BatchLoss, Objective};

use crate::eval::{PolicyEval, evaluate_policy};
use crate::lm::{Lm, pad, response_logprob_sums, token_logprobs};
use crate::losses::dpo_loss;
use crate::rm::Group;
use crate::sft::draw;
use crate::task::Problem;
use crate::{Result, data_err};

/// One preference pair with its reference log-probabilities.
#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    pub chosen: Vec<u32>,
    pub rejected: Vec<u32>,
    pub prompt_len: usize,
    pub ref_chosen: f64,
    pub ref_rejected: f64,
}

/// Sequence log-probabilities of the responses, `[n]` (graph kept).
pub fn sequence_logprobs(lm: &Lm, seqs: &[Vec<u32>], prompt_len: &[usize]) -> Result<Tensor> {
    let (ids, _) = pad(seqs)?;
    let lp = token_logprobs(&lm.logits(&lm.hidden(&ids)?)?, &ids)?;
    let len: Vec<usize> = seqs.iter().map(Vec::len).collect();
    response_logprob_sums(&lp, prompt_len, &len)
}

/// Every ranked pair of every group, with the reference's log-probabilities.
pub fn pairs_from_groups(reference: &Lm, groups: &[Group]) -> Result<Vec<Pair>> {
    let mut out = Vec::new();
    for g in groups {
        let seqs = g.sequences();
        let pl = g.problem.prompt_ids().len();
        let pairs = g.pairs();
        if pairs.is_empty() {
            continue;
        }
        let lp: Vec<f32> = sequence_logprobs(reference, &seqs, &vec![pl; seqs.len()])?.to_vec1()?;
        for (w, l) in pairs {
            out.push(Pair {
                chosen: seqs[w].clone(),
                rejected: seqs[l].clone(),
                prompt_len: pl,
                ref_chosen: lp[w] as f64,
                ref_rejected: lp[l] as f64,
            });
        }
    }
    if out.is_empty() {
        return Err(data_err("DPO: no ranked pair among the groups"));
    }
    Ok(out)
}

/// DPO on the engine; evaluation samples the test prompts and compares with SFT.
pub struct DpoObjective<'a> {
    pub policy: &'a Lm,
    pub pairs: &'a [Pair],
    pub batch: usize,
    pub beta: f64,
    pub test: &'a [Problem],
    pub baseline: &'a PolicyEval,
    pub eval_seed: u64,
}

impl Objective for DpoObjective<'_> {
    fn train_batch(&mut self, rng: &mut SplitMix64, _index: u64) -> Result<BatchLoss> {
        let batch = draw(self.pairs, self.batch, rng);
        let n = batch.len();
        let mut seqs: Vec<Vec<u32>> = batch.iter().map(|p| p.chosen.clone()).collect();
        seqs.extend(batch.iter().map(|p| p.rejected.clone()));
        let pl: Vec<usize> = (0..2 * n).map(|i| batch[i % n].prompt_len).collect();
        let lp = sequence_logprobs(self.policy, &seqs, &pl)?;
        let pi_w = lp.narrow(0, 0, n)?;
        let pi_l = lp.narrow(0, n, n)?;
        let rw: Vec<f32> = batch.iter().map(|p| p.ref_chosen as f32).collect();
        let rl: Vec<f32> = batch.iter().map(|p| p.ref_rejected as f32).collect();
        let ref_w = Tensor::from_vec(rw, n, &Device::Cpu)?;
        let ref_l = Tensor::from_vec(rl, n, &Device::Cpu)?;
        let total = dpo_loss(&pi_w, &pi_l, &ref_w, &ref_l, self.beta)?;
        let margin: Vec<f32> = (((&pi_w - &ref_w)? - (&pi_l - &ref_l)?)? * self.beta)?
            .detach()
            .to_vec1()?;
        let acc = margin.iter().filter(|&&m| m > 0.0).count() as f64 / n as f64;
        let mean_margin = margin.iter().map(|&m| m as f64).sum::<f64>() / n as f64;
        Ok(BatchLoss {
            loss: total.to_scalar::<f32>()? as f64,
            total,
            tokens: seqs.iter().map(Vec::len).sum(),
            extra: vec![
                ("reward_accuracy".into(), acc),
                ("reward_margin".into(), mean_margin),
            ],
        })
    }

    fn evaluate(&mut self) -> Result<Vec<(String, f64)>> {
        let e = evaluate_policy(self.policy, self.test, self.eval_seed)?;
        let mut m = e.metrics("eval_");
        m.push(("eval_win_rate".into(), e.win_rate(self.baseline)));
        Ok(m)
    }
}
