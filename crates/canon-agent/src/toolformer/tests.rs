//! Tests of the Toolformer pipeline, texts and inference.

use super::*;

#[test]
fn weights_are_the_papers() {
    let w = weights(8);
    let want = [
        1.0 / 3.0,
        4.0 / 15.0,
        1.0 / 5.0,
        2.0 / 15.0,
        1.0 / 15.0,
        0.0,
        0.0,
        0.0,
    ];
    for (a, b) in w.iter().zip(want) {
        assert!((a - b).abs() < 1e-12, "{w:?}");
    }
    // fewer tokens than the window: normalised over those present
    let w = weights(2);
    assert!((w[0] - 1.0 / 1.8).abs() < 1e-12 && (w[1] - 0.8 / 1.8).abs() < 1e-12);
    assert!((weighted_loss(&[-3.0; 9]) - 3.0).abs() < 1e-12);
}

#[test]
fn filter_decisions_on_known_losses() {
    // (a) the result makes the continuation likely: kept
    let a = Losses {
        none: 4.0,
        no_result: 3.8,
        with_result: 1.0,
    };
    assert!(a.keep(1.0));
    // (b) an irrelevant result: rejected
    let b = Losses {
        none: 4.0,
        no_result: 3.9,
        with_result: 3.6,
    };
    assert!(!b.keep(1.0));
    // (c) the call without its result already helps: L- takes that minimum and rejects it,
    // where L(empty) alone would keep it
    let c = Losses {
        none: 4.0,
        no_result: 2.0,
        with_result: 2.5,
    };
    assert!(4.0 - c.with_result >= 1.0 && !c.keep(1.0));
    assert_eq!(c.minus(), 2.0);
}

/// Characters are tokens; a hand-set table gives log p of the next character given whether
/// the context holds a call with the right result, a call without it, or nothing.
struct Fake;
impl Scorer for Fake {
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(text.chars().map(|c| c as u32).collect())
    }
    fn decode(&self, ids: &[u32]) -> Result<String> {
        Ok(ids.iter().filter_map(|&i| char::from_u32(i)).collect())
    }
    fn logprobs(&mut self, context: &[u32], cont: &[u32]) -> Result<Vec<f64>> {
        let ctx = self.decode(context)?;
        let lp = if ctx.contains("-> 42]") {
            -0.1
        } else if ctx.contains("-> ]") {
            -3.0
        } else if ctx.contains("->") {
            -3.5 // a wrong result
        } else {
            -3.2
        };
        Ok(vec![lp; cont.len()])
    }
    fn next_probs(&mut self, _: &[u32], x: &[u32], _: &[u32]) -> Result<Vec<f64>> {
        Ok((0..x.len())
            .map(|i| if i == 9 { 0.5 } else { 0.01 })
            .collect())
    }
}

fn cand(args: &str, result: &str) -> Candidate {
    Candidate {
        text_id: 0,
        position: Position { token: 9, p: 0.5 },
        offset: 9,
        sampled: format!("Calculator({args})"),
        tool: Some("Calculator".into()),
        args: Some(args.into()),
        result: Some(result.into()),
        losses: None,
        kept: false,
        control: false,
    }
}

#[test]
fn the_filter_keeps_a_call_that_helps_and_drops_one_that_does_not() {
    let texts = vec!["6 * 7 is 42 exactly.".to_string()];
    let mut cs = vec![cand("6 * 7", "42"), cand("6 + 7", "13")];
    filter(&mut Fake, &texts, &mut cs, 1.0).unwrap();
    let l = cs[0].losses.unwrap();
    assert!((l.with_result - 0.1).abs() < 1e-9 && (l.minus() - 3.0).abs() < 1e-9);
    assert!(cs[0].kept && !cs[1].kept, "{cs:?}");
    // a corrupted control is scored (and here dropped) but never inserted
    let mut ctl = vec![corrupted(&cs[0]).unwrap()];
    assert_eq!(ctl[0].result.as_deref(), Some("49"));
    filter(&mut Fake, &texts, &mut ctl, 1.0).unwrap();
    assert!(!ctl[0].kept);
    ctl[0].kept = true;
    assert_eq!(augment(&texts[0], &[&ctl[0]]), None);
    let refs: Vec<&Candidate> = cs.iter().collect();
    assert_eq!(
        augment(&texts[0], &refs).unwrap(),
        "6 * 7 is [Calculator(6 * 7) -> 42] 42 exactly."
    );
    let p = Fake.next_probs(&[1], &[0; 20], &[]).unwrap();
    assert_eq!(top_positions(&p, 0.05, 5), [Position { token: 9, p: 0.5 }]);
}

