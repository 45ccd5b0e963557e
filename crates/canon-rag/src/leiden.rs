//! Leiden community detection (Traag, Waltman & van Eck, 2019) with the modularity objective,
//! and GraphRAG's hierarchical use of it: communities larger than `max_cluster_size` are
//! clustered again on their induced subgraph, one level deeper.
//!
//! One pass of the algorithm: fast local moving of nodes (a queue of nodes whose neighbourhood
//! changed), refinement of every community (only well-connected singletons merge, into
//! well-connected sub-communities, chosen at random with probability ∝ exp(gain / θ)), then
//! aggregation of the refined partition with the unrefined partition as the starting point on the
//! aggregate graph; repeated until local moving changes nothing. Refinement is what makes every
//! community induce a connected subgraph (Louvain does not guarantee this).

/// An undirected weighted graph (no self loops on input).
#[derive(Debug, Clone, Default)]
pub struct Graph {
    /// `adj[v]` = `(u, w)` for each edge; every edge appears under both ends.
    pub adj: Vec<Vec<(usize, f64)>>,
}

impl Graph {
    pub fn new(n: usize) -> Graph {
        Graph {
            adj: vec![Vec::new(); n],
        }
    }

    /// Adds `w` to the edge `a`–`b` (self loops are ignored).
    pub fn add_edge(&mut self, a: usize, b: usize, w: f64) {
        if a == b {
            return;
        }
        for (x, y) in [(a, b), (b, a)] {
            match self.adj[x].iter_mut().find(|e| e.0 == y) {
                Some(e) => e.1 += w,
                None => self.adj[x].push((y, w)),
            }
        }
    }

    pub fn len(&self) -> usize {
        self.adj.len()
    }

    pub fn is_empty(&self) -> bool {
        self.adj.is_empty()
    }

    pub fn strength(&self, v: usize) -> f64 {
        self.adj[v].iter().map(|e| e.1).sum()
    }

    /// The subgraph induced by `nodes` (renumbered in the given order).
    pub fn induced(&self, nodes: &[usize]) -> Graph {
        let mut idx = std::collections::HashMap::new();
        for (i, &v) in nodes.iter().enumerate() {
            idx.insert(v, i);
        }
        let mut g = Graph::new(nodes.len());
        for (i, &v) in nodes.iter().enumerate() {
            for &(u, w) in &self.adj[v] {
                if let Some(&j) = idx.get(&u) {
                    g.adj[i].push((j, w));
                }
            }
        }
        g
    }
}

/// SplitMix64: a small seeded generator (no dependency, same stream on every platform).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

/// Leiden parameters (GraphRAG's defaults: resolution 1, randomness 0.001, seed 0xDEADBEEF).
#[derive(Debug, Clone, Copy)]
pub struct LeidenConfig {
    pub resolution: f64,
    pub randomness: f64,
    pub seed: u64,
}

impl Default for LeidenConfig {
    fn default() -> Self {
        LeidenConfig {
            resolution: 1.0,
            randomness: 0.001,
            seed: 0xDEAD_BEEF,
        }
    }
}

/// Modularity of `membership` on `g`: Σ_c [ L_c / m − γ (d_c / 2m)² ] (networkx's definition).
pub fn modularity(g: &Graph, membership: &[usize], gamma: f64) -> f64 {
    let two_m: f64 = (0..g.len()).map(|v| g.strength(v)).sum();
    if two_m == 0.0 {
        return 0.0;
    }
    let c = membership.iter().copied().max().map_or(0, |x| x + 1);
    let mut inside = vec![0.0; c];
    let mut deg = vec![0.0; c];
    for v in 0..g.len() {
        deg[membership[v]] += g.strength(v);
        for &(u, w) in &g.adj[v] {
            if membership[u] == membership[v] {
                inside[membership[v]] += w; // each internal edge counted from both ends
            }
        }
    }
    (0..c)
        .map(|i| inside[i] / two_m - gamma * (deg[i] / two_m).powi(2))
        .sum()
}

/// The aggregate graph a pass works on: node strengths are those of the members in the
/// original graph, so self loops need not be stored.
struct Work {
    adj: Vec<Vec<(usize, f64)>>,
    k: Vec<f64>,
    two_m: f64,
}

