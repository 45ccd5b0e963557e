use super::*;

fn chunk(page: &str, section: &str, text: &str) -> Chunk {
    Chunk {
        path: format!("/m/{page}"),
        page: page.into(),
        section: section.into(),
        line_start: 1,
        line_end: text.lines().count(),
        text: text.into(),
    }
}

#[test]
fn fast_extractor_finds_structure() {
    let c = chunk(
        "tar(1)",
        "OPTIONS",
        "-C, --directory=DIR\nchange to directory DIR before extracting\nReads /etc/tar.conf and $TAR_OPTIONS.\nSee also gzip(1) and cpio(1).",
    );
    let ex = fast_extract(&c);
    let names: Vec<&str> = ex.entities.iter().map(|e| e.0.as_str()).collect();
    assert!(names.contains(&"TAR"), "{names:?}");
    assert!(names.contains(&"TAR --DIRECTORY"), "{names:?}");
    assert!(names.contains(&"/ETC/TAR.CONF"), "{names:?}");
    assert!(names.contains(&"TAR_OPTIONS"), "{names:?}");
    assert!(
        names.contains(&"GZIP") && names.contains(&"CPIO"),
        "{names:?}"
    );
    let opt = ex
        .entities
        .iter()
        .find(|e| e.0 == "TAR --DIRECTORY")
        .unwrap();
    assert!(opt.2.contains("change to directory DIR"), "{opt:?}");
    assert!(ex.relations.iter().any(|r| r.0 == "TAR" && r.1 == "GZIP"));
    assert!(
        ex.entities
            .iter()
            .filter(|e| e.1 == "CONCEPT")
            .all(|e| e.0.contains(' ')),
        "noun phrases have 2-3 words: {names:?}"
    );
}

#[test]
fn parser_handles_golden_output_with_bad_records() {
    let out = "(\"entity\"<|>cp<|>command<|>copies files)##\n\
(\"entity\"<|>-r<|>option<|>recursive copy)##\n\
(\"relationship\"<|>cp<|>-r<|>-r makes cp recursive<|>high)##\n\
garbage without parentheses##\n\
(\"relationship\"<|>cp<|>ls<|>both list things<|>3)<|COMPLETE|>\n(\"entity\"<|>AFTER<|>X<|>ignored)";
    let (ex, bad) = parse_records(out);
    assert_eq!(bad, 1);
    assert_eq!(
        ex.entities,
        vec![
            ("CP".into(), "COMMAND".into(), "copies files".into()),
            ("-R".into(), "OPTION".into(), "recursive copy".into())
        ]
    );
    assert_eq!(
        ex.relations[0],
        (
            "CP".into(),
            "-R".into(),
            "-r makes cp recursive".into(),
            1.0
        )
    );
    assert_eq!(ex.relations[1].3, 3.0);
}

struct Scripted {
    replies: Vec<String>,
    calls: usize,
}
impl Llm for Scripted {
    fn chat(&mut self, _m: &[(String, String)], _t: usize) -> std::result::Result<String, String> {
        let r = self
            .replies
            .get(self.calls)
            .cloned()
            .ok_or("no more replies")?;
        self.calls += 1;
        Ok(r)
    }
    fn id(&self) -> String {
        "scripted".into()
    }
}

