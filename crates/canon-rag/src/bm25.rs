//! Okapi BM25 (Robertson & Zaragoza, 2009) over an inverted index:
//! `score(q, d) = Σ_t idf(t) · tf·(k1+1) / (tf + k1·(1 − b + b·|d|/avgdl))`,
//! `idf(t) = ln(1 + (N − n_t + 0.5)/(n_t + 0.5))`.

use std::collections::HashMap;

use crate::{RagError, Result};

pub const K1: f32 = 1.2;
pub const B: f32 = 0.75;

/// Lower-case terms: runs of letters, digits, `_` and inner `-`; a dashed word (an option such as
/// `--block-size`) also yields its parts.
pub fn terms(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    for w in s.split(|c: char| !(c.is_alphanumeric() || c == '-' || c == '_')) {
        let t = w.trim_end_matches('-');
        if t.is_empty() || t.chars().all(|c| c == '-') {
            continue;
        }
        let low = t.to_lowercase();
        if low.contains('-') {
            for p in low.split('-').filter(|p| !p.is_empty()) {
                out.push(p.to_string());
            }
        }
        out.push(low);
    }
    out
}

/// The inverted index.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Bm25 {
    /// term → index into `postings`.
    pub vocab: HashMap<String, u32>,
    /// per term: (doc, term frequency), docs ascending.
    pub postings: Vec<Vec<(u32, u32)>>,
    pub doc_len: Vec<u32>,
}

impl Bm25 {
    pub fn build<'a>(docs: impl IntoIterator<Item = &'a str>) -> Bm25 {
        let mut ix = Bm25::default();
        for (d, text) in docs.into_iter().enumerate() {
            ix.add(d as u32, text);
        }
        ix
    }

    /// Adds document `d` (ids must arrive in ascending order).
    pub fn add(&mut self, d: u32, text: &str) {
        let ts = terms(text);
        self.doc_len.push(ts.len() as u32);
        let mut tf: HashMap<String, u32> = HashMap::new();
        for t in ts {
            *tf.entry(t).or_default() += 1;
        }
        let mut tf: Vec<(String, u32)> = tf.into_iter().collect();
        tf.sort();
        for (t, n) in tf {
            let next = self.postings.len() as u32;
            let id = *self.vocab.entry(t).or_insert(next);
            if id == next {
                self.postings.push(Vec::new());
            }
            self.postings[id as usize].push((d, n));
        }
    }

    pub fn len(&self) -> usize {
        self.doc_len.len()
    }

    pub fn is_empty(&self) -> bool {
        self.doc_len.is_empty()
    }

    /// The `k` best documents for `query`, best first (ties by id); documents sharing no term with
    /// the query are not returned.
    pub fn search(&self, query: &str, k: usize) -> Vec<(usize, f32)> {
        let n = self.doc_len.len() as f32;
        if n == 0.0 {
            return Vec::new();
        }
        let avgdl = self.doc_len.iter().map(|&l| l as f64).sum::<f64>() as f32 / n;
        let mut qt = terms(query);
        qt.sort();
        qt.dedup();
        let mut acc: HashMap<u32, f32> = HashMap::new();
        for t in qt {
            let Some(&id) = self.vocab.get(&t) else {
                continue;
            };
            let p = &self.postings[id as usize];
            let nt = p.len() as f32;
            let idf = (1.0 + (n - nt + 0.5) / (nt + 0.5)).ln();
            for &(d, tf) in p {
                let tf = tf as f32;
                let dl = self.doc_len[d as usize] as f32;
                let s = idf * tf * (K1 + 1.0) / (tf + K1 * (1.0 - B + B * dl / avgdl.max(1e-9)));
                *acc.entry(d).or_default() += s;
            }
        }
        let mut v: Vec<(usize, f32)> = acc.into_iter().map(|(d, s)| (d as usize, s)).collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        v.truncate(k);
        v
    }

    /// Binary form: magic, counts, doc lengths, then per term its UTF-8 bytes and postings, all
    /// little-endian u32.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut terms: Vec<(&String, &u32)> = self.vocab.iter().collect();
        terms.sort_by_key(|(_, id)| **id);
        let mut out = b"BM25v1\0\0".to_vec();
        let put = |out: &mut Vec<u8>, x: u32| out.extend_from_slice(&x.to_le_bytes());
        put(&mut out, self.doc_len.len() as u32);
        put(&mut out, terms.len() as u32);
        for &l in &self.doc_len {
            put(&mut out, l);
        }
        for (t, id) in terms {
            put(&mut out, t.len() as u32);
            out.extend_from_slice(t.as_bytes());
            let p = &self.postings[*id as usize];
            put(&mut out, p.len() as u32);
            for &(d, n) in p {
                put(&mut out, d);
                put(&mut out, n);
            }
        }
        out
    }

    pub fn from_bytes(b: &[u8]) -> Result<Bm25> {
        let bad = || RagError::Invalid("the BM25 file of the index is truncated or corrupt".into());
        if b.len() < 16 || &b[..8] != b"BM25v1\0\0" {
            return Err(bad());
        }
        let mut pos = 8;
        let get = |pos: &mut usize| -> Result<u32> {
            let s = b.get(*pos..*pos + 4).ok_or_else(bad)?;
            *pos += 4;
            Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        };
        let nd = get(&mut pos)? as usize;
        let nt = get(&mut pos)? as usize;
        if nd > b.len() || nt > b.len() {
            return Err(bad());
        }
        let mut ix = Bm25 {
            doc_len: Vec::with_capacity(nd),
            ..Default::default()
        };
        for _ in 0..nd {
            ix.doc_len.push(get(&mut pos)?);
        }
        for id in 0..nt {
            let l = get(&mut pos)? as usize;
            let s = b.get(pos..pos + l).ok_or_else(bad)?;
            pos += l;
            let t = std::str::from_utf8(s).map_err(|_| bad())?.to_string();
            let np = get(&mut pos)? as usize;
            if np > b.len() {
                return Err(bad());
            }
            let mut p = Vec::with_capacity(np);
            for _ in 0..np {
                let d = get(&mut pos)?;
                let n = get(&mut pos)?;
                if d as usize >= nd {
                    return Err(bad());
                }
                p.push((d, n));
            }
            ix.vocab.insert(t, id as u32);
            ix.postings.push(p);
        }
        Ok(ix)
    }
}