#[test]
fn positions_are_top_k_above_the_threshold_in_descending_order() {
    let p = [0.9, 0.2, 0.04, 0.3, 0.06, 0.3, 0.5];
    let v = top_positions(&p, 0.05, 3);
    let idx: Vec<usize> = v.iter().map(|x| x.token).collect();
    assert_eq!(idx, [6, 3, 5]);
    assert!(v.iter().all(|x| x.p > 0.05));
}

#[test]
fn annotated_text_round_trips() {
    let t = format!(
        "Out of 1400, {} 400 passed.",
        linearize("Calculator", "400 / 1400", Some("0.29"))
    );
    assert_eq!(
        t,
        "Out of 1400, [Calculator(400 / 1400) -> 0.29] 400 passed."
    );
    let p = parse_annotated(&t);
    assert_eq!(
        p,
        [(13, "Calculator".into(), "400 / 1400".into(), "0.29".into())]
    );
    assert_eq!(
        parse_call("Calculator(2 * (3 + 4))] rest"),
        Some(("Calculator".into(), "2 * (3 + 4)".into()))
    );
    assert_eq!(parse_call("no call"), None);
}

#[test]
fn arithmetic_texts_compute_their_answers() {
    let status = "Package: a\nInstalled-Size: 300\n\nPackage: b\nInstalled-Size: 120\n\nPackage: c\nInstalled-Size: 7\n";
    let ts = arithmetic_texts(status, 40, 1, 2);
    assert!(ts.len() >= 20, "{}", ts.len());
    for t in &ts {
        let v = crate::tools::evaluate(&t.expression).unwrap();
        assert!(v.decimal(2) == t.answer, "{t:?}");
        assert!(
            t.text.starts_with(&t.prefix) && t.text.contains(&format!(" {} ", t.answer))
                || t.text.ends_with(&format!(" {}.", t.answer))
        );
    }
    let p = calculator_prompt(&[&ts[0]], "x");
    assert!(p.contains(&format!(
        "[Calculator({})] {}",
        ts[0].expression, ts[0].answer
    )));
    assert!(p.ends_with("Input:\nx\nOutput:\n"));
}

/// Word-level tokens with single characters as the fallback; the next token's logits depend
/// on how the context ends (a table), so a test can place `[` at any rank.
struct Steps {
    vocab: Vec<String>,
    rules: Vec<(&'static str, Vec<(&'static str, f32)>)>,
    ctx: Vec<u32>,
    starts: Vec<String>,
}
impl Steps {
    fn new(rules: Vec<(&'static str, Vec<(&'static str, f32)>)>) -> Steps {
        let mut vocab: Vec<String> = vec!["<end>".into(), "[".into(), " [".into()];
        for (_, outs) in &rules {
            for (t, _) in outs {
                if !vocab.iter().any(|v| v == t) {
                    vocab.push(t.to_string());
                }
            }
        }
        for c in 32u8..127 {
            let c = (c as char).to_string();
            if !vocab.contains(&c) {
                vocab.push(c);
            }
        }
        vocab.push("\n".into());
        Steps {
            vocab,
            rules,
            ctx: vec![],
            starts: vec![],
        }
    }
    fn logits(&self) -> Result<Vec<f32>> {
        let text = self.decode(&self.ctx)?;
        // `[` and ` [` are unlikely unless a rule says otherwise
        let mut l = vec![0.0; self.vocab.len()];
        l[1] = -5.0;
        l[2] = -5.0;
        if let Some((_, outs)) = self.rules.iter().find(|(end, _)| text.ends_with(end)) {
            for (t, v) in outs {
                l[self.vocab.iter().position(|x| x == t).unwrap()] = *v;
            }
        } else {
            l[0] = 1.0; // nothing matches: end
        }
        Ok(l)
    }
}
impl StepLm for Steps {
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = vec![];
        let mut rest = text;
        while !rest.is_empty() {
            let (i, v) = self
                .vocab
                .iter()
                .enumerate()
                .skip(1)
                .filter(|(_, v)| rest.starts_with(v.as_str()))
                .max_by_key(|(_, v)| v.len())
                .unwrap();
            ids.push(i as u32);
            rest = &rest[v.len()..];
        }
        Ok(ids)
    }
    fn decode(&self, ids: &[u32]) -> Result<String> {
        Ok(ids
            .iter()
            .map(|&i| self.vocab[i as usize].as_str())
            .collect())
    }
    fn is_end(&self, id: u32) -> bool {
        id == 0
    }
    fn start(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        self.starts.push(self.decode(ids)?);
        self.ctx = ids.to_vec();
        self.logits()
    }
    fn push(&mut self, id: u32) -> Result<Vec<f32>> {
        self.ctx.push(id);
        self.logits()
    }
}

