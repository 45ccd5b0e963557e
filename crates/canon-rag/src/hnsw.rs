//! Hierarchical navigable small world graphs (Malkov & Yashunin, 2018) for approximate
//! maximum-inner-product search over L2-normalised vectors (cosine similarity).
//!
//! Levels are drawn as ⌊−ln U · mL⌋ with mL = 1/ln M; each inserted node is linked at every level
//! up to its own to the neighbours chosen by the paper's heuristic (a candidate is kept when it is
//! closer to the new node than to every neighbour kept so far), at most M per level (2M on level
//! 0); a neighbour whose list overflows is pruned with the same heuristic. Search descends
//! greedily to level 0, then runs a best-first search with a candidate list of `ef`.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashSet};

use crate::leiden::Rng;
use crate::{RagError, Result};

/// Default candidate list size at search time.
pub const EF_SEARCH: usize = 512;

/// The candidate list size searches use: `CANON_HNSW_EF` (read once) or [`EF_SEARCH`].
pub fn ef_search() -> usize {
    static EF: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *EF.get_or_init(|| {
        std::env::var("CANON_HNSW_EF")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .filter(|&e| e > 0)
            .unwrap_or(EF_SEARCH)
    })
}

#[derive(Debug, Clone, Copy)]
pub struct HnswConfig {
    pub m: usize,
    pub ef_construction: usize,
    pub seed: u64,
}

impl Default for HnswConfig {
    fn default() -> Self {
        HnswConfig {
            m: 16,
            ef_construction: 100,
            seed: 42,
        }
    }
}

/// The graph only; vectors stay where they are (the index's memory-mapped rows).
#[derive(Debug, Clone, PartialEq)]
pub struct Hnsw {
    pub dim: usize,
    pub m: usize,
    pub entry: usize,
    /// `links[v][l]`: neighbours of `v` on level `l` (`links[v].len()` = its level + 1).
    pub links: Vec<Vec<Vec<u32>>>,
}

#[derive(PartialEq)]
struct Cand(f32, u32);
impl Eq for Cand {}
impl PartialOrd for Cand {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Cand {
    fn cmp(&self, o: &Self) -> Ordering {
        self.0.total_cmp(&o.0).then(o.1.cmp(&self.1))
    }
}

use crate::dense::dot;

fn row(data: &[f32], dim: usize, i: usize) -> &[f32] {
    &data[i * dim..(i + 1) * dim]
}

impl Hnsw {
    /// Builds the graph over `data` (row-major, `dim` wide).
    pub fn build(data: &[f32], dim: usize, cfg: &HnswConfig) -> Hnsw {
        let n = data.len().checked_div(dim).unwrap_or(0);
        let m = cfg.m.max(2);
        let ml = 1.0 / (m as f64).ln();
        let mut rng = Rng::new(cfg.seed);
        let mut h = Hnsw {
            dim,
            m,
            entry: 0,
            links: Vec::with_capacity(n),
        };
        for v in 0..n {
            let u = rng.unit().max(1e-12);
            let level = ((-u.ln()) * ml).floor() as usize;
            h.links.push(vec![Vec::new(); level + 1]);
            if v == 0 {
                continue;
            }
            let q = row(data, dim, v);
            let top = h.links[h.entry].len() - 1;
            let mut ep = h.entry;
            for l in (level + 1..=top).rev() {
                ep = h.greedy(data, q, ep, l);
            }
            for l in (0..=level.min(top)).rev() {
                let cands = h.search_layer(data, q, &[ep], cfg.ef_construction, l);
                let cap = if l == 0 { 2 * m } else { m };
                let chosen = select(data, dim, &cands, m);
                h.links[v][l] = chosen.iter().map(|&c| c as u32).collect();
                for &c in &chosen {
                    h.links[c][l].push(v as u32);
                    if h.links[c][l].len() > cap {
                        let base = row(data, dim, c);
                        let mut cs: Vec<(f32, usize)> = h.links[c][l]
                            .iter()
                            .map(|&x| (dot(base, row(data, dim, x as usize)), x as usize))
                            .collect();
                        cs.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                        h.links[c][l] = select(data, dim, &cs, cap)
                            .into_iter()
                            .map(|x| x as u32)
                            .collect();
                    }
                }
                if let Some(best) = cands.first() {
                    ep = best.1;
                }
            }
            if level > top {
                h.entry = v;
            }
        }
        h
    }

