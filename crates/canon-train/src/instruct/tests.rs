use super::tasks::{decode_roff, locale_names, stdlib_functions};
use super::*;

fn cls_task(name: &str, cluster: &str, n: usize) -> Task {
    Task {
        name: name.into(),
        cluster: cluster.into(),
        templates: vec![
            Template {
                input: "Is {x} big?\n\n{options}",
                target: "{y}",
            },
            Template {
                input: "Say {y}.",
                target: "{x}",
            },
        ],
        examples: (0..n)
            .map(|i| {
                let y = if i % 2 == 0 { "yes" } else { "no" };
                Example::new(&[("x", &i.to_string()), ("y", y)])
                    .with_options(vec!["yes".into(), "no".into()])
            })
            .collect(),
    }
}

#[test]
fn templates_render_byte_exact_with_the_options_block() {
    let ex = Example::new(&[("text", "Guten Tag"), ("lang", "German")])
        .with_options(vec!["German".into(), "French".into()]);
    let t = Template {
        input: "Which language is this text written in?\n\n{text}\n\n{options}",
        target: "{lang}",
    };
    let (i, o) = render(&t, &ex).unwrap();
    assert_eq!(
        i,
        "Which language is this text written in?\n\nGuten Tag\n\nOPTIONS:\n- German\n- French"
    );
    assert_eq!(o, "German");
    // A turned-around template: the target is built from an input field.
    let t = Template {
        input: "Write a sentence in {lang}.",
        target: "{text}",
    };
    assert_eq!(
        render(&t, &ex).unwrap(),
        ("Write a sentence in German.".into(), "Guten Tag".into())
    );
    assert_eq!(format_options(&["a".into()]), "OPTIONS:\n- a");
    // Unknown fields and unclosed braces are errors.
    let bad = Template {
        input: "{nope}",
        target: "",
    };
    assert!(
        render(&bad, &ex)
            .unwrap_err()
            .to_string()
            .contains("'nope'")
    );
    assert!(fill("{text", &ex).is_err());
    assert!(fill("{options}", &Example::new(&[])).is_err());
}

#[test]
fn mixing_rates_cap_large_datasets_and_sampling_follows_them() {
    let r = mixing_rates(&[100, 3000, 50000], 3000);
    for (a, b) in r.iter().zip([0.016393, 0.491803, 0.491803]) {
        assert!((a - b).abs() < 1e-6, "{r:?}");
    }
    let mut rng = SplitMix64::new(9);
    let mut counts = [0usize; 3];
    let n = 100_000;
    for _ in 0..n {
        counts[draw(&mut rng, &r)] += 1;
    }
    for (c, p) in counts.iter().zip(&r) {
        assert!((*c as f64 / n as f64 - p).abs() < 0.01, "{counts:?}");
    }
    assert_eq!(mixing_rates(&[0, 0], 5), vec![0.0, 0.0]);
    // A cap of 0 is no cap (as T5's multi-task mixture reads it).
    assert_eq!(mixing_rates(&[1, 3], 0), vec![0.25, 0.75]);
}

#[test]
fn no_training_record_comes_from_the_held_out_cluster() {
    let tasks = vec![
        cls_task("a1", "A", 10),
        cls_task("a2", "A", 50),
        cls_task("b1", "B", 5),
        cls_task("c1", "C", 7),
    ];
    for held in ["A", "B", "C"] {
        let mix = build_mixture(&tasks, held, 30, 300, 1).unwrap();
        assert_eq!(mix.len(), 300);
        assert!(mix.iter().all(|r| r.cluster != held));
        // Every other cluster is drawn.
        for c in ["A", "B", "C"].iter().filter(|c| **c != held) {
            assert!(mix.iter().any(|r| r.cluster == *c), "{held}: {c} missing");
        }
        let ev = held_out_eval(&tasks, held, 100).unwrap();
        assert!(ev.iter().all(|r| r.cluster == held));
        assert!(ev.iter().all(|r| r.options.contains(&r.answer)));
        assert!(
            ev.iter()
                .all(|r| r.prompt.contains("OPTIONS:\n- yes\n- no"))
        );
    }
    assert!(build_mixture(&tasks, "Z", 30, 10, 1).is_err());
    assert!(build_mixture(&tasks[..2], "A", 30, 10, 1).is_err());
}

#[test]
fn rank_classification_picks_the_likeliest_option() {
    let lps = vec![vec![-1.0, -1.0, -1.0], vec![-2.5], vec![-4.0, -0.1]];
    assert_eq!(rank_classify(&lps, false), 1);
    assert_eq!(rank_classify(&lps, true), 0);
    assert_eq!(rank_classify(&[vec![-1.0], vec![-1.0]], false), 0);
}

#[test]
fn roff_escapes_and_locale_sources_decode() {
    assert_eq!(
        decode_roff("m\\(:oglicht \\fBdie\\fR Verf\\(:ugbarkeit \\- gro\\(ssartig\\&.").unwrap(),
        "möglicht die Verfügbarkeit - großartig."
    );
    assert_eq!(
        decode_roff("t\\('el\\('echarger d\\*(Aqun pow\\(/loki \\[u0105]").unwrap(),
        "télécharger d'un powłoki ą"
    );
    assert!(decode_roff("\\zq").is_none());
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("xx_XX");
    std::fs::write(
        &p,
        "LC_IDENTIFICATION\nlanguage   \"Testish\"\nEND\nLC_TIME\nabday \"a\";\"b\"\n\
         day \"S<U00F6>n\";\"Mo\";/\n \"Tu\";\"We\";/\n \"Th\";\"Fr\";\"Sa\"\n\
         mon \"1\";\"2\";\"3\";\"4\";\"5\";\"6\";\"7\";\"8\";\"9\";\"10\";\"11\";/\n \"12\"\nEND\n",
    )
    .unwrap();
    let (lang, day, mon) = locale_names(&p).unwrap();
    assert_eq!(lang, "Testish");
    assert_eq!(day[0], "Sön");
    assert_eq!((day.len(), mon.len(), mon[11].as_str()), (7, 12, "12"));
}

#[test]
fn stdlib_functions_read_first_docstring_paragraphs() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("shapes.py"),
        "def area(w, h):\n    \"\"\"Return the product of\n    width and height.\n\n    More.\n    \"\"\"\n\
         \ndef _private(x):\n    \"\"\"Hidden helper function.\"\"\"\n\
         def perimeter(w,\n              h):\n    '''Sum of all four sides.'''\n",
    )
    .unwrap();
    let f = stdlib_functions(dir.path()).unwrap();
    assert_eq!(
        f,
        vec![
            (
                "shapes".into(),
                "area".into(),
                "Return the product of width and height.".into()
            ),
            (
                "shapes".into(),
                "perimeter".into(),
                "Sum of all four sides.".into()
            ),
        ]
    );
    assert!(stdlib_functions(&dir.path().join("none")).is_err());
}