fn share_model() -> Steps {
    // after "a share of", ` [` is the 3rd most likely token; " 0.5" the argmax
    Steps::new(vec![
        (
            "a share of",
            vec![(" 0.5", 9.0), (" about", 8.5), (" [", 8.0), (" the", 1.0)],
        ),
        (" [", vec![("Calculator(400 / 1400)", 9.0)]),
        ("1400)", vec![(" ->", 9.0)]),
        ("0.29]", vec![(" 0.29", 9.0), (" [", 8.9)]),
        (" 0.29", vec![(" of them.", 9.0)]),
        (" 0.5", vec![(" of them.", 9.0)]),
        (" about", vec![(" half.", 9.0)]),
        ("them.", vec![("\n", 9.0)]),
        ("half.", vec![("\n", 9.0)]),
    ])
}

#[test]
fn a_call_starts_where_the_api_token_is_in_the_top_k() {
    let api = [1u32, 2];
    let prompt = "Out of 1400, 400 passed: a share of";
    let mut calls = vec![];
    let mut run = |t: &str, a: &str| {
        calls.push(format!("{t}({a})"));
        run_call(t, a, None, &Toolbox::new(Default::default()), 2).unwrap()
    };
    // k = 10 (the paper's): ` [` ranks 3rd, so the call starts, runs once on `->`, and its
    // result is inserted; the second ` [` after the call is not a call
    let mut lm = share_model();
    let r = decode_with_calls(&mut lm, prompt, &api, CallRule::TopK(10), 40, &mut run).unwrap();
    assert_eq!(r.text, " [Calculator(400 / 1400) -> 0.29] 0.29 of them.");
    assert_eq!(
        r.call,
        Some(("Calculator".into(), "400 / 1400".into(), "0.29".into()))
    );
    assert_eq!(
        lm.starts[1],
        format!("{prompt} [Calculator(400 / 1400) -> 0.29]")
    );
    // k = 3 still starts it; k = 2 and k = 1 (greedy) do not
    let mut lm = share_model();
    let r = decode_with_calls(&mut lm, prompt, &api, CallRule::TopK(3), 40, &mut run).unwrap();
    assert!(r.call.is_some());
    for rule in [CallRule::TopK(2), CallRule::TopK(1), CallRule::Off] {
        let mut lm = share_model();
        let r = decode_with_calls(&mut lm, prompt, &api, rule, 40, &mut run).unwrap();
        assert_eq!(
            (r.text.as_str(), &r.call),
            (" 0.5 of them.", &None),
            "{rule:?}"
        );
    }
    // greedy with `[` the argmax starts a call at k = 1; disabled never writes `[`
    let top = || {
        Steps::new(vec![
            ("share of", vec![(" [", 9.0), (" about", 8.0)]),
            (" [", vec![("Calculator(400 / 1400)", 9.0)]),
            ("1400)", vec![(" ->", 9.0)]),
            ("0.29]", vec![(" 0.29", 9.0)]),
            (" about", vec![(" half.", 9.0)]),
        ])
    };
    let r = decode_with_calls(&mut top(), prompt, &api, CallRule::TopK(1), 40, &mut run);
    assert!(r.unwrap().call.is_some());
    let r = decode_with_calls(&mut top(), prompt, &api, CallRule::Disabled, 40, &mut run);
    assert_eq!(r.unwrap().text, " about half.");
    assert_eq!(calls.len(), 3);
    // a call closed without `->` is abandoned and not run
    let mut lm = Steps::new(vec![
        ("share of", vec![(" [", 9.0)]),
        (" [", vec![("Calculator(400 / 1400)", 9.0)]),
        ("1400)", vec![("]", 9.0)]),
        ("1400)]", vec![(" half.", 9.0)]),
    ]);
    let r = decode_with_calls(
        &mut lm,
        prompt,
        &api,
        CallRule::TopK(10),
        40,
        &mut |_, _| unreachable!(),
    )
    .unwrap();
    assert_eq!(
        (r.text.as_str(), r.call),
        (" [Calculator(400 / 1400)] half.", None)
    );
    assert!(in_top_k(&[1.0, 3.0, 2.0], 2, 2) && !in_top_k(&[1.0, 3.0, 2.0], 0, 2));
}

