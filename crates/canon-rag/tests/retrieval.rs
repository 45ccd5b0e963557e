#![allow(clippy::needless_range_loop)]
use canon_rag::bm25::{Bm25, terms};
use canon_rag::chunk::{ChunkConfig, chunk_document, word_count};
use canon_rag::index::{FORMAT, FileEntry, Index, Meta, Mode, VERSION, write_index};
use canon_rag::reader::{self, Kind, ReadStats, Skip};
use canon_rag::{dense, fuse};

const MAN_SRC: &str = r#".TH DEMO 1
.SH NAME
demo \- show a demo
.SH OPTIONS
.TP
\fB\-a\fR, \fB\-\-all\fR
do not ignore entries starting with .
.TP
\fB\-\-block\-size\fR=\fISIZE\fR
scale sizes by SIZE
"#;

#[test]
fn builtin_man_reader_keeps_option_lines_and_sections() {
    let (lines, heads) = reader::man_source(MAN_SRC);
    let titles: Vec<&str> = heads.iter().map(|h| h.1.as_str()).collect();
    assert_eq!(titles, ["NAME", "OPTIONS"]);
    assert!(lines.iter().any(|l| l == "-a, --all"), "{lines:?}");
    assert!(lines.iter().any(|l| l == "--block-size=SIZE"), "{lines:?}");
    assert!(lines.iter().any(|l| l == "demo - show a demo"), "{lines:?}");
}

#[test]
fn rendered_man_drops_header_footer_and_finds_headings() {
    let t = "LS(1)   User Commands   LS(1)\n\nNAME\n       ls - list\n\nOPTIONS\n       -a, --all\n              do not ignore\n\nGNU   2024   LS(1)\n";
    let (lines, heads) = reader::man_rendered(t);
    assert_eq!(
        heads.iter().map(|h| h.1.as_str()).collect::<Vec<_>>(),
        ["NAME", "OPTIONS"]
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("User Commands") || l.contains("GNU"))
    );
    assert_eq!(
        reader::strip_overstrike("N\u{8}NA\u{8}A \u{1b}[1mx\u{1b}[0m"),
        "NA x"
    );
}

#[test]
fn html_markdown_info_readers() {
    let h = reader::html_to_text(
        "<html><style>x{}</style><h2>Usage</h2><p>Run &amp; see</p><script>bad()</script></html>",
    );
    let (lines, heads) = reader::markdown(&h);
    assert_eq!(heads, vec![(1, "Usage".to_string())]);
    assert!(lines.iter().any(|l| l == "Run & see"));
    assert!(!h.contains("bad()") && !h.contains("x{}"));
    let (_, heads) = reader::info(
        "intro\n\u{1f}\nFile: a.info,  Node: Top,  Next: B\n\ntext\n\u{1f}\nFile: a.info,  Node: B,  Up: Top\nmore\n",
    );
    assert_eq!(
        heads.iter().map(|h| h.1.as_str()).collect::<Vec<_>>(),
        ["Top", "B"]
    );
}

#[test]
fn skips_binary_bad_utf8_and_empty_files() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("a.txt"), "hello world").unwrap();
    std::fs::write(d.path().join("b.txt"), [0u8, 1, 2, 3]).unwrap();
    std::fs::write(d.path().join("c.txt"), [0xffu8, 0xfe, b'a']).unwrap();
    std::fs::write(d.path().join("d.txt"), "  \n").unwrap();
    std::fs::write(d.path().join("e.md"), "# T\nbody").unwrap();
    let files = reader::walk(&[d.path().to_path_buf()]).unwrap();
    assert_eq!(files.len(), 5);
    let mut st = ReadStats::default();
    let docs = reader::read_all(&files, false, &mut st);
    assert_eq!((st.read, st.binary, st.bad_utf8, st.empty), (2, 1, 1, 1));
    assert_eq!(docs[1].headings, vec![(0, "T".to_string())]);
    assert_eq!(
        reader::read(&d.path().join("d.txt"), Kind::Text, false),
        Err(Skip::Empty)
    );
    assert_eq!(
        reader::kind_of(std::path::Path::new("/usr/share/man/man1/ls.1.gz")),
        Some(Kind::Man)
    );
    assert_eq!(
        reader::kind_of(std::path::Path::new("/x/coreutils.info.gz")),
        Some(Kind::Info)
    );
}

