//! Leiden against networkx (goldens/rag/leiden_reference.json, made by
//! scripts/leiden_reference.py): our modularity of networkx's partition equals networkx's value,
//! and our Leiden partition is at least as modular as networkx's Louvain partition (within 0.005),
//! with every community connected; planted groups are recovered exactly.

use canon_rag::leiden::{Graph, LeidenConfig, hierarchical_leiden, leiden, modularity};

fn load() -> serde_json::Value {
    let p = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../goldens/rag/leiden_reference.json"
    );
    serde_json::from_str(&std::fs::read_to_string(p).expect("golden file")).expect("json")
}

fn graph(v: &serde_json::Value) -> Graph {
    let n = v["nodes"].as_u64().unwrap() as usize;
    let mut g = Graph::new(n);
    for e in v["edges"].as_array().unwrap() {
        g.add_edge(
            e[0].as_u64().unwrap() as usize,
            e[1].as_u64().unwrap() as usize,
            e[2].as_f64().unwrap(),
        );
    }
    g
}

fn membership(n: usize, groups: &serde_json::Value) -> Vec<usize> {
    let mut m = vec![usize::MAX; n];
    for (c, g) in groups.as_array().unwrap().iter().enumerate() {
        for v in g.as_array().unwrap() {
            m[v.as_u64().unwrap() as usize] = c;
        }
    }
    assert!(m.iter().all(|&c| c != usize::MAX));
    m
}

fn connected(g: &Graph, m: &[usize], c: usize) -> bool {
    let nodes: Vec<usize> = (0..g.len()).filter(|&v| m[v] == c).collect();
    let mut seen = vec![false; g.len()];
    let mut stack = vec![nodes[0]];
    let mut count = 0;
    while let Some(v) = stack.pop() {
        if seen[v] {
            continue;
        }
        seen[v] = true;
        count += 1;
        for &(u, _) in &g.adj[v] {
            if m[u] == c && !seen[u] {
                stack.push(u);
            }
        }
    }
    count == nodes.len()
}

#[test]
fn modularity_matches_networkx_and_leiden_is_as_good_as_louvain() {
    let d = load();
    for gv in d["graphs"].as_array().unwrap() {
        let name = gv["name"].as_str().unwrap();
        let g = graph(gv);
        let ref_m = membership(g.len(), &gv["louvain"]);
        let want = gv["louvain_modularity"].as_f64().unwrap();
        let q_ref = modularity(&g, &ref_m, 1.0);
        assert!(
            (q_ref - want).abs() < 1e-9,
            "{name}: {q_ref} vs networkx {want}"
        );
        let mut best = f64::MIN;
        for seed in [0xDEAD_BEEFu64, 1, 2, 3, 4] {
            let m = leiden(
                &g,
                &LeidenConfig {
                    seed,
                    ..Default::default()
                },
            );
            let q = modularity(&g, &m, 1.0);
            best = best.max(q);
            let c = m.iter().max().unwrap() + 1;
            for k in 0..c {
                assert!(connected(&g, &m, k), "{name}: community {k} disconnected");
            }
        }
        eprintln!("{name}: Leiden {best:.4}, networkx Louvain {want:.4}");
        assert!(
            best >= want - 0.005,
            "{name}: Leiden {best} vs Louvain {want}"
        );
        if let Some(p) = gv.get("planted") {
            let pm = membership(g.len(), p);
            let m = leiden(&g, &LeidenConfig::default());
            for u in 0..g.len() {
                for v in 0..g.len() {
                    assert_eq!(pm[u] == pm[v], m[u] == m[v], "{name}: nodes {u} {v}");
                }
            }
            let cs = hierarchical_leiden(&g, 12, &LeidenConfig::default());
            assert!(cs.iter().filter(|c| c.leaf).all(|c| c.nodes.len() <= 12));
        }
    }
}