/// Fast local moving. Returns whether any node moved.
fn move_nodes(g: &Work, part: &mut [usize], gamma: f64, rng: &mut Rng) -> bool {
    let n = g.adj.len();
    let mut kc = vec![0.0; n];
    let mut size = vec![0usize; n];
    for v in 0..n {
        kc[part[v]] += g.k[v];
        size[part[v]] += 1;
    }
    let mut empty: Vec<usize> = (0..n).filter(|&c| size[c] == 0).collect();
    let mut order: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut order);
    let mut queue: std::collections::VecDeque<usize> = order.into();
    let mut queued = vec![true; n];
    let mut w_to = vec![0.0; n];
    let mut touched: Vec<usize> = Vec::new();
    let mut changed = false;
    while let Some(v) = queue.pop_front() {
        queued[v] = false;
        let cur = part[v];
        for &(u, w) in &g.adj[v] {
            let c = part[u];
            if w_to[c] == 0.0 {
                touched.push(c);
            }
            w_to[c] += w;
        }
        kc[cur] -= g.k[v];
        size[cur] -= 1;
        let gain = |c: usize, w: f64| w - gamma * g.k[v] * kc[c] / g.two_m;
        let mut best = cur;
        let mut best_gain = gain(cur, w_to[cur]);
        for &c in &touched {
            let gn = gain(c, w_to[c]);
            if gn > best_gain + 1e-12 {
                best = c;
                best_gain = gn;
            }
        }
        if best_gain < -1e-12 {
            // An empty community (gain 0) beats every negative one.
            best = if size[cur] == 0 {
                cur
            } else {
                empty.pop().unwrap_or(cur)
            };
        }
        if size[cur] == 0 && best != cur {
            empty.push(cur);
        }
        kc[best] += g.k[v];
        size[best] += 1;
        part[v] = best;
        if best != cur {
            changed = true;
            for &(u, _) in &g.adj[v] {
                if part[u] != best && !queued[u] {
                    queued[u] = true;
                    queue.push_back(u);
                }
            }
        }
        for c in touched.drain(..) {
            w_to[c] = 0.0;
        }
    }
    changed
}

/// Refinement of `part`: returns the refined membership.
fn refine(g: &Work, part: &[usize], gamma: f64, theta: f64, rng: &mut Rng) -> Vec<usize> {
    let n = g.adj.len();
    let mut refined: Vec<usize> = (0..n).collect();
    let mut kr = g.k.clone();
    let mut singleton = vec![true; n];
    let mut ks = vec![0.0; n];
    for v in 0..n {
        ks[part[v]] += g.k[v];
    }
    // ext[r]: weight from refined community r to the rest of its community of `part`.
    let mut ext: Vec<f64> = (0..n)
        .map(|v| {
            g.adj[v]
                .iter()
                .filter(|e| part[e.0] == part[v])
                .map(|e| e.1)
                .sum()
        })
        .collect();
    let mut order: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut order);
    let mut w_to = vec![0.0; n];
    let mut touched = Vec::new();
    for v in order {
        if !singleton[v] {
            continue;
        }
        let s = part[v];
        let ext_v = ext[refined[v]];
        if ext_v < gamma * g.k[v] * (ks[s] - g.k[v]) / g.two_m {
            continue;
        }
        for &(u, w) in &g.adj[v] {
            if part[u] == s {
                let r = refined[u];
                if w_to[r] == 0.0 {
                    touched.push(r);
                }
                w_to[r] += w;
            }
        }
        let cur = refined[v];
        let mut cands: Vec<(usize, f64)> = vec![(cur, 0.0)];
        for &r in &touched {
            if r == cur {
                continue;
            }
            let well = ext[r] >= gamma * kr[r] * (ks[s] - kr[r]) / g.two_m;
            let gain = w_to[r] - gamma * g.k[v] * kr[r] / g.two_m;
            if well && gain >= 0.0 {
                cands.push((r, gain));
            }
        }
        let top = cands.iter().map(|c| c.1).fold(f64::MIN, f64::max);
        let weights: Vec<f64> = cands
            .iter()
            .map(|c| ((c.1 - top) / theta.max(1e-12)).exp())
            .collect();
        let total: f64 = weights.iter().sum();
        let mut pick = rng.unit() * total;
        let mut chosen = cands[cands.len() - 1].0;
        for (c, w) in cands.iter().zip(&weights) {
            if pick < *w {
                chosen = c.0;
                break;
            }
            pick -= w;
        }
        if chosen != cur {
            let wv = w_to[chosen];
            ext[chosen] = ext[chosen] + ext_v - 2.0 * wv;
            kr[chosen] += g.k[v];
            kr[cur] = 0.0;
            ext[cur] = 0.0;
            refined[v] = chosen;
            singleton[v] = false;
            // The receiving community keeps the id of its seed node, which stayed in it (only
            // singletons move); its other members already left the singleton state.
            singleton[chosen] = false;
        }
        for r in touched.drain(..) {
            w_to[r] = 0.0;
        }
    }
    refined
}

