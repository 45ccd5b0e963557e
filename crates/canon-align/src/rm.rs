//! Step 2 of InstructGPT (paper 20): the reward model. The SFT model with a scalar head on the
//! final hidden state of the response's last token; trained on rankings of K sampled responses per
//! prompt, all C(K,2) comparisons of a prompt in one batch element (K forward rows, not C(K,2)
//! pairs), for one epoch; afterwards shifted so the SFT demonstrations score 0 on average.
//!
//! The rankings come from the gold judge (standing in for labellers); tied responses give no pair.

use candle_core::Tensor;
use canon_models::gpt_tasks::gather_extract;
use canon_nn::SplitMix64;
use canon_train::{BatchLoss, Objective};

use crate::lm::{Lm, pad};
use crate::losses::{comparisons, pairwise_loss};
use crate::sft::Example;
use crate::task::{MAX_RESPONSE, Problem, judge, response_text};
use crate::{Result, data_err};

/// One prompt's K responses and their gold scores.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Group {
    pub problem: Problem,
    pub responses: Vec<Vec<u32>>,
    pub scores: Vec<f64>,
}

impl Group {
    /// Prompt + response id sequences.
    pub fn sequences(&self) -> Vec<Vec<u32>> {
        let p = self.problem.prompt_ids();
        self.responses
            .iter()
            .map(|r| {
                let mut s = p.clone();
                s.extend_from_slice(r);
                s
            })
            .collect()
    }
    pub fn pairs(&self) -> Vec<(usize, usize)> {
        comparisons(&self.scores)
    }
}

/// Samples `k` responses per problem from `policy` (temperature 1) and scores them by the judge.
pub fn collect_groups(
    policy: &Lm,
    problems: &[Problem],
    k: usize,
    seed: u64,
) -> Result<Vec<Group>> {
    let mut out = Vec::with_capacity(problems.len());
    for (c, chunk) in problems.chunks(64).enumerate() {
        let prompts: Vec<Vec<u32>> = chunk
            .iter()
            .flat_map(|p| std::iter::repeat_n(p.prompt_ids(), k))
            .collect();
        let resp = policy.sample(&prompts, MAX_RESPONSE, 1.0, seed ^ (c as u64 + 1))?;
        for (i, p) in chunk.iter().enumerate() {
            let responses: Vec<Vec<u32>> = resp[i * k..(i + 1) * k].to_vec();
            let scores = responses
                .iter()
                .map(|r| judge(p, &response_text(r)).score())
                .collect();
            out.push(Group {
                problem: *p,
                responses,
                scores,
            });
        }
    }
    Ok(out)
}

/// The reward of every sequence: the head at its last token, `[n]` (graph kept).
pub fn rewards(rm: &Lm, seqs: &[Vec<u32>]) -> Result<Tensor> {
    let (ids, _) = pad(seqs)?;
    let h = rm.hidden(&ids)?; // [n, t, d]
    let last: Vec<usize> = seqs.iter().map(|s| s.len() - 1).collect();
    let h_last = gather_extract(&h, &last)?; // [n, d]
    rm.head
        .as_ref()
        .ok_or_else(|| data_err("the reward model has no scalar head"))?
        .forward(&h_last)
}

/// Rewards as numbers, in batches (no graph kept).
pub fn score(rm: &Lm, seqs: &[Vec<u32>]) -> Result<Vec<f64>> {
    let mut out = Vec::with_capacity(seqs.len());
    for chunk in seqs.chunks(256) {
        let r: Vec<f32> = rewards(rm, chunk)?.detach().to_vec1()?;
        out.extend(r.iter().map(|&x| x as f64));
    }
    Ok(out)
}

/// Shifts the head so `demos` average 0; returns their mean reward before the shift.
pub fn normalise(rm: &Lm, demos: &[Example]) -> Result<f64> {
    let seqs: Vec<Vec<u32>> = demos.iter().map(|e| e.ids.clone()).collect();
    let r = score(rm, &seqs)?;
    if r.is_empty() {
        return Err(data_err("reward normalisation: no demonstrations"));
    }
    let mean = r.iter().sum::<f64>() / r.len() as f64;
    rm.head
        .as_ref()
        .ok_or_else(|| data_err("the reward model has no scalar head"))?
        .shift(-mean)?;
    Ok(mean)
}

/// Held-out pair accuracy (`r_w > r_l` over every ranked pair) and mean pairwise loss.
pub fn pair_accuracy(rm: &Lm, groups: &[Group]) -> Result<(f64, f64)> {
    let (mut right, mut total, mut loss, mut ng) = (0usize, 0usize, 0.0, 0usize);
    for g in groups {
        let pairs = g.pairs();
        if pairs.is_empty() {
            continue;
        }
        let r_t = rewards(rm, &g.sequences())?.detach();
        let r: Vec<f32> = r_t.to_vec1()?;
        right += pairs.iter().filter(|(w, l)| r[*w] > r[*l]).count();
        total += pairs.len();
        loss += pairwise_loss(&r_t, &pairs)?.to_scalar::<f32>()? as f64;
        ng += 1;
    }
    if total == 0 {
        return Err(data_err("no ranked pair among the held-out groups"));
    }
    Ok((right as f64 / total as f64, loss / ng as f64))
}