#[test]
fn chunks_stay_in_sections_respect_budget_and_overlap() {
    let lines: Vec<String> = (0..30).map(|i| format!("w{i} a b c")).collect(); // 4 words per line
    let doc = reader::Document {
        path: "p".into(),
        page: "pg".into(),
        lines,
        headings: vec![(0, "A".into()), (20, "B".into())],
    };
    let ch = chunk_document(
        &doc,
        ChunkConfig {
            max_tokens: 20,
            overlap: 4,
        },
        &word_count,
    );
    for c in &ch {
        assert!(word_count(&c.text) <= 20, "{c:?}");
        assert!(
            c.section == "A" && c.line_end <= 20 || c.section == "B" && c.line_start > 20,
            "{c:?}"
        );
    }
    // Every line is covered, and consecutive chunks of a section share exactly one line (4 tokens).
    for l in 1..=30 {
        assert!(
            ch.iter().any(|c| c.line_start <= l && l <= c.line_end),
            "line {l} missing"
        );
    }
    let a: Vec<_> = ch.iter().filter(|c| c.section == "A").collect();
    assert_eq!(a[0].line_start, 1);
    assert_eq!(a[0].line_end, 5);
    assert_eq!(a[1].line_start, 5);
}

#[test]
fn bm25_matches_hand_computed_score() {
    let docs = [
        "list directory contents",
        "copy files and directories",
        "list list files",
    ];
    let ix = Bm25::build(docs);
    let hits = ix.search("list", 10);
    assert_eq!(hits.len(), 2);
    assert_eq!(hits[0].0, 2);
    // doc 0: tf=1, dl=3, avgdl=10/3, n=3, nt=2
    let idf = (1.0f32 + (3.0 - 2.0 + 0.5) / (2.0 + 0.5)).ln();
    let s0 = idf * 1.0 * 2.2 / (1.0 + 1.2 * (0.25 + 0.75 * 3.0 / (10.0 / 3.0)));
    let got = hits.iter().find(|h| h.0 == 0).unwrap().1;
    assert!((got - s0).abs() < 1e-5, "{got} vs {s0}");
    assert_eq!(Bm25::from_bytes(&ix.to_bytes()).unwrap(), ix);
    assert!(Bm25::from_bytes(&ix.to_bytes()[..20]).is_err());
    assert!(terms("--block-size=SIZE").contains(&"--block-size".to_string()));
    assert!(terms("--block-size=SIZE").contains(&"block".to_string()));
}

#[test]
fn dense_search_is_exact_and_rrf_fuses() {
    let mat = [1.0, 0.0, 0.6, 0.8, 0.0, 1.0];
    let h = dense::search(&mat, 2, &[0.0, 1.0], 2);
    assert_eq!(h.iter().map(|x| x.0).collect::<Vec<_>>(), [2, 1]);
    let f = fuse::rrf(&[vec![1, 2, 3], vec![3, 1]], 60.0);
    assert_eq!(f[0].0, 1);
    assert!((f[0].1 - (1.0 / 61.0 + 1.0 / 62.0)).abs() < 1e-12);
    assert_eq!(f[1].0, 3);
}

fn toy_index(dir: &std::path::Path, model: &str) {
    let doc = reader::Document {
        path: "x.1".into(),
        page: "x(1)".into(),
        lines: vec!["alpha beta".into(), "gamma delta".into()],
        headings: vec![(0, "NAME".into()), (1, "OPTIONS".into())],
    };
    let chunks = chunk_document(&doc, ChunkConfig::default(), &word_count);
    let vectors = vec![1.0, 0.0, 0.0, 1.0];
    let meta = Meta {
        format: FORMAT.into(),
        version: VERSION,
        model: model.into(),
        dim: 2,
        chunks: chunks.len(),
        man_rendered: false,
        roots: vec![],
        files: vec![FileEntry {
            path: "x.1".into(),
            size: 1,
            mtime: 0,
            chunk_start: 0,
            chunk_end: 2,
        }],
        stats: ReadStats::default(),
    };
    write_index(dir, &meta, &chunks, &vectors).unwrap();
}