#[test]
fn gleaning_loop_call_counts_and_cache() {
    let rec = "(\"entity\"<|>A<|>X<|>a)<|COMPLETE|>".to_string();
    let dir = tempfile::tempdir().unwrap();
    // 2 gleanings, the Y/N check says Y: 1 + 2 gleanings + 1 check = 4 calls.
    let mut s = Scripted {
        replies: vec![rec.clone(), rec.clone(), "Y".into(), rec.clone()],
        calls: 0,
    };
    {
        let mut c = CachedLlm::new(&mut s, dir.path()).unwrap();
        let mut st = ExtractStats::default();
        let ex = extract_with_gleanings(&mut c, "text", 2, 100, &mut st);
        assert_eq!(st.calls, 4);
        assert_eq!(ex.entities.len(), 3);
    }
    assert_eq!(s.calls, 4);
    // An N stops early: 1 + 1 gleaning + 1 check = 3 calls.
    let mut s2 = Scripted {
        replies: vec![rec.clone(), rec.clone(), "N".into(), rec.clone()],
        calls: 0,
    };
    let d2 = tempfile::tempdir().unwrap();
    let mut c2 = CachedLlm::new(&mut s2, d2.path()).unwrap();
    let mut st = ExtractStats::default();
    extract_with_gleanings(&mut c2, "text", 3, 100, &mut st);
    assert_eq!(st.calls, 3);
    drop(c2);
    // Rerun over the first cache: every call is a hit, the model is not asked.
    let mut s3 = Scripted {
        replies: vec![],
        calls: 0,
    };
    let mut c3 = CachedLlm::new(&mut s3, dir.path()).unwrap();
    let mut st = ExtractStats::default();
    let ex = extract_with_gleanings(&mut c3, "text", 2, 100, &mut st);
    assert_eq!((c3.hits, c3.misses), (4, 0));
    assert_eq!(ex.entities.len(), 3);
    // A model that breaks the format: a counted failure, no panic.
    let mut s4 = Scripted {
        replies: vec!["I cannot do that".into()],
        calls: 0,
    };
    let d4 = tempfile::tempdir().unwrap();
    let mut c4 = CachedLlm::new(&mut s4, d4.path()).unwrap();
    let mut st = ExtractStats::default();
    let ex = extract_with_gleanings(&mut c4, "text", 1, 100, &mut st);
    assert!(ex.entities.is_empty());
    assert_eq!((st.failed_units, st.malformed_records), (1, 1));
}

#[test]
fn merge_unites_names_and_adds_weights() {
    let a = Extraction {
        entities: vec![
            ("X".into(), "T".into(), "first".into()),
            ("Y".into(), "T".into(), "y".into()),
        ],
        relations: vec![("X".into(), "Y".into(), "r1".into(), 2.0)],
    };
    let b = Extraction {
        entities: vec![
            ("X".into(), "T".into(), "second".into()),
            ("Y".into(), "T".into(), "y".into()),
        ],
        relations: vec![("Y".into(), "X".into(), "r2".into(), 3.0)],
    };
    let (e, r) = merge(&[(0, a), (5, b)], 1);
    assert_eq!(e.len(), 2);
    assert_eq!(e[0].descriptions, ["first", "second"]);
    assert_eq!(e[0].text_units, [0, 5]);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].weight, 5.0);
    assert_eq!(r[0].descriptions, ["r1", "r2"]);
}

#[test]
fn report_orders_by_prominence_within_budget() {
    let ex = Extraction {
        entities: ["HUB", "A", "B", "C"]
            .iter()
            .map(|n| (n.to_string(), "T".into(), format!("{n} thing")))
            .collect(),
        relations: vec![
            ("A".into(), "B".into(), "a-b".into(), 1.0),
            ("HUB".into(), "A".into(), "hub-a".into(), 1.0),
            ("HUB".into(), "B".into(), "hub-b".into(), 1.0),
            ("HUB".into(), "C".into(), "hub-c".into(), 1.0),
        ],
    };
    let (e, r) = merge(&[(0, ex)], 1);
    let cl = Cluster {
        id: 0,
        level: 0,
        parent: None,
        nodes: vec![0, 1, 2, 3],
        leaf: true,
    };
    let full = build_report(&cl, &e, &r, 10_000, &approx_tokens);
    let pos = |s: &str| full.text.find(s).unwrap();
    // Combined degrees: HUB-A 3+2, HUB-B 3+2, A-B 2+2, HUB-C 3+1 → HUB-A, HUB-B before A-B.
    assert!(
        pos("hub-a") < pos("a-b") && pos("hub-b") < pos("a-b"),
        "{}",
        full.text
    );
    assert!(full.title.starts_with("HUB"));
    for budget in [5, 12, 20, 40] {
        let rep = build_report(&cl, &e, &r, budget, &approx_tokens);
        assert!(
            approx_tokens(&rep.text)
                <= budget.max(approx_tokens(&format!("Community 0: {}\n", rep.title))),
            "{budget}: {}",
            rep.text
        );
    }
}

