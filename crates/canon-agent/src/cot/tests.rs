use super::*;

#[test]
fn generated_rationales_compute_the_answer() {
    let ps = generate(200, 1, 6, 7);
    assert_eq!(ps, generate(200, 1, 6, 7), "reproducible");
    for p in &ps {
        assert!((1..=6).contains(&p.steps));
        let n: i64 = p.answer.parse().unwrap();
        assert!((1..=999).contains(&n), "{p:?}");
        // Every "a op b = c" in the rationale is right, and the last result is the answer.
        let mut last = None;
        for eq in p.rationale.split(": ").skip(1) {
            let e: Vec<&str> = eq.split_whitespace().collect();
            let (a, op, b, c): (i64, &str, i64, i64) = (
                e[0].parse().unwrap(),
                e[1],
                e[2].parse().unwrap(),
                e[4].trim_end_matches('.').parse().unwrap(),
            );
            let want = match op {
                "+" => a + b,
                "-" => a - b,
                "*" => a * b,
                "/" => {
                    assert_eq!(a % b, 0);
                    a / b
                }
                _ => panic!("{op}"),
            };
            assert_eq!(want, c, "{}", p.rationale);
            last = Some(c);
        }
        assert_eq!(last.unwrap(), n, "{}", p.rationale);
        assert_eq!(
            extract_answer(&p.rationale).as_deref(),
            Some(p.answer.as_str())
        );
    }
}

#[test]
fn ordinal_words() {
    let got: Vec<String> = [1, 2, 3, 12, 13, 20, 21, 42, 99, 100]
        .iter()
        .map(|&n| ordinal(n))
        .collect();
    assert_eq!(
        got,
        [
            "First",
            "Second",
            "Third",
            "Twelfth",
            "Thirteenth",
            "Twentieth",
            "Twenty-first",
            "Forty-second",
            "Ninety-ninth",
            "Step 100"
        ]
    );
}

#[test]
fn rationales_restate_each_sentence_of_the_question_before_its_equation() {
    for p in generate(100, 1, 8, 11) {
        // The question's sentences, without the closing one that asks for the answer.
        let q = p.question.rsplit_once(" How many ").unwrap().0;
        let said: Vec<&str> = q.split_inclusive(". ").map(|x| x.trim()).collect();
        assert_eq!(said.len(), p.steps + 1, "{}", p.question);
        // The rationale: the first sentence, then each step's sentence with ": a op b = c."
        // in place of its full stop, then the answer.
        let mut want = said[0].to_string();
        let eqs: Vec<&str> = p
            .rationale
            .split(": ")
            .skip(1)
            .map(|e| e.split_once('.').unwrap().0)
            .collect();
        assert_eq!(eqs.len(), p.steps);
        for (i, (s, e)) in said[1..].iter().zip(&eqs).enumerate() {
            assert!(s.starts_with(&format!("{}, ", ordinal(i + 1))), "{s}");
            want.push_str(&format!(" {}: {e}.", s.trim_end_matches('.')));
        }
        want.push_str(&format!(" The answer is {}.", p.answer));
        assert_eq!(p.rationale, want);
    }
}

#[test]
fn the_value_cap_bounds_every_intermediate_count() {
    assert_eq!(
        generate_capped(50, 1, 6, DEFAULT_MAX_VALUE, 3),
        generate(50, 1, 6, 3),
        "the default cap is the plain generator"
    );
    for p in generate_capped(300, 1, 6, 99, 4) {
        let counts = p
            .rationale
            .split(|c: char| !c.is_ascii_digit())
            .filter(|w| !w.is_empty())
            .map(|w| w.parse::<i64>().unwrap());
        for c in counts {
            assert!((1..=99).contains(&c), "{c} in {}", p.rationale);
        }
    }
}

