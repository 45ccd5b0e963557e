use super::*;
use crate::react_data::Page;
use crate::tools::{ToolError, ToolSpec};
use serde_json::{Value, json};
use std::time::Duration;

fn wiki() -> Arc<Wiki> {
    Arc::new(Wiki::new(vec![
        Page {
            title: "coreutils".into(),
            text: "coreutils is a Debian package: GNU core utilities. Its version is 9.1-1. It is maintained by Michael Stone. It belongs to section utils. Its priority is required. It depends on libc6, libacl1. It provides the commands cat, ls.".into(),
        },
        Page {
            title: "libc6".into(),
            text: "libc6 is a Debian package: GNU C Library. Its version is 2.36-9. It is maintained by GNU Libc Maintainers.".into(),
        },
        Page {
            title: "ls".into(),
            text: "ls is a command: list directory contents. The command ls is provided by the package coreutils.".into(),
        },
    ]))
}

fn question() -> Question {
    Question {
        id: "dep_version:coreutils".into(),
        split: "test".into(),
        kind: "dep_version".into(),
        entity: "coreutils".into(),
        question: "What is the version of the first package that coreutils depends on?".into(),
        answer: "2.36-9".into(),
        path: vec![
            "Search[coreutils]".into(),
            "Lookup[depends]".into(),
            "Search[libc6]".into(),
            "Finish[2.36-9]".into(),
        ],
        facts: vec!["a".into(), "b".into(), "c".into(), "d".into()],
    }
}

/// Answers each call with the next scripted text; records the prompts.
struct Scripted {
    outs: Vec<String>,
    prompts: Vec<String>,
}
impl AgentLm for Scripted {
    fn complete(
        &mut self,
        prompt: &str,
        stop: &[String],
        _: usize,
        _: Option<&[String]>,
    ) -> Result<String> {
        self.prompts.push(prompt.to_string());
        let mut o = if self.outs.is_empty() {
            String::new()
        } else {
            self.outs.remove(0)
        };
        for s in stop {
            if let Some(i) = o.find(s.as_str()) {
                o.truncate(i);
            }
        }
        Ok(o)
    }
}

#[test]
fn environment_matches_the_paper_api() {
    let env = WikiEnv::new(wiki());
    assert_eq!(
        env.search("Coreutils"),
        "coreutils is a Debian package: GNU core utilities. Its version is 9.1-1. It is maintained by Michael Stone. It belongs to section utils. Its priority is required."
    );
    assert_eq!(
        env.lookup("depends"),
        "(Result 1 / 1) It depends on libc6, libacl1."
    );
    assert_eq!(env.lookup("depends"), "No more results.");
    assert_eq!(
        env.lookup("version"),
        "(Result 1 / 1) Its version is 9.1-1."
    );
    assert!(
        env.search("libc")
            .starts_with("Could not find [libc]. Similar: ['libc6'"),
        "{}",
        env.search("libc")
    );
    assert_eq!(
        env.lookup("version"),
        "No page is open: search for an entity first."
    );
}

#[test]
fn scripted_model_reaches_finish_with_the_paper_format() {
    let env = WikiEnv::new(wiki());
    let tools = episode_tools(&env, &[], Default::default());
    let mut lm = Scripted {
        outs: vec![
            " I need coreutils.\nAction 1: Search[coreutils]\nObservation 1: hallucinated".into(),
            " Dependencies are further down.\nAction 2: lookup[depends]".into(),
            " The first is libc6.\nAction 3: Search[libc6]".into(),
            " So the answer is 2.36-9.\nAction 4: Finish[2.36-9]".into(),
        ],
        prompts: vec![],
    };
    let cfg = LoopConfig {
        constrained: false,
        ..Default::default()
    };
    let ep = run_episode(&mut lm, &tools, &[], &question(), &cfg).unwrap();
    assert!(ep.finished && ep.exact_match, "{ep:?}");
    assert_eq!(ep.steps.len(), 4);
    assert_eq!(
        ep.steps[1].observation,
        "(Result 1 / 1) It depends on libc6, libacl1."
    );
    assert_eq!(
        ep.steps[2].observation,
        "libc6 is a Debian package: GNU C Library. Its version is 2.36-9. It is maintained by GNU Libc Maintainers."
    );
    // the model's own "Observation 1:" was cut by the stop string; the environment's replaced it
    let last = lm.prompts.last().unwrap();
    assert!(last.contains("Thought 1: I need coreutils.\nAction 1: Search[coreutils]\nObservation 1: coreutils is a Debian package"), "{last}");
    assert!(last.ends_with("Observation 3: libc6 is a Debian package: GNU C Library. Its version is 2.36-9. It is maintained by GNU Libc Maintainers.\nThought 4:"), "{last}");
    assert!(!last.contains("hallucinated"));
}