/// Renumbers labels to 0..c in order of first appearance; returns the count.
fn renumber(labels: &mut [usize]) -> usize {
    let mut map = std::collections::HashMap::new();
    for l in labels.iter_mut() {
        let next = map.len();
        *l = *map.entry(*l).or_insert(next);
    }
    map.len()
}

/// One Leiden run on `g`: the community of each node, numbered from 0.
pub fn leiden(g: &Graph, cfg: &LeidenConfig) -> Vec<usize> {
    let n = g.len();
    let mut rng = Rng::new(cfg.seed);
    let k: Vec<f64> = (0..n).map(|v| g.strength(v)).collect();
    let two_m: f64 = k.iter().sum();
    if n == 0 {
        return Vec::new();
    }
    if two_m == 0.0 {
        return (0..n).collect();
    }
    let mut work = Work {
        adj: g.adj.clone(),
        k,
        two_m,
    };
    // node_of[v]: the aggregate node holding original node v.
    let mut node_of: Vec<usize> = (0..n).collect();
    let mut part: Vec<usize> = (0..n).collect();
    for _ in 0..64 {
        let changed = move_nodes(&work, &mut part, cfg.resolution, &mut rng);
        let nc = renumber(&mut part);
        if !changed || nc == work.adj.len() {
            break;
        }
        let mut refined = refine(&work, &part, cfg.resolution, cfg.randomness, &mut rng);
        let nr = renumber(&mut refined);
        // Aggregate by the refined partition; start from the unrefined one.
        let mut adj: Vec<std::collections::HashMap<usize, f64>> = vec![Default::default(); nr];
        let mut kk = vec![0.0; nr];
        let mut next_part = vec![0usize; nr];
        for v in 0..work.adj.len() {
            let rv = refined[v];
            kk[rv] += work.k[v];
            next_part[rv] = part[v];
            for &(u, w) in &work.adj[v] {
                let ru = refined[u];
                if ru != rv {
                    *adj[rv].entry(ru).or_default() += w;
                }
            }
        }
        for x in node_of.iter_mut() {
            *x = refined[*x];
        }
        work = Work {
            adj: adj
                .into_iter()
                .map(|m| {
                    let mut v: Vec<(usize, f64)> = m.into_iter().collect();
                    v.sort_by_key(|e| e.0);
                    v
                })
                .collect(),
            k: kk,
            two_m,
        };
        part = next_part;
    }
    let mut out: Vec<usize> = node_of.iter().map(|&a| part[a]).collect();
    renumber(&mut out);
    out
}

/// One community of the hierarchy.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Cluster {
    pub id: usize,
    pub level: usize,
    pub parent: Option<usize>,
    /// Node ids of the input graph, ascending.
    pub nodes: Vec<usize>,
    /// Whether the cluster has no children.
    pub leaf: bool,
}