    fn greedy(&self, data: &[f32], q: &[f32], mut ep: usize, l: usize) -> usize {
        let mut best = dot(q, row(data, self.dim, ep));
        loop {
            let mut moved = false;
            for &u in &self.links[ep][l] {
                let s = dot(q, row(data, self.dim, u as usize));
                if s > best {
                    best = s;
                    ep = u as usize;
                    moved = true;
                }
            }
            if !moved {
                return ep;
            }
        }
    }

    /// Best-first search on level `l`: up to `ef` nearest, best first, as (score, id).
    fn search_layer(
        &self,
        data: &[f32],
        q: &[f32],
        eps: &[usize],
        ef: usize,
        l: usize,
    ) -> Vec<(f32, usize)> {
        let mut seen: HashSet<usize> = eps.iter().copied().collect();
        let mut cands: BinaryHeap<Cand> = BinaryHeap::new(); // max-heap by score
        let mut found: BinaryHeap<std::cmp::Reverse<Cand>> = BinaryHeap::new(); // min-heap
        for &e in eps {
            let s = dot(q, row(data, self.dim, e));
            cands.push(Cand(s, e as u32));
            found.push(std::cmp::Reverse(Cand(s, e as u32)));
        }
        while let Some(Cand(s, c)) = cands.pop() {
            let worst = found.peek().map_or(f32::MIN, |w| w.0.0);
            if s < worst && found.len() >= ef {
                break;
            }
            for &u in &self.links[c as usize][l] {
                if !seen.insert(u as usize) {
                    continue;
                }
                let su = dot(q, row(data, self.dim, u as usize));
                let worst = found.peek().map_or(f32::MIN, |w| w.0.0);
                if found.len() < ef || su > worst {
                    cands.push(Cand(su, u));
                    found.push(std::cmp::Reverse(Cand(su, u)));
                    if found.len() > ef {
                        found.pop();
                    }
                }
            }
        }
        let mut out: Vec<(f32, usize)> =
            found.into_iter().map(|r| (r.0.0, r.0.1 as usize)).collect();
        out.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        out
    }

    /// The `k` best rows for `q`, best first, searching with a candidate list of `ef`.
    pub fn search(&self, data: &[f32], q: &[f32], k: usize, ef: usize) -> Vec<(usize, f32)> {
        if self.links.is_empty() || q.len() != self.dim {
            return Vec::new();
        }
        let mut ep = self.entry;
        for l in (1..self.links[ep].len()).rev() {
            ep = self.greedy(data, q, ep, l);
        }
        let mut r = self.search_layer(data, q, &[ep], ef.max(k), 0);
        r.truncate(k);
        r.into_iter().map(|(s, i)| (i, s)).collect()
    }

    /// Little-endian layout: magic, dim, m, entry, n, then per node its level count and, per
    /// level, the neighbour count and ids (u32 throughout).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::new();
        let mut put = |x: u32| b.extend_from_slice(&x.to_le_bytes());
        put(0x484e_5357);
        put(self.dim as u32);
        put(self.m as u32);
        put(self.entry as u32);
        put(self.links.len() as u32);
        for node in &self.links {
            put(node.len() as u32);
            for l in node {
                put(l.len() as u32);
                for &x in l {
                    put(x);
                }
            }
        }
        b
    }