#[test]
fn malformed_and_unknown_actions_are_observations_and_the_step_cap_holds() {
    let env = WikiEnv::new(wiki());
    let tools = episode_tools(&env, &[], Default::default());
    let mut lm = Scripted {
        outs: vec![
            " no action here".into(),              // split fails: re-query the action
            "Search coreutils".into(),             // the re-queried action is malformed
            " hm\nAction 2: Browse[libc6]".into(), // unknown tool
            " again\nAction 3: Search[ls]".into(),
        ],
        prompts: vec![],
    };
    let cfg = LoopConfig {
        constrained: false,
        max_steps: 3,
        ..Default::default()
    };
    let ep = run_episode(&mut lm, &tools, &[], &question(), &cfg).unwrap();
    assert!(
        lm.prompts[1].ends_with("Thought 1: no action here\nAction 1:"),
        "{}",
        lm.prompts[1]
    );
    assert_eq!(ep.steps[0].observation, "Invalid action: Search coreutils");
    assert_eq!(ep.steps[1].observation, "Invalid action: Browse[libc6]");
    assert!(ep.steps[2].observation.starts_with("ls is a command"));
    assert!(!ep.finished && !ep.exact_match && ep.prediction.is_empty() && ep.steps.len() == 3);
}

struct Hangs;
impl Tool for Hangs {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "Wait".into(),
            description: "never answers in time".into(),
            parameters: json!({"type": "object", "properties": {"x": {"type": "string"}}, "required": ["x"]}),
        }
    }
    fn call(&self, _: &Value) -> std::result::Result<String, ToolError> {
        std::thread::sleep(Duration::from_secs(2));
        Ok("late".into())
    }
}

#[test]
fn a_tool_timeout_is_an_observation_and_the_loop_goes_on() {
    let env = WikiEnv::new(wiki());
    let limits = crate::tools::Limits {
        timeout: Duration::from_millis(100),
        max_output_chars: 500,
    };
    let tools = episode_tools(
        &env,
        &[Arc::new(Hangs), Arc::new(crate::tools::Calculator)],
        limits,
    );
    let mut lm = Scripted {
        outs: vec![
            " wait\nAction 1: Wait[1]".into(),
            " compute\nAction 2: calculator[2 * (3 + 4)]".into(),
            " bad\nAction 3: calculator[2 +]".into(),
            " done\nAction 4: Finish[2.36-9]".into(),
        ],
        prompts: vec![],
    };
    let cfg = LoopConfig {
        constrained: false,
        ..Default::default()
    };
    let ep = run_episode(&mut lm, &tools, &[], &question(), &cfg).unwrap();
    assert_eq!(
        ep.steps[0].observation,
        "error: the tool did not answer within 0.1 s"
    );
    assert_eq!(ep.steps[1].observation, "14");
    assert!(
        ep.steps[2]
            .observation
            .starts_with("error: expected a number"),
        "{:?}",
        ep.steps[2]
    );
    assert!(ep.finished && ep.exact_match);
}