/// Hierarchical Leiden: level 0 is Leiden on `g`; a cluster larger than `max_size` is clustered
/// again on its induced subgraph and its parts form the next level, until every leaf is small
/// enough or could not be split.
pub fn hierarchical_leiden(g: &Graph, max_size: usize, cfg: &LeidenConfig) -> Vec<Cluster> {
    let mut out: Vec<Cluster> = Vec::new();
    let top = leiden(g, cfg);
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (v, &c) in top.iter().enumerate() {
        if c >= groups.len() {
            groups.resize(c + 1, Vec::new());
        }
        groups[c].push(v);
    }
    let mut todo: Vec<usize> = Vec::new();
    for nodes in groups {
        let id = out.len();
        out.push(Cluster {
            id,
            level: 0,
            parent: None,
            nodes,
            leaf: true,
        });
        todo.push(id);
    }
    while let Some(id) = todo.pop() {
        if out[id].nodes.len() <= max_size.max(1) {
            continue;
        }
        let nodes = out[id].nodes.clone();
        let sub = g.induced(&nodes);
        let m = leiden(&sub, cfg);
        let parts = m.iter().copied().max().map_or(0, |x| x + 1);
        if parts <= 1 {
            continue;
        }
        let mut groups = vec![Vec::new(); parts];
        for (i, &c) in m.iter().enumerate() {
            groups[c].push(nodes[i]);
        }
        out[id].leaf = false;
        let level = out[id].level + 1;
        for mut ns in groups {
            ns.sort_unstable();
            let cid = out.len();
            out.push(Cluster {
                id: cid,
                level,
                parent: Some(id),
                nodes: ns,
                leaf: true,
            });
            todo.push(cid);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn planted() -> Graph {
        // 4 cliques of 8 nodes, 4 bridging edges in a ring.
        let mut g = Graph::new(32);
        for c in 0..4 {
            for i in 0..8 {
                for j in i + 1..8 {
                    g.add_edge(c * 8 + i, c * 8 + j, 1.0);
                }
            }
        }
        for c in 0..4 {
            g.add_edge(c * 8, ((c + 1) % 4) * 8 + 1, 1.0);
        }
        g
    }

    fn connected(g: &Graph, nodes: &[usize]) -> bool {
        let set: std::collections::HashSet<usize> = nodes.iter().copied().collect();
        let mut seen = std::collections::HashSet::new();
        let mut stack = vec![nodes[0]];
        while let Some(v) = stack.pop() {
            if !seen.insert(v) {
                continue;
            }
            for &(u, _) in &g.adj[v] {
                if set.contains(&u) && !seen.contains(&u) {
                    stack.push(u);
                }
            }
        }
        seen.len() == nodes.len()
    }

    #[test]
    fn planted_cliques_are_found() {
        let g = planted();
        let m = leiden(&g, &LeidenConfig::default());
        for c in 0..4 {
            for i in 0..8 {
                assert_eq!(m[c * 8 + i], m[c * 8], "{m:?}");
            }
        }
        let distinct: std::collections::HashSet<_> = m.iter().collect();
        assert_eq!(distinct.len(), 4, "{m:?}");
        let q = modularity(&g, &m, 1.0);
        // 4 equal cliques of 28 edges, 116 edges in all: Q = 4 (28/116 - (58/232)^2).
        let want = 4.0 * (28.0 / 116.0 - (58.0f64 / 232.0).powi(2));
        assert!((q - want).abs() < 1e-12, "{q} vs {want}");
    }

    #[test]
    fn hierarchy_respects_max_size_and_connectivity() {
        // Two groups of two cliques each, loosely tied; max size 10 forces a second level
        // wherever level 0 merged cliques.
        let g = planted();
        for seed in [1u64, 2, 3, 0xDEAD_BEEF] {
            let cfg = LeidenConfig {
                seed,
                ..Default::default()
            };
            let cs = hierarchical_leiden(&g, 10, &cfg);
            for c in &cs {
                assert!(connected(&g, &c.nodes), "{c:?}");
                if c.leaf {
                    assert!(c.nodes.len() <= 10, "{c:?}");
                }
                if let Some(p) = c.parent {
                    assert_eq!(cs[p].level + 1, c.level);
                    assert!(c.nodes.iter().all(|v| cs[p].nodes.contains(v)));
                }
            }
            let covered: usize = cs
                .iter()
                .filter(|c| c.level == 0)
                .map(|c| c.nodes.len())
                .sum();
            assert_eq!(covered, 32);
        }
        // A clique of 12 cannot split: it stays a leaf above max size.
        let mut k = Graph::new(12);
        for i in 0..12 {
            for j in i + 1..12 {
                k.add_edge(i, j, 1.0);
            }
        }
        let cs = hierarchical_leiden(&k, 5, &LeidenConfig::default());
        assert_eq!(cs.len(), 1);
        assert!(cs[0].leaf && cs[0].nodes.len() == 12);
    }

    #[test]
    fn isolated_and_empty_graphs() {
        assert!(leiden(&Graph::new(0), &LeidenConfig::default()).is_empty());
        let m = leiden(&Graph::new(3), &LeidenConfig::default());
        assert_eq!(m, vec![0, 1, 2]);
        let mut g = Graph::new(4);
        g.add_edge(0, 1, 1.0);
        g.add_edge(2, 3, 1.0);
        let m = leiden(&g, &LeidenConfig::default());
        assert_eq!(m[0], m[1]);
        assert_eq!(m[2], m[3]);
        assert_ne!(m[0], m[2]);
    }
}