#[test]
fn small_caps_and_restricted_operations() {
    let o = GenOptions {
        max_value: 20,
        ops: GenOptions::parse_ops("+,-").unwrap(),
    };
    let ps = generate_with(300, 1, 6, &o, 5).unwrap();
    assert_eq!(ps, generate_with(300, 1, 6, &o, 5).unwrap(), "reproducible");
    for p in &ps {
        assert!(!p.rationale.contains(" * ") && !p.rationale.contains(" / "));
        let counts = p
            .rationale
            .split(|c: char| !c.is_ascii_digit())
            .filter(|w| !w.is_empty())
            .map(|w| w.parse::<i64>().unwrap());
        for c in counts {
            assert!((1..=20).contains(&c), "{c} in {}", p.rationale);
        }
        assert_eq!(extract_answer(&p.rationale), Some(p.answer.clone()));
    }
    assert!(ps.iter().any(|p| p.rationale.contains(" + ")));
    assert!(ps.iter().any(|p| p.rationale.contains(" - ")));
    // The smallest cap still generates (every count has a next step).
    let tiny = GenOptions {
        max_value: MIN_MAX_VALUE,
        ops: vec!['-', '*'],
    };
    assert_eq!(generate_with(50, 6, 6, &tiny, 1).unwrap().len(), 50);
    // The defaults are the plain generator; caps of 40+ with all operations are generate_capped.
    assert_eq!(
        generate_with(40, 1, 6, &GenOptions::default(), 9).unwrap(),
        generate(40, 1, 6, 9)
    );
    let o99 = GenOptions {
        max_value: 99,
        ..GenOptions::default()
    };
    assert_eq!(
        generate_with(40, 1, 6, &o99, 9).unwrap(),
        generate_capped(40, 1, 6, 99, 9)
    );
    // Bad options are named.
    let bad = |max_value, ops: &str| {
        generate_with(
            1,
            1,
            1,
            &GenOptions {
                max_value,
                ops: ops.chars().collect(),
            },
            1,
        )
        .unwrap_err()
    };
    assert!(bad(4, "+-").contains("at least 5"));
    assert!(bad(20, "+").contains("include -"));
    assert!(bad(20, "-/").contains("include -"));
    assert!(GenOptions::parse_ops("+,%").unwrap_err().contains("'%'"));
    assert_eq!(
        GenOptions::parse_ops("-, +,x").unwrap(),
        vec!['+', '-', '*']
    );
}

#[test]
fn answers_are_extracted_and_compared_as_numbers() {
    assert_eq!(
        extract_answer("3 + 4 = 7. The answer is 7.").as_deref(),
        Some("7")
    );
    assert_eq!(
        extract_answer("The answer is 1,250 apples, not 3").as_deref(),
        Some("1250")
    );
    assert_eq!(extract_answer("so she has 12 left").as_deref(), Some("12"));
    assert_eq!(extract_answer("It is -3.50 now.").as_deref(), Some("-3.5"));
    assert_eq!(extract_answer("no idea"), None);
    assert!(is_correct(Some("12.0"), "12"));
    assert!(is_correct(Some("Paris"), "paris."));
    assert!(!is_correct(None, "1") && !is_correct(Some("2"), "1"));
}

#[test]
fn majority_vote_counts_and_breaks_ties_by_first_seen() {
    let v = |xs: &[Option<&str>]| xs.iter().map(|x| x.map(str::to_string)).collect::<Vec<_>>();
    assert_eq!(
        majority(&v(&[Some("3"), Some("5"), Some("5"), None])).as_deref(),
        Some("5")
    );
    assert_eq!(majority(&v(&[Some("4"), Some("9")])).as_deref(), Some("4"));
    assert_eq!(majority(&v(&[None, None])), None);
}

#[test]
fn prompts_and_problem_files() {
    let ps = generate(3, 2, 2, 1);
    let p = prompt(&ps[2], &ps[..2], Style::FewShotCot);
    assert!(p.contains(&ps[0].rationale) && p.ends_with("\nA:"));
    let d = prompt(&ps[2], &ps[..2], Style::FewShotDirect);
    assert!(!d.contains(&ps[0].rationale) && d.contains("The answer is"));
    assert!(prompt(&ps[0], &[], Style::ZeroShotCot).ends_with("Let's think step by step."));
    let f = parse_problems(
        "{\"question\": \"q\", \"answer\": 42}\n\n{\"question\": \"r\", \"answer\": \"x\"}",
    )
    .unwrap();
    assert_eq!(f[0].answer, "42");
    assert!(
        parse_problems("{\"question\": 1}")
            .unwrap_err()
            .contains("line 1")
    );
    assert!(parse_problems("").is_err());
}