#[test]
fn act_and_cot_modes() {
    let env = WikiEnv::new(wiki());
    let tools = episode_tools(&env, &[], Default::default());
    let mut lm = Scripted {
        outs: vec![" Search[libc6]".into(), " Finish[2.36-9]".into()],
        prompts: vec![],
    };
    let cfg = LoopConfig {
        mode: Mode::Act,
        constrained: false,
        ..Default::default()
    };
    let ep = run_episode(&mut lm, &tools, &[], &question(), &cfg).unwrap();
    assert!(ep.exact_match && ep.steps.iter().all(|s| s.thought.is_none()));
    assert!(lm.prompts[1].ends_with("Action 1: Search[libc6]\nObservation 1: libc6 is a Debian package: GNU C Library. Its version is 2.36-9. It is maintained by GNU Libc Maintainers.\nAction 2:"));
    let mut lm = Scripted {
        outs: vec![" It is libc6 at 2.36-9.\nAnswer: 2.36-9\nQuestion: next".into()],
        prompts: vec![],
    };
    let cfg = LoopConfig {
        mode: Mode::Cot,
        ..Default::default()
    };
    let ep = run_episode(&mut lm, &tools, &[], &question(), &cfg).unwrap();
    assert_eq!(ep.prediction, "2.36-9");
    assert!(ep.exact_match && ep.steps.is_empty());
}

#[test]
fn demonstrations_replay_the_oracle_path() {
    let env = WikiEnv::new(wiki());
    let d = demonstration(&question(), &env, Mode::React);
    assert!(d.starts_with("Question: What is the version of the first package that coreutils depends on?\nThought 1: a\nAction 1: Search[coreutils]\nObservation 1: coreutils is a Debian"));
    assert!(d.contains("Thought 2: b\nAction 2: Lookup[depends]\nObservation 2: (Result 1 / 1) It depends on libc6, libacl1.\n"));
    assert!(
        d.ends_with("Action 4: Finish[2.36-9]\nObservation 4: Episode finished, answer: 2.36-9\n"),
        "{d}"
    );
    let a = demonstration(&question(), &env, Mode::Act);
    assert!(!a.contains("Thought"));
}

#[test]
fn answers_are_normalised_like_squad() {
    assert!(exact_match("The  Eiffel Tower.", "eiffel tower"));
    assert!(exact_match("2.36-9", "2.36-9."));
    assert!(!exact_match("2.36-8", "2.36-9"));
    assert_eq!(cot_answer("x. So the answer is 9.1-1.\nmore"), "9.1-1");
    assert_eq!(cot_answer("nothing"), "");
}

#[test]
fn action_grammar_prefixes() {
    let names: Vec<String> = ["Search", "Lookup", "Finish"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(action_prefix(" Sea", &names, 10), Some(false));
    assert_eq!(action_prefix(" search[ls", &names, 10), Some(false));
    assert_eq!(action_prefix(" Search[ls]", &names, 10), Some(true));
    assert_eq!(action_prefix(" Search[ls] x", &names, 10), None);
    assert_eq!(action_prefix(" Search[]", &names, 10), None);
    assert_eq!(action_prefix(" Browse[", &names, 10), None);
    assert_eq!(action_prefix(" Search[a\nb", &names, 10), None);
    assert_eq!(action_prefix(" Search[0123456789a", &names, 10), None);
}

#[test]
fn constraint_masks_tokens_and_ends_after_the_bracket() {
    use canon_infer::{Allowed, TokenConstraint};
    let texts = Arc::new(TokenTexts(
        [
            " Search", "[", "ls", "]", "\n", " hello", "Finish", "]\n", "",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
    ));
    let mut c = ActionConstraint {
        texts,
        names: vec!["Search".into(), "Finish".into()],
        max_arg: 20,
        text: String::new(),
        ids: vec![],
    };
    let Allowed::Mask(m) = c.allowed().unwrap() else {
        panic!()
    };
    let allowed: Vec<usize> = (0..9).filter(|i| m[0] >> i & 1 == 1).collect();
    assert_eq!(allowed, [0, 6]);
    for t in [0, 1, 2] {
        c.commit(t).unwrap();
    }
    let Allowed::Mask(m) = c.allowed().unwrap() else {
        panic!()
    };
    let allowed: Vec<usize> = (0..9).filter(|i| m[0] >> i & 1 == 1).collect();
    assert_eq!(
        allowed,
        [0, 1, 2, 3, 5, 6],
        "the argument takes any text but a newline"
    );
    c.commit(3).unwrap();
    assert_eq!(c.allowed().unwrap(), Allowed::End);
}