#[test]
fn global_reduce_orders_and_drops_zero() {
    let pts: Vec<KeyPoint> = [0u32, 40, 90, 10]
        .iter()
        .enumerate()
        .map(|(i, &s)| KeyPoint {
            score: s,
            text: format!("p{i}"),
            report: i,
        })
        .collect();
    let (ctx, kept) = reduce_context(&pts, 1000, &approx_tokens).unwrap();
    assert_eq!(
        kept.iter().map(|p| p.score).collect::<Vec<_>>(),
        [90, 40, 10]
    );
    assert!(!ctx.contains("p0"));
    let zeros: Vec<KeyPoint> = pts
        .iter()
        .map(|p| KeyPoint {
            score: 0,
            ..p.clone()
        })
        .collect();
    assert!(reduce_context(&zeros, 1000, &approx_tokens).is_none());
    assert_eq!(
        parse_map("- 80: uses -C\n0: none\nnot a point\n150: big", 3)
            .iter()
            .map(|p| p.score)
            .collect::<Vec<_>>(),
        [80, 0, 100]
    );
    let packs = pack(
        &[(0, "a b c".into()), (1, "d e f".into()), (2, "g".into())],
        8,
        &approx_tokens,
    );
    assert_eq!(packs, vec![vec![0, 1], vec![2]]);
}

/// A toy embedding: word counts hashed into 32 buckets.
fn toy_embed(t: &str) -> Vec<f32> {
    let mut v = vec![0f32; 32];
    for w in t
        .to_lowercase()
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| w.len() > 2)
    {
        v[(fnv64(w.as_bytes()) % 32) as usize] += 1.0;
    }
    crate::dense::normalize(&mut v);
    v
}

fn toy_chunks() -> Vec<Chunk> {
    vec![
        chunk(
            "tar(1)",
            "OPTIONS",
            "-C, --directory=DIR\nchange to directory DIR before extracting archives",
        ),
        chunk(
            "gzip(1)",
            "OPTIONS",
            "-d, --decompress\ndecompress compressed files\nSee also tar(1).",
        ),
        chunk(
            "ls(1)",
            "OPTIONS",
            "-a, --all\ndo not ignore entries starting with a dot\nSee also stat(1).",
        ),
    ]
}

fn fast_opts() -> BuildOpts {
    BuildOpts {
        gleanings: 0,
        max_tokens: 100,
        limit: None,
        max_cluster_size: 10,
        report_tokens: 600,
        min_phrase_units: 3,
    }
}

fn fast_graph(chunks: &[Chunk], cache: &Path) -> KnowledgeGraph {
    let mut g = build_chunks_graph(chunks, cache, None, &fast_opts(), &mut |_, _| {})
        .unwrap()
        .graph;
    let v: Vec<f32> = g
        .entities
        .iter()
        .flat_map(|e| toy_embed(&entity_text(e)))
        .collect();
    g.set_entity_vectors("toy", 32, v).unwrap();
    g
}