#[test]
fn index_round_trip_checks_model_version_and_corruption() {
    let d = tempfile::tempdir().unwrap();
    let ip = d.path().join("ix");
    toy_index(&ip, "m1");
    let ix = Index::open(&ip, Some("m1")).unwrap();
    assert_eq!(ix.chunks.len(), 2);
    let h = ix
        .search("gamma", Some(&[0.0, 1.0]), Mode::Hybrid, 1)
        .unwrap();
    assert_eq!(h[0].chunk.section, "OPTIONS");
    assert_eq!(
        ix.search("alpha", None, Mode::Bm25, 5).unwrap()[0]
            .chunk
            .section,
        "NAME"
    );
    assert!(ix.search("  ", None, Mode::Bm25, 5).is_err());
    let e = Index::open(&ip, Some("other")).err().unwrap().to_string();
    assert!(e.contains("embedded with 'm1'"), "{e}");
    // Rebuilding over an existing index replaces it; no temporary folders are left behind.
    toy_index(&ip, "m1");
    assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    // Version and truncation are checked.
    let mp = ip.join("meta.json");
    let m = std::fs::read_to_string(&mp).unwrap();
    std::fs::write(&mp, m.replace("\"version\": 1", "\"version\": 99")).unwrap();
    assert!(
        Index::open(&ip, None)
            .err()
            .unwrap()
            .to_string()
            .contains("version 99")
    );
    std::fs::write(&mp, m).unwrap();
    std::fs::write(ip.join("vectors.f32"), [0u8; 12]).unwrap();
    assert!(Index::open(&ip, None).is_err());
    assert!(Index::open(&d.path().join("missing"), None).is_err());
    // An empty folder is named as what it is not: an index folder without its meta.json.
    let empty = d.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let e = Index::open(&empty, None).err().unwrap().to_string();
    assert!(
        e.contains("expected an index folder") && e.contains("no meta.json"),
        "{e}"
    );
}

#[test]
fn index_with_hnsw_searches_through_it_and_refuses_a_bad_graph() {
    use canon_rag::index::write_index_with;
    let n = 300;
    let dim = 8;
    let mut rng = canon_rag::leiden::Rng::new(5);
    let mut vectors = Vec::with_capacity(n * dim);
    let mut chunks = Vec::new();
    for i in 0..n {
        let mut v: Vec<f32> = (0..dim).map(|_| rng.unit() as f32 - 0.5).collect();
        dense::normalize(&mut v);
        vectors.extend(v);
        chunks.push(canon_rag::chunk::Chunk {
            path: "p".into(),
            page: format!("p{i}(1)"),
            section: String::new(),
            line_start: 1,
            line_end: 1,
            text: format!("word{i}"),
        });
    }
    let meta = Meta {
        format: FORMAT.into(),
        version: VERSION,
        model: "m".into(),
        dim,
        chunks: n,
        man_rendered: false,
        roots: vec![],
        files: vec![],
        stats: ReadStats::default(),
    };
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("h.idx");
    write_index_with(&out, &meta, &chunks, &vectors, true).unwrap();
    let ix = Index::open(&out, Some("m")).unwrap();
    assert!(ix.hnsw.is_some());
    let mut agree = 0;
    for q in 0..50 {
        let qv = ix.vector(q * 5).to_vec();
        let approx: Vec<usize> = ix.dense(&qv, 10, false).iter().map(|h| h.0).collect();
        let exact: Vec<usize> = ix.dense(&qv, 10, true).iter().map(|h| h.0).collect();
        assert_eq!(approx[0], q * 5);
        agree += approx.iter().filter(|i| exact.contains(i)).count();
    }
    assert!(agree as f64 / 500.0 >= 0.98, "{agree}");
    std::fs::write(out.join("hnsw.bin"), b"junk").unwrap();
    assert!(Index::open(&out, None).is_err());
}