    pub fn from_bytes(b: &[u8]) -> Result<Hnsw> {
        let bad = || {
            RagError::Invalid(
                "expected an HNSW graph file, found a truncated or foreign one".into(),
            )
        };
        let mut pos = 0;
        let mut get = || -> Result<u32> {
            let s = b.get(pos..pos + 4).ok_or_else(bad)?;
            pos += 4;
            Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        };
        if get()? != 0x484e_5357 {
            return Err(bad());
        }
        let dim = get()? as usize;
        let m = get()? as usize;
        let entry = get()? as usize;
        let n = get()? as usize;
        let mut links = Vec::with_capacity(n.min(1 << 24));
        for _ in 0..n {
            let levels = get()? as usize;
            // Every node is on level 0; no build makes more than 64 levels.
            if levels == 0 || levels > 64 {
                return Err(bad());
            }
            let mut node = Vec::with_capacity(levels);
            for _ in 0..levels {
                let c = get()? as usize;
                let mut l = Vec::with_capacity(c.min(1024));
                for _ in 0..c {
                    let x = get()?;
                    if x as usize >= n {
                        return Err(bad());
                    }
                    l.push(x);
                }
                node.push(l);
            }
            links.push(node);
        }
        if n > 0 && entry >= n {
            return Err(bad());
        }
        // A link on level `l` leads to a node that is on level `l` too (the searches follow it
        // there), and the entry point is on the top level.
        let top = links.iter().map(Vec::len).max().unwrap_or(0);
        if n > 0 && links[entry].len() != top {
            return Err(bad());
        }
        for node in &links {
            for (l, level) in node.iter().enumerate() {
                if level.iter().any(|&x| links[x as usize].len() <= l) {
                    return Err(bad());
                }
            }
        }
        Ok(Hnsw {
            dim,
            m,
            entry,
            links,
        })
    }
}

/// The paper's neighbour heuristic over candidates sorted best first: keep a candidate when it is
/// more similar to the base than to every neighbour kept so far; fill up with the rest.
fn select(data: &[f32], dim: usize, cands: &[(f32, usize)], m: usize) -> Vec<usize> {
    let mut kept: Vec<usize> = Vec::new();
    let mut skipped = Vec::new();
    for &(s, c) in cands {
        if kept.len() >= m {
            break;
        }
        let rc = row(data, dim, c);
        if kept.iter().all(|&k| dot(rc, row(data, dim, k)) < s) {
            kept.push(c);
        } else {
            skipped.push(c);
        }
    }
    for c in skipped {
        if kept.len() >= m {
            break;
        }
        kept.push(c);
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dense;

    /// Clustered unit vectors: 40 centres, points around them.
    fn data(n: usize, dim: usize, seed: u64) -> Vec<f32> {
        let mut r = Rng::new(seed);
        let mut gauss = || {
            let u = r.unit().max(1e-12);
            let v = r.unit();
            ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
        };
        let centres: Vec<Vec<f32>> = (0..40)
            .map(|_| (0..dim).map(|_| gauss()).collect())
            .collect();
        let mut out = Vec::with_capacity(n * dim);
        for i in 0..n {
            let mut v: Vec<f32> = centres[i % 40].iter().map(|c| c + 0.6 * gauss()).collect();
            dense::normalize(&mut v);
            out.extend(v);
        }
        out
    }

    #[test]
    fn recall_at_10_against_exact_is_high() {
        let dim = 32;
        let d = data(4000, dim, 1);
        let q = data(200, dim, 2);
        let h = Hnsw::build(&d, dim, &HnswConfig::default());
        let recall = |ef: usize| {
            let mut found = 0;
            for qi in q.chunks_exact(dim) {
                let exact: HashSet<usize> = dense::search(&d, dim, qi, 10)
                    .into_iter()
                    .map(|x| x.0)
                    .collect();
                found += h
                    .search(&d, qi, 10, ef)
                    .iter()
                    .filter(|x| exact.contains(&x.0))
                    .count();
            }
            found as f64 / (200.0 * 10.0)
        };
        let (r32, r_def) = (recall(32), recall(EF_SEARCH));
        eprintln!("recall@10: ef 32 {r32}, ef {EF_SEARCH} {r_def}");
        assert!(
            r_def >= 0.98 && r_def >= r32,
            "recall@10 {r_def} (ef 32: {r32})"
        );
        let back = Hnsw::from_bytes(&h.to_bytes()).unwrap();
        assert_eq!(back, h);
        assert!(Hnsw::from_bytes(&h.to_bytes()[..10]).is_err());
        assert!(Hnsw::from_bytes(b"nonsense").is_err());
    }

    #[test]
    fn small_and_empty() {
        let h = Hnsw::build(&[], 4, &HnswConfig::default());
        assert!(h.search(&[], &[1.0, 0.0, 0.0, 0.0], 3, 10).is_empty());
        let d = [1.0, 0.0, 0.0, 1.0];
        let h = Hnsw::build(&d, 2, &HnswConfig::default());
        assert_eq!(h.search(&d, &[0.0, 1.0], 1, 10)[0].0, 1);
    }
}