/// The RM objective: each micro-batch is `batch` prompts, each with all its comparisons; the
/// loss is the mean over prompts of their pairwise losses. Groups are visited in a seeded order,
/// one epoch over `max_steps · batch` prompts.
pub struct RmObjective<'a> {
    pub rm: &'a Lm,
    pub train: Vec<&'a Group>,
    pub val: &'a [Group],
    pub batch: usize,
}

impl<'a> RmObjective<'a> {
    /// Keeps only groups with at least one ranked pair, shuffled by `seed`.
    pub fn new(rm: &'a Lm, train: &'a [Group], val: &'a [Group], batch: usize, seed: u64) -> Self {
        let mut g: Vec<&Group> = train.iter().filter(|g| !g.pairs().is_empty()).collect();
        let mut rng = SplitMix64::new(seed);
        for i in (1..g.len()).rev() {
            g.swap(i, rng.below(i + 1));
        }
        Self {
            rm,
            train: g,
            val,
            batch,
        }
    }
}

impl Objective for RmObjective<'_> {
    fn train_batch(&mut self, _rng: &mut SplitMix64, index: u64) -> Result<BatchLoss> {
        let n = self.train.len();
        if n == 0 {
            return Err(data_err(
                "reward model: no training prompt has a ranked pair",
            ));
        }
        let start = (index as usize * self.batch) % n;
        let groups: Vec<&Group> = (0..self.batch)
            .map(|i| self.train[(start + i) % n])
            .collect();
        let seqs: Vec<Vec<u32>> = groups.iter().flat_map(|g| g.sequences()).collect();
        let r = rewards(self.rm, &seqs)?; // [Σ K]
        let mut total: Option<Tensor> = None;
        let (mut right, mut count, mut off) = (0usize, 0usize, 0usize);
        let rv: Vec<f32> = r.detach().to_vec1()?;
        for g in &groups {
            let k = g.responses.len();
            let pairs = g.pairs();
            let l = pairwise_loss(&r.narrow(0, off, k)?, &pairs)?;
            right += pairs
                .iter()
                .filter(|(w, l)| rv[off + w] > rv[off + l])
                .count();
            count += pairs.len();
            total = Some(match total {
                Some(t) => (t + l)?,
                None => l,
            });
            off += k;
        }
        let total = (total.ok_or_else(|| data_err("empty RM batch"))? / groups.len() as f64)?;
        Ok(BatchLoss {
            loss: total.to_scalar::<f32>()? as f64,
            total,
            tokens: seqs.iter().map(Vec::len).sum(),
            extra: vec![("pair_accuracy".into(), right as f64 / count.max(1) as f64)],
        })
    }

    fn evaluate(&mut self) -> Result<Vec<(String, f64)>> {
        let (acc, loss) = pair_accuracy(self.rm, self.val)?;
        Ok(vec![
            ("eval_loss".into(), loss),
            ("eval_pair_accuracy".into(), acc),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lm::{ScalarHead, tiny_config};
    use crate::sft::demonstrations;
    use crate::task::{CharVocab, split};

    #[test]
    fn normalised_rewards_average_zero_on_the_demonstrations() {
        let mut rm = Lm::new_random(tiny_config(CharVocab.size(), 1, 16, 32), 4).unwrap();
        let head = ScalarHead::zeros(16).unwrap();
        head.w
            .set(
                &candle_core::Tensor::ones(
                    (16, 1),
                    candle_core::DType::F32,
                    &candle_core::Device::Cpu,
                )
                .unwrap(),
            )
            .unwrap();
        head.shift(0.7).unwrap();
        rm.head = Some(head);
        let (train, _) = split(1);
        let demos = demonstrations(&train[..20], 2, 3).unwrap();
        let before = normalise(&rm, &demos).unwrap();
        assert!(before.abs() > 1e-3);
        let seqs: Vec<Vec<u32>> = demos.iter().map(|e| e.ids.clone()).collect();
        let r = score(&rm, &seqs).unwrap();
        let mean = r.iter().sum::<f64>() / r.len() as f64;
        assert!(mean.abs() < 1e-5, "{mean}");
    }

    #[test]
    fn groups_pair_only_strictly_ranked_responses() {
        let g = Group {
            problem: Problem { a: 1, b: 2 },
            responses: vec![vec![5, 2], vec![6, 2], vec![7, 2]],
            scores: vec![3.5, 3.5, 0.0],
        };
        assert_eq!(g.pairs(), vec![(0, 2), (1, 2)]);
        assert_eq!(
            g.sequences()[0][..g.problem.prompt_ids().len()],
            g.problem.prompt_ids()[..]
        );
    }
}
