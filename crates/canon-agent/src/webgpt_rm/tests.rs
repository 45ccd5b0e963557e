//! The fixtures shared by the reward model's tests, and the test of the whole path: train,
//! then re-score through the scorer seam.

use super::*;
use crate::browse_run::Answers;
use crate::browser::Quote;

/// Scripted features: whether the answer names the entity the prompt asks about (its id is
/// the gold answer in lower case), whether it cites [2], and two noise dimensions.
struct Scripted;

impl Featurizer for Scripted {
    fn features(&mut self, prompt: &str, answers: &[String]) -> Result<Vec<Vec<f32>>> {
        let who = prompt
            .split("maintains ")
            .nth(1)
            .and_then(|r| r.split('?').next())
            .unwrap_or("")
            .to_string();
        Ok(answers
            .iter()
            .map(|a| {
                let right = a.to_lowercase().starts_with(&who) as u8 as f32;
                let cites = a.contains("[2]") as u8 as f32;
                let h = a
                    .bytes()
                    .fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32));
                vec![right, cites, (h % 97) as f32 / 97.0, (h % 89) as f32 / 89.0]
            })
            .collect())
    }
}

pub(super) fn outcome(gold: &str, answers: &[&str]) -> Outcome {
    let id = gold.to_lowercase();
    let q = |t: &str| Quote {
        title: "t".into(),
        url: "u".into(),
        text: t.into(),
    };
    Outcome {
        id: id.clone(),
        question: format!("Who maintains {id}?"),
        gold: gold.into(),
        turns: Vec::new(),
        quotes: vec![
            q("It is provided by a package."),
            q(&format!("It is maintained by {gold}.")),
        ],
        found: true,
        answer_prompt: format!("Question: who maintains {id}?\nAnswer:"),
        answers: Answers {
            answers: answers.iter().map(|s| s.to_string()).collect(),
            scores: vec![0.0; answers.len()],
            best: None,
        },
    }
}

#[test]
fn the_scorer_seam_picks_the_highest_reward() {
    let mut os = vec![outcome(
        "Alice",
        &["Alice [1]", "Alice [2]", "Bob [2]", "x"],
    )];
    let trained = train(
        &[
            outcome("Alice", &["Alice [1]", "Alice"]),
            outcome("Bob", &["Bob [1]", "Bob [2]"]),
            outcome("Carol", &["Carol [1]"]),
            outcome("Dan", &["Dan [1]", "Dan [2]"]),
            outcome("Eve", &["Eve [2]", "Eve [1]"]),
        ],
        &mut Scripted,
        "scripted",
        FitConfig::default(),
        |_, _| {},
    )
    .unwrap();
    assert!(
        trained.model.train_accuracy > Some(0.99),
        "{:?}",
        trained.model
    );
    let mut rm = RewardScorer {
        head: trained.model.head.clone(),
        features: Scripted,
    };
    rescore(&mut os, &mut rm).unwrap();
    let s = &os[0].answers.scores;
    let top = (0..s.len()).max_by(|&i, &j| s[i].total_cmp(&s[j])).unwrap();
    assert_eq!(os[0].answers.best, Some(top));
    assert!(os[0].answers.answers[top].contains("[2]"));
    // The heuristic through the same seam: the first valid citation wins ties.
    rescore(&mut os, &mut Heuristic).unwrap();
    assert_eq!(os[0].answers.best, Some(0));
    // A head of the wrong width is an error naming both widths.
    let mut narrow = RewardScorer {
        head: RewardHead {
            mean: vec![0.0],
            scale: vec![1.0],
            w: vec![1.0],
        },
        features: Scripted,
    };
    let e = rescore(&mut os, &mut narrow).unwrap_err().to_string();
    assert!(e.contains("reads 1 features, the model gives 4"), "{e}");
}