#[test]
fn local_search_matches_entities_by_description_embedding() {
    let d = tempfile::tempdir().unwrap();
    let g = fast_graph(&toy_chunks(), d.path());
    let lg = crate::graph_answer::loaded(g.clone());
    assert_eq!(lg.default_match(), EntityMatch::Embedding);
    let q = "change into a directory before extracting";
    let qv = toy_embed(q);
    let m = lg
        .match_entities(q, Some(&qv), EntityMatch::Embedding, 3)
        .unwrap();
    assert_eq!(g.entities[m[0]].name, "TAR --DIRECTORY", "{m:?}");
    // A command named in the question comes first, as with BM25 matching.
    let q2 = "what does ls do with entries starting with a dot";
    let m = lg
        .match_entities(q2, Some(&toy_embed(q2)), EntityMatch::Embedding, 3)
        .unwrap();
    assert_eq!(g.entities[m[0]].name, "LS", "{m:?}");
    assert!(
        m.iter().any(|&i| g.entities[i].name == "LS --ALL"),
        "{:?}",
        m.iter().map(|&i| &g.entities[i].name).collect::<Vec<_>>()
    );
    let b = lg.match_entities(q, None, EntityMatch::Bm25, 3).unwrap();
    assert!(!b.is_empty());
    // Embedding matching needs the question's vector, of the entity vectors' width.
    let e = lg
        .match_entities(q, None, EntityMatch::Embedding, 3)
        .unwrap_err()
        .to_string();
    assert!(e.contains("question's embedding"), "{e}");
    assert!(
        lg.match_entities(q, Some(&[1.0; 4]), EntityMatch::Embedding, 3)
            .is_err()
    );
    assert_eq!("bm25".parse::<EntityMatch>().unwrap(), EntityMatch::Bm25);
    assert!("cosine".parse::<EntityMatch>().is_err());
    // Without vectors (or with stale ones) embedding matching names the fix.
    let mut plain = g.clone();
    plain.entity_embedding = None;
    plain.entity_vectors.clear();
    let lp = crate::graph_answer::loaded(plain);
    assert_eq!(lp.default_match(), EntityMatch::Bm25);
    let e = lp
        .match_entities(q, Some(&qv), EntityMatch::Embedding, 3)
        .unwrap_err()
        .to_string();
    assert!(e.contains("--entity-match bm25"), "{e}");
    let mut stale = g.clone();
    stale.entities[0].llm_summary = Some("a new description".into());
    assert!(stale.entity_vectors().is_none());
    assert!(stale.no_vectors_error().to_string().contains("stale"));
    // The ranked text units of local search start with the matched option's unit.
    let ix = crate::index::Index::open(&write_toy_index(d.path(), &toy_chunks()), None).unwrap();
    let hits =
        crate::graph_answer::graph_hits(&lg, &ix, q, Some(EntityMatch::Embedding), Some(&qv), 3)
            .unwrap();
    assert_eq!(hits[0].chunk.page, "tar(1)");
}

#[test]
fn entity_vectors_round_trip_and_a_crash_keeps_the_old_pair() {
    let d = tempfile::tempdir().unwrap();
    let g = fast_graph(&toy_chunks(), d.path());
    g.save(d.path()).unwrap();
    let back = KnowledgeGraph::load(d.path(), &toy_chunks()).unwrap();
    assert_eq!(back.entity_vectors, g.entity_vectors);
    assert_eq!(back.entity_embedding, g.entity_embedding);
    let first = g.entity_embedding.as_ref().unwrap().file.clone();
    // New vectors whose file is written but whose graph.json is not (a crash in between): the
    // saved graph still loads with its own vectors.
    let mut g2 = g.clone();
    let v: Vec<f32> = (0..g2.entities.len() * 32)
        .map(|i| (i % 7) as f32)
        .collect();
    g2.set_entity_vectors("toy", 32, v).unwrap();
    let second = g2.entity_embedding.as_ref().unwrap().file.clone();
    assert_ne!(first, second);
    g2.write_entity_vectors(d.path()).unwrap();
    let back = KnowledgeGraph::load(d.path(), &toy_chunks()).unwrap();
    assert_eq!(back.entity_vectors, g.entity_vectors);
    // A complete save switches to the new file and removes the old one.
    g2.save(d.path()).unwrap();
    assert!(!d.path().join(&first).exists() && d.path().join(&second).exists());
    // A truncated vector file is an error naming the sizes, not a panic.
    std::fs::write(d.path().join(&second), [0u8; 12]).unwrap();
    let e = KnowledgeGraph::load(d.path(), &toy_chunks())
        .unwrap_err()
        .to_string();
    assert!(e.contains("found 12 bytes"), "{e}");
    // A graph over other chunks of the same count is refused.
    g.save(d.path()).unwrap();
    let mut other = toy_chunks();
    other[2].text.push_str(" changed");
    let e = KnowledgeGraph::load(d.path(), &other)
        .unwrap_err()
        .to_string();
    assert!(e.contains("other chunks"), "{e}");
}

/// An index of `chunks` with made-up vectors at `dir/t.idx`.
fn write_toy_index(dir: &Path, chunks: &[Chunk]) -> PathBuf {
    let out = dir.join("t.idx");
    write_toy_index_with(&out, chunks, &mut |_| Ok(())).unwrap();
    out
}