#[test]
fn calendar_texts_state_their_date_and_the_calendar_returns_it() {
    let status = "Package: a\nInstalled-Size: 3\n\nPackage: b\nInstalled-Size: 1\n";
    let ts = calendar_texts(status, 40, 3, 2);
    assert_eq!(ts.len(), 40);
    let tb = Toolbox::new(Default::default());
    for t in &ts {
        let today = t.today().unwrap();
        let long = run_call("Calendar", "", Some(today), &tb, 2).unwrap();
        assert_eq!(long, crate::tools::long_date(today));
        // the answer is part of what the calendar says
        assert!(long.contains(&t.answer), "{t:?}");
        assert_eq!(t.text, format!("{} {}{}", t.prefix, t.answer, t.suffix()));
        assert!(t.states_answer(&format!(" {}{}", t.answer, t.suffix())));
        assert!(!t.states_answer(" never"));
    }
    assert!(ts.iter().any(|t| t.split == "test") && ts.iter().any(|t| t.split == "train"));
    assert!(run_call("Calendar", "", None, &tb, 2).is_err());
    let p = annotation_prompt("Calendar", &[&ts[0]], "x");
    assert!(p.contains(&format!("{} [Calendar()] {}", ts[0].prefix, ts[0].answer)));
    // a Calendar candidate executes with its text's date
    let mut c = cand("", "");
    c.tool = Some("Calendar".into());
    c.result = None;
    let mut cs = vec![c];
    execute(&mut cs, &tb, 2, &|_| ts[0].today());
    assert_eq!(
        cs[0].result,
        Some(crate::tools::long_date(ts[0].today().unwrap()))
    );
    let numeric = Text {
        answer: "12.5".into(),
        ..ts[0].clone()
    };
    assert!(numeric.states_answer(" about 12.5 kB") && !numeric.states_answer(" 12.6"));
}

struct Script(Vec<String>, Vec<String>);
impl crate::react::AgentLm for Script {
    fn complete(
        &mut self,
        prompt: &str,
        stop: &[String],
        _: usize,
        _: Option<&[String]>,
    ) -> Result<String> {
        self.1.push(prompt.to_string());
        let mut o = if self.0.is_empty() {
            String::new()
        } else {
            self.0.remove(0)
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
fn inference_runs_the_call_on_the_arrow_once() {
    let tb = Toolbox::new(Default::default());
    let mut lm = Script(
        vec![
            " [Calculator(400 / 1400) -> 0.5] and more".into(),
            " 0.29 of them. [Calculator(1 + 1) -> 3] stays text".into(),
        ],
        vec![],
    );
    let r = infer(&mut lm, "Out of 1400, 400 passed: a share of", &tb, 40).unwrap();
    assert_eq!(
        r.call,
        Some(("Calculator".into(), "400 / 1400".into(), "0.29".into()))
    );
    assert_eq!(
        lm.1[1],
        "Out of 1400, 400 passed: a share of [Calculator(400 / 1400) -> 0.29]"
    );
    assert_eq!(
        r.text,
        " [Calculator(400 / 1400) -> 0.29] 0.29 of them. [Calculator(1 + 1) -> 3] stays text"
    );
    let mut lm = Script(vec![" 12 kB.".into()], vec![]);
    let r = infer(&mut lm, "x", &tb, 40).unwrap();
    assert!(r.call.is_none() && r.text == " 12 kB.");
    assert_eq!(first_number(" about -12.5 kB."), Some("-12.5".into()));
    assert_eq!(first_number(" 7."), Some("7".into()));
    assert_eq!(first_number("none"), None);
}

#[test]
fn execution_rounds_calculator_results_and_drops_failures() {
    let tb = Toolbox::new(Default::default());
    let mut cs = vec![cand("400 / 1400", ""), cand("1 / 0", "")];
    cs.iter_mut().for_each(|c| c.result = None);
    execute(&mut cs, &tb, 2, &|_| None);
    assert_eq!(cs[0].result.as_deref(), Some("0.29"));
    assert_eq!(cs[1].result, None);
}
