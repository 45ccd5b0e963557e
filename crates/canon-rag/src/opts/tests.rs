use super::*;

fn ask(question: &str) -> AskArgs {
    AskArgs {
        index: PathBuf::from("x.idx"),
        question: question.into(),
        model: "smollm2".into(),
        k: 5,
        mode: "hybrid".into(),
        max_tokens: 200,
        context: None,
        candidates: vec![],
        rag: None,
        beams: 1,
        graph: None,
        all_reports: false,
        entity_match: "embedding".into(),
        query_encoder: None,
        json: false,
    }
}

#[test]
fn ask_check_picks_one_way_and_names_bad_settings() {
    assert_eq!(ask("q").check().unwrap(), (Mode::Hybrid, AskWay::Prompt));
    let e = ask(" ").check().unwrap_err().to_string();
    assert!(e.contains("non-empty question"), "{e}");
    let mut a = ask("q");
    a.graph = Some("local".into());
    a.rag = Some("token".into());
    assert!(a.check().unwrap_err().to_string().contains("at most one"));
    a.rag = None;
    assert_eq!(a.check().unwrap().1, AskWay::Graph("local".into()));
    a.all_reports = true;
    assert!(a.check().unwrap_err().to_string().contains("--all-reports"));
    let mut a = ask("q");
    a.rag = Some("token".into());
    a.beams = 0;
    assert!(a.check().unwrap_err().to_string().contains("--beams"));
    let mut a = ask("q");
    a.candidates = vec!["-C".into(), "".into()];
    assert!(a.check().unwrap_err().to_string().contains("--candidate"));
}

#[test]
fn summarize_stages_and_chunk_limits() {
    let s = GraphSummarizeArgs {
        index: PathBuf::from("x.idx"),
        model: "m".into(),
        url: None,
        remote_model: "default".into(),
        what: "reports".into(),
        parallel: 8,
        limit: None,
        context: 1200,
        report_tokens: 600,
    };
    let st = s.check().unwrap();
    assert!(st.reports && !st.descriptions);
    let bad = GraphSummarizeArgs {
        what: "summaries".into(),
        ..s
    };
    assert!(bad.check().unwrap_err().to_string().contains("'summaries'"));
    let b = BuildArgs {
        docs: vec![],
        man: false,
        out: PathBuf::from("o"),
        model: "minilm".into(),
        max_tokens: 10,
        overlap: 10,
        batch_size: 32,
        hnsw_min: 1,
        limit: None,
        max_files: 1,
        dry_run: false,
    };
    assert!(
        b.chunk_config()
            .unwrap_err()
            .to_string()
            .contains("--overlap")
    );
}