fn write_toy_index_with(
    out: &Path,
    chunks: &[Chunk],
    extra: &mut dyn FnMut(&Path) -> Result<()>,
) -> Result<()> {
    use crate::index::{FORMAT, FileEntry, Meta, VERSION, write_index_staged};
    let meta = Meta {
        format: FORMAT.into(),
        version: VERSION,
        model: "toy".into(),
        dim: 32,
        chunks: chunks.len(),
        man_rendered: false,
        roots: vec![],
        files: vec![FileEntry {
            path: "/m".into(),
            size: 1,
            mtime: 1,
            chunk_start: 0,
            chunk_end: chunks.len(),
        }],
        stats: crate::reader::ReadStats::default(),
    };
    let vectors: Vec<f32> = chunks
        .iter()
        .flat_map(|c| toy_embed(&c.indexed_text()))
        .collect();
    write_index_staged(out, &meta, chunks, &vectors, false, extra)
}

#[test]
fn index_update_rebuilds_the_graph_over_changed_chunks_or_keeps_it() {
    let d = tempfile::tempdir().unwrap();
    let ix = write_toy_index(d.path(), &toy_chunks());
    let mut g = fast_graph(&toy_chunks(), &ix.join("llm-cache"));
    g.entities[0].llm_summary = None;
    g.save(&ix).unwrap();
    std::fs::create_dir_all(ix.join("llm-cache")).unwrap();
    std::fs::write(ix.join("llm-cache/abc.json"), "{}").unwrap();
    let mut rebuilds = 0;
    let mut update = |chunks: &[Chunk], fail: bool| -> (Result<()>, GraphCarry) {
        let old = KnowledgeGraph::load_unchecked(&ix).unwrap();
        let mut carried = GraphCarry::None;
        let r = write_toy_index_with(&ix, chunks, &mut |dir| {
            carried = carry_graph(&ix, Some(&old), dir, chunks, &mut |c, cache| {
                rebuilds += 1;
                Ok(fast_graph(c, cache))
            })?;
            if fail {
                return Err(RagError::Invalid("stopped".into()));
            }
            Ok(())
        });
        (r, carried)
    };
    // Unchanged chunks: the graph is kept as it was.
    let (r, c) = update(&toy_chunks(), false);
    r.unwrap();
    assert_eq!(c, GraphCarry::Kept);
    assert_eq!(KnowledgeGraph::load(&ix, &toy_chunks()).unwrap(), g);
    // ls(1) removed, cp(1) added: rebuilt over the new chunks, nothing points past them.
    let mut new = toy_chunks();
    new.pop();
    new.push(chunk(
        "cp(1)",
        "OPTIONS",
        "-r, --recursive\ncopy directories recursively\nSee also mv(1).",
    ));
    new.push(chunk("cp(1)", "NAME", "cp - copy files and directories"));
    // A failure before the swap leaves the old index and its graph in place.
    let (r, _) = update(&new, true);
    assert!(r.is_err());
    let old_ix = crate::index::Index::open(&ix, None).unwrap();
    assert_eq!(old_ix.chunks, toy_chunks());
    assert_eq!(KnowledgeGraph::load(&ix, &old_ix.chunks).unwrap(), g);
    let (r, c) = update(&new, false);
    r.unwrap();
    assert_eq!(c, GraphCarry::Rebuilt);
    let ixn = crate::index::Index::open(&ix, None).unwrap();
    let gn = KnowledgeGraph::load(&ix, &ixn.chunks).unwrap();
    assert_eq!(gn, fast_graph(&new, d.path()));
    let names: Vec<&str> = gn.entities.iter().map(|e| e.name.as_str()).collect();
    assert!(
        names.contains(&"CP --RECURSIVE") && !names.contains(&"LS"),
        "{names:?}"
    );
    let n = ixn.chunks.len();
    assert!(
        gn.entities
            .iter()
            .all(|e| e.text_units.iter().all(|&u| u < n))
    );
    assert!(
        gn.relations
            .iter()
            .all(|r| r.text_units.iter().all(|&u| u < n))
    );
    assert!(
        gn.reports
            .iter()
            .all(|r| r.text_units.iter().all(|&u| u < n))
    );
    assert!(gn.entity_vectors().is_some());
    // The LLM call cache came along; one vector file only.
    assert!(ix.join("llm-cache/abc.json").exists());
    let files = std::fs::read_dir(&ix)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(ENTITY_VECTORS_PREFIX)
        })
        .count();
    assert_eq!(files, 1);
    // The failed update rebuilt too (its graph went with the discarded staged folder).
    assert_eq!(rebuilds, 2);
}
