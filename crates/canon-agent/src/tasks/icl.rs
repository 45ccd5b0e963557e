//! `icl-map`: the synthetic in-context mapping task for models trained for it, and the bursty
//! training text those models learn from.

use super::*;

/// Keys of the in-context mapping task: a question's first letter decides its answer.
pub const ICL_KEYS: &[u8] = b"abcdefgh";
/// Letters that follow the key in a question and do not matter to the answer.
pub const ICL_NOISE: &[u8] = b"ijklmnopqrstuvwxyz";

/// A mapping drawn at random: the answer of each key, the key followed by its digit (`c7`; keys
/// may share a digit). Repeating the key puts the digit right after a token that names it, the
/// pattern an induction head completes, so a small model can learn to read the mapping from the
/// demonstrations within a short training run.
fn icl_mapping(rng: &mut StdRng) -> Vec<String> {
    ICL_KEYS
        .iter()
        .map(|&k| format!("{}{}", char::from(k), rng.random_range(0..10u8)))
        .collect()
}

/// A question: a key and two noise letters (`cqx`); returns the key's index and the question.
fn icl_question(rng: &mut StdRng) -> (usize, String) {
    let k = rng.random_range(0..ICL_KEYS.len());
    icl_question_with(k, rng)
}

/// A question on key `k`.
fn icl_question_with(k: usize, rng: &mut StdRng) -> (usize, String) {
    let mut q = String::from(char::from(ICL_KEYS[k]));
    for _ in 0..2 {
        q.push(char::from(ICL_NOISE[rng.random_range(0..ICL_NOISE.len())]));
    }
    (k, q)
}

/// Training text for in-context learning: `sequences` blocks, each `demos` demonstrations
/// (`Q: cqx\nA: c7\n\n`, the few-shot prompt format) of its own randomly drawn mapping from the
/// first letter to a digit, blocks separated by a `===` line. Only the demonstrations of the same
/// block tell which digit a key has, so the model can learn the task only in context.
///
/// `keys` sets how many distinct keys a block's questions use, drawn per block between its
/// bounds (a random subset of the 8; `8..=8` uses them all): fewer keys make a block "bursty"
/// (Chan et al., 2022), each key recurring more often, so more of the block's digits can be read
/// from its earlier demonstrations.
pub fn icl_training_text(
    sequences: usize,
    demos: usize,
    keys: std::ops::RangeInclusive<usize>,
    seed: u64,
) -> String {
    let mut rng = StdRng::seed_from_u64(seed);
    let all_keys = keys == (ICL_KEYS.len()..=ICL_KEYS.len());
    let mut s = String::new();
    for _ in 0..sequences {
        let m = icl_mapping(&mut rng);
        let subset: Vec<usize> = if all_keys {
            (0..ICL_KEYS.len()).collect()
        } else {
            let n = rng.random_range(keys.clone());
            let mut ks: Vec<usize> = (0..ICL_KEYS.len()).collect();
            ks.shuffle(&mut rng);
            ks.truncate(n);
            ks
        };
        for _ in 0..demos {
            // Every key by default (the stream of the original texts, which drew keys this way).
            let (k, q) = if all_keys {
                icl_question(&mut rng)
            } else {
                let k = subset[rng.random_range(0..subset.len())];
                icl_question_with(k, &mut rng)
            };
            s.push_str(&format_demo(&Item {
                question: q,
                options: Vec::new(),
                answer: m[k].clone(),
            }));
        }
        s.push_str("===\n\n");
    }
    s
}

/// The `icl-map` task: one mapping drawn from `seed` (held out from training, whose text is drawn
/// from another seed), `train` demonstration items and `test` items, all with distinct questions;
/// free-form answers (the key and its digit, `c7`).
pub fn icl_task(train: usize, test: usize, seed: u64) -> Result<Task> {
    let distinct = ICL_KEYS.len() * ICL_NOISE.len() * ICL_NOISE.len();
    if train + test > distinct {
        return Err(AgentError::Task(format!(
            "icl-map: expected at most {distinct} items, asked for {}",
            train + test
        )));
    }
    let mut rng = StdRng::seed_from_u64(seed ^ 0x1C1_7A5C);
    let m = icl_mapping(&mut rng);
    let mut seen = HashSet::new();
    let mut items = Vec::new();
    while items.len() < train + test {
        let (k, q) = icl_question(&mut rng);
        if seen.insert(q.clone()) {
            items.push(Item {
                question: q,
                options: Vec::new(),
                answer: m[k].clone(),
            });
        }
    }
    let test_items = items.split_off(train);
    Ok(Task {
        name: "icl-map".into(),
        train: items,
        test: test_items,
    })
}
