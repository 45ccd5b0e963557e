//! GraphRAG (Edge et al., 2024) as microsoft/graphrag lays out the pipeline: text units →
//! entity and relationship extraction (an LLM with gleanings, or a fast extractor without one) →
//! merged element descriptions → hierarchical Leiden communities → one report per community →
//! global search (map-reduce over reports with 0–100 helpfulness scores) and local search
//! (matched entities → relationships, text units and reports).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::bm25::Bm25;
use crate::chunk::Chunk;
use crate::leiden::{Cluster, Graph, LeidenConfig, hierarchical_leiden};
use crate::{RagError, Result, io_err};

pub const GRAPH_FILE: &str = "graph.json";
pub const GRAPH_FORMAT: &str = "canon-rag-graph";
pub const GRAPH_VERSION: u32 = 1;

/// Record delimiters of the extraction format.
pub const TUPLE: &str = "<|>";
pub const RECORD: &str = "##";
pub const COMPLETE: &str = "<|COMPLETE|>";

/// What one text unit yielded.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Extraction {
    /// (NAME, TYPE, description)
    pub entities: Vec<(String, String, String)>,
    /// (SOURCE, TARGET, description, strength)
    pub relations: Vec<(String, String, String, f64)>,
}

// ---------------------------------------------------------------------------------------------
// Fast extraction (no LLM): the corpus' own structure plus noun phrases.

const STOP: &[&str] = &[
    "a",
    "an",
    "the",
    "and",
    "or",
    "of",
    "to",
    "in",
    "on",
    "for",
    "by",
    "with",
    "as",
    "at",
    "is",
    "are",
    "be",
    "it",
    "its",
    "this",
    "that",
    "these",
    "those",
    "from",
    "if",
    "not",
    "no",
    "but",
    "when",
    "then",
    "than",
    "which",
    "will",
    "can",
    "may",
    "any",
    "all",
    "each",
    "only",
    "also",
    "into",
    "such",
    "other",
    "use",
    "used",
    "using",
    "see",
    "default",
    "option",
    "options",
    "file",
    "files",
    "e.g",
    "i.e",
    "etc",
    "was",
    "were",
    "has",
    "have",
    "do",
    "does",
    "so",
    "one",
    "more",
    "most",
    "some",
    "same",
    "there",
    "their",
    "they",
    "you",
    "your",
    "we",
    "our",
    "instead",
    "otherwise",
    "without",
    "given",
    "specified",
    "set",
    "print",
    "show",
    "list",
    "like",
];

fn is_stop(w: &str) -> bool {
    STOP.contains(&w)
}

/// The command a page documents: `tar(1)` → `TAR`.
fn page_entity(page: &str) -> String {
    page.split('(').next().unwrap_or(page).to_uppercase()
}

fn option_tokens(line: &str) -> Vec<String> {
    let t = line.trim_start();
    if !t.starts_with('-') {
        return Vec::new();
    }
    let head = t.split("  ").next().unwrap_or(t);
    head.split([',', ' '])
        .filter_map(|p| {
            let p = p.trim();
            let end = p
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
                .unwrap_or(p.len());
            let o = &p[..end];
            (o.len() >= 2
                && o.starts_with('-')
                && o.chars().nth(1) != Some(' ')
                && o.trim_start_matches('-')
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphanumeric()))
            .then(|| o.to_string())
        })
        .collect()
}

/// Noun-phrase-like candidates: runs of 2–3 lower-case words with no stop word.
pub fn noun_phrases(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for sent in text.split(['.', ';', ':', ',', '(', ')', '\n']) {
        let words: Vec<&str> = sent.split_whitespace().collect();
        let mut run: Vec<&str> = Vec::new();
        let flush = |run: &mut Vec<&str>, out: &mut Vec<String>| {
            if (2..=3).contains(&run.len()) {
                out.push(run.join(" ").to_uppercase());
            } else if run.len() > 3 {
                out.push(run[run.len() - 2..].join(" ").to_uppercase());
            }
            run.clear();
        };
        for w in words {
            let ok = w.len() >= 3
                && w.chars().all(|c| c.is_ascii_lowercase() || c == '-')
                && !w.starts_with('-')
                && !is_stop(w);
            if ok {
                run.push(w);
            } else {
                flush(&mut run, &mut out);
            }
        }
        flush(&mut run, &mut out);
    }
    out
}

/// Entities and relationships of one chunk by structure: the page's command; options (linked to
/// the command, described by the text that follows them); file paths; environment variables;
/// `name(section)` references (SEE ALSO and in text); noun phrases (linked to the command).
pub fn fast_extract(c: &Chunk) -> Extraction {
    let mut ex = Extraction::default();
    let cmd = page_entity(&c.page);
    let sec = c.section.to_uppercase();
    let first_desc = if sec == "NAME" {
        c.text
            .lines()
            .find(|l| l.contains(" - "))
            .map(|l| l.trim().to_string())
            .unwrap_or_default()
    } else {
        String::new()
    };
    ex.entities.push((
        cmd.clone(),
        "COMMAND".into(),
        if first_desc.is_empty() {
            format!("{} is documented in {}", cmd.to_lowercase(), c.page)
        } else {
            first_desc
        },
    ));
    let lines: Vec<&str> = c.text.lines().collect();
    for (i, l) in lines.iter().enumerate() {
        let opts = option_tokens(l);
        if !opts.is_empty() {
            let same = l
                .trim_start()
                .split_once("  ")
                .map(|x| x.1.trim())
                .unwrap_or("");
            let desc = if !same.is_empty() {
                same.to_string()
            } else {
                lines
                    .get(i + 1)
                    .map(|n| n.trim())
                    .filter(|n| !n.starts_with('-'))
                    .unwrap_or("")
                    .to_string()
            };
            let name = format!(
                "{} {}",
                cmd,
                opts.last().map_or("", |s| s.as_str()).to_uppercase()
            );
            let d = if desc.is_empty() {
                format!("option {} of {}", opts.join(", "), c.page)
            } else {
                format!("{} ({}): {desc}", opts.join(", "), c.page)
            };
            ex.entities.push((name.clone(), "OPTION".into(), d.clone()));
            ex.relations.push((cmd.clone(), name, d, 1.0));
        }
    }
    for tok in c.text.split(|ch: char| {
        ch.is_whitespace() || matches!(ch, ',' | '\'' | '"' | '`' | '(' | ')' | ';')
    }) {
        let t = tok.trim_end_matches(['.', ':']);
        if t.len() > 3
            && (t.starts_with('/') || t.starts_with("~/"))
            && t[1..].contains(|ch: char| ch.is_ascii_alphabetic())
            && t.chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "/._-~".contains(ch))
            && t.matches('/').count() >= 2
        {
            let name = t.to_uppercase();
            let d = format!("file {t}, mentioned in {} ({})", c.page, c.section);
            ex.entities.push((name.clone(), "FILE".into(), d.clone()));
            ex.relations.push((cmd.clone(), name, d, 1.0));
        }
        let v = t.strip_prefix('$').unwrap_or(t);
        let env_like = v.len() >= 3
            && v.chars()
                .all(|ch| ch.is_ascii_uppercase() || ch.is_ascii_digit() || ch == '_')
            && v.chars().next().is_some_and(|ch| ch.is_ascii_uppercase())
            && (t.starts_with('$')
                || (sec.contains("ENVIRONMENT") && v.contains('_'))
                || (sec.contains("ENVIRONMENT") && l_is_tag(&c.text, v)));
        if env_like {
            let d = format!("environment variable {v}, read by {}", c.page);
            ex.entities
                .push((v.to_string(), "ENVIRONMENT VARIABLE".into(), d.clone()));
            ex.relations.push((cmd.clone(), v.to_string(), d, 1.0));
        }
    }
    // name(section) references.
    let b = c.text.as_bytes();
    let mut i = 0;
    while let Some(p) = c.text[i..].find('(') {
        let at = i + p;
        let mut s = at;
        while s > 0 && (b[s - 1].is_ascii_alphanumeric() || matches!(b[s - 1], b'-' | b'_' | b'.'))
        {
            s -= 1;
        }
        let close = c.text[at..].find(')').map(|x| at + x);
        if let Some(e) = close {
            let name = &c.text[s..at];
            let num = &c.text[at + 1..e];
            if !name.is_empty()
                && name
                    .chars()
                    .next()
                    .is_some_and(|ch| ch.is_ascii_alphabetic())
                && (1..=3).contains(&num.len())
                && num.chars().next().is_some_and(|ch| ch.is_ascii_digit())
            {
                let other = name.to_uppercase();
                if other != cmd {
                    let d = format!("{} refers to {name}({num})", c.page);
                    // Described where it is documented; the reference is the relationship.
                    ex.entities
                        .push((other.clone(), "COMMAND".into(), String::new()));
                    ex.relations.push((cmd.clone(), other, d, 1.0));
                }
            }
        }
        i = at + 1;
    }
    for np in noun_phrases(&c.text) {
        ex.entities
            .push((np.clone(), "CONCEPT".into(), String::new()));
        ex.relations.push((cmd.clone(), np, String::new(), 1.0));
    }
    ex
}

fn l_is_tag(text: &str, v: &str) -> bool {
    text.lines().any(|l| l.trim() == v)
}

// ---------------------------------------------------------------------------------------------
// LLM extraction: prompt, parser, gleanings, cache.

/// A chat-completion model. Implementations: the local generator, a remote OpenAI-compatible
/// endpoint, scripted fakes in tests.
pub trait Llm {
    /// Completes a conversation of `(role, content)` messages.
    fn chat(
        &mut self,
        messages: &[(String, String)],
        max_tokens: usize,
    ) -> std::result::Result<String, String>;
    /// Identifies the model in cache keys.
    fn id(&self) -> String;
}

/// A local model's prompt of `prompt` tokens leaves room for `max_tokens` answer tokens within its
/// context of `context` tokens, or the error naming the three.
pub fn check_fits(
    prompt: usize,
    max_tokens: usize,
    context: usize,
) -> std::result::Result<(), String> {
    if prompt + max_tokens > context {
        return Err(format!(
            "prompt of {prompt} tokens and {max_tokens} answer tokens exceed the context of {context}"
        ));
    }
    Ok(())
}

/// Default entity types (GraphRAG's) plus the ones a manual has.
pub const ENTITY_TYPES: &[&str] = &[
    "organization",
    "person",
    "geo",
    "event",
    "command",
    "option",
    "file",
];

/// The extraction instruction for one text unit (written for this project; the record format is
/// GraphRAG's).
pub fn extraction_prompt(text: &str, types: &[&str]) -> String {
    format!(
        "Goal: find every entity of the types [{types}] in the text, and every pair of those entities \
that are clearly related.\n\n\
For each entity write (\"entity\"{TUPLE}NAME{TUPLE}TYPE{TUPLE}what the text says about it)\n\
For each related pair write (\"relationship\"{TUPLE}SOURCE{TUPLE}TARGET{TUPLE}how they are related{TUPLE}strength from 1 to 10)\n\
Separate records with {RECORD} and finish with {COMPLETE}\n\n\
Example:\nText: cp copies files; with -r it copies directories recursively.\nOutput:\n\
(\"entity\"{TUPLE}CP{TUPLE}COMMAND{TUPLE}cp copies files){RECORD}\n\
(\"entity\"{TUPLE}-R{TUPLE}OPTION{TUPLE}makes cp copy directories recursively){RECORD}\n\
(\"relationship\"{TUPLE}CP{TUPLE}-R{TUPLE}-r is an option of cp for recursive copies{TUPLE}8){COMPLETE}\n\n\
Text: {text}\nOutput:",
        types = types.join(", ")
    )
}

/// Asked after an extraction: add what was missed.
pub const CONTINUE_PROMPT: &str = "Many entities and relationships were missed in the last extraction. \
Add them below in the same format, records only:";
/// Asked between gleanings: answer Y or N.
pub const LOOP_PROMPT: &str = "Were some entities or relationships still missed? Answer Y if yes, N if no, with that single letter.";

/// Parses extraction output. Names and types are upper-cased; a non-numeric strength becomes
/// 1.0; malformed records are counted and skipped.
pub fn parse_records(out: &str) -> (Extraction, usize) {
    let body = out.split(COMPLETE).next().unwrap_or(out);
    let mut ex = Extraction::default();
    let mut bad = 0;
    for rec in body.split(RECORD) {
        let r = rec.trim();
        if r.is_empty() {
            continue;
        }
        let Some(inner) = r
            .find('(')
            .and_then(|s| r.rfind(')').filter(|&e| e > s).map(|e| &r[s + 1..e]))
        else {
            bad += 1;
            continue;
        };
        let f: Vec<String> = inner
            .split(TUPLE)
            .map(|x| x.trim().trim_matches('"').trim().to_string())
            .collect();
        match f.first().map(|s| s.to_lowercase()).as_deref() {
            Some("entity") if f.len() >= 4 && !f[1].is_empty() => {
                ex.entities
                    .push((f[1].to_uppercase(), f[2].to_uppercase(), f[3..].join(" ")))
            }
            Some("relationship") if f.len() >= 5 && !f[1].is_empty() && !f[2].is_empty() => {
                let strength = f[4].parse::<f64>().unwrap_or(1.0);
                ex.relations.push((
                    f[1].to_uppercase(),
                    f[2].to_uppercase(),
                    f[3].clone(),
                    strength,
                ))
            }
            _ => bad += 1,
        }
    }
    (ex, bad)
}

/// LLM calls stored on disk by a hash of (model, messages, max tokens): a rerun finds the
/// answers of the calls that finished and asks only the rest.
pub struct CachedLlm<'a> {
    pub inner: &'a mut dyn Llm,
    pub dir: PathBuf,
    pub hits: usize,
    pub misses: usize,
}

fn fnv(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A cached call's file name and full request text: two independent 64-bit hashes of (model,
/// messages, max tokens and, when given, the output's JSON schema); the full request is stored
/// with the answer and compared on read.
pub fn call_key(
    model: &str,
    messages: &[(String, String)],
    max_tokens: usize,
    schema: Option<&serde_json::Value>,
) -> (String, String) {
    let mut req =
        serde_json::json!({"model": model, "messages": messages, "max_tokens": max_tokens});
    if let Some(s) = schema {
        req["schema"] = s.clone();
    }
    let text = req.to_string();
    (
        format!("{:016x}{:016x}", fnv(&text), fnv(&format!("canon{text}"))),
        text,
    )
}

impl<'a> CachedLlm<'a> {
    pub fn new(inner: &'a mut dyn Llm, dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        Ok(CachedLlm {
            inner,
            dir: dir.to_path_buf(),
            hits: 0,
            misses: 0,
        })
    }

    fn key(&self, messages: &[(String, String)], max_tokens: usize) -> (String, String) {
        call_key(&self.inner.id(), messages, max_tokens, None)
    }

    pub fn chat(
        &mut self,
        messages: &[(String, String)],
        max_tokens: usize,
    ) -> std::result::Result<String, String> {
        let (k, req) = self.key(messages, max_tokens);
        let p = self.dir.join(format!("{k}.json"));
        if let Ok(t) = std::fs::read_to_string(&p)
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&t)
            && v["request"].as_str() == Some(req.as_str())
            && let Some(r) = v["response"].as_str()
        {
            self.hits += 1;
            return Ok(r.to_string());
        }
        let r = self.inner.chat(messages, max_tokens)?;
        self.misses += 1;
        let body = serde_json::json!({"request": req, "response": r}).to_string();
        // A cache entry that cannot be written is only a lost cache hit.
        let _ = canon_fs::write_atomic(&p, body.as_bytes());
        Ok(r)
    }
}

/// Extraction statistics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExtractStats {
    pub calls: usize,
    pub malformed_records: usize,
    pub failed_units: usize,
}

/// Extracts from one text unit: the first pass, then up to `max_gleanings` continuations; between
/// gleanings a Y/N question decides whether to go on (skipped after the last one). A failed call
/// or an output with no record at all counts as a failure and yields what was parsed so far.
pub fn extract_with_gleanings(
    llm: &mut CachedLlm,
    text: &str,
    max_gleanings: usize,
    max_tokens: usize,
    stats: &mut ExtractStats,
) -> Extraction {
    let mut msgs = vec![("user".to_string(), extraction_prompt(text, ENTITY_TYPES))];
    stats.calls += 1;
    let first = match llm.chat(&msgs, max_tokens) {
        Ok(o) => o,
        Err(_) => {
            stats.failed_units += 1;
            return Extraction::default();
        }
    };
    let (mut ex, bad) = parse_records(&first);
    stats.malformed_records += bad;
    if ex.entities.is_empty() && ex.relations.is_empty() {
        stats.failed_units += 1;
    }
    msgs.push(("assistant".into(), first));
    for g in 0..max_gleanings {
        msgs.push(("user".into(), CONTINUE_PROMPT.into()));
        stats.calls += 1;
        let Ok(more) = llm.chat(&msgs, max_tokens) else {
            break;
        };
        let (e2, bad) = parse_records(&more);
        stats.malformed_records += bad;
        ex.entities.extend(e2.entities);
        ex.relations.extend(e2.relations);
        msgs.push(("assistant".into(), more));
        if g + 1 == max_gleanings {
            break;
        }
        msgs.push(("user".into(), LOOP_PROMPT.into()));
        stats.calls += 1;
        let Ok(yn) = llm.chat(&msgs, 1) else {
            break;
        };
        if yn.trim().to_uppercase() != "Y" {
            break;
        }
        msgs.push(("assistant".into(), yn));
    }
    ex
}

// ---------------------------------------------------------------------------------------------
// The graph: merged elements, communities, reports.

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entity {
    pub name: String,
    pub kind: String,
    /// Distinct descriptions, in order of first appearance.
    pub descriptions: Vec<String>,
    /// Chunk ids the entity was found in.
    pub text_units: Vec<usize>,
    pub degree: usize,
    /// The descriptions summarised by a language model (`canon graph summarize`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm_summary: Option<String>,
}

/// `s` cut to at most `max_chars` bytes at a character boundary.
fn cut(s: &str, max_chars: usize) -> String {
    s[..s.floor_char_boundary(max_chars.min(s.len()))].to_string()
}

impl Entity {
    /// The merged description: the model's summary when there is one, else the descriptions
    /// joined; at most `max_chars`.
    pub fn summary(&self, max_chars: usize) -> String {
        if let Some(t) = &self.llm_summary {
            return cut(t, max_chars);
        }
        let mut s = String::new();
        for d in &self.descriptions {
            if s.len() + d.len() + 2 > max_chars && !s.is_empty() {
                break;
            }
            if !s.is_empty() {
                s.push_str("; ");
            }
            s.push_str(d);
        }
        s
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Relation {
    pub source: usize,
    pub target: usize,
    pub descriptions: Vec<String>,
    /// Sum of the instances' strengths.
    pub weight: f64,
    pub text_units: Vec<usize>,
    /// The descriptions summarised by a language model (`canon graph summarize`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm_summary: Option<String>,
}

impl Relation {
    /// The model's summary when there is one, else the first description.
    pub fn description(&self) -> &str {
        self.llm_summary
            .as_deref()
            .or(self.descriptions.first().map(String::as_str))
            .unwrap_or("")
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub cluster: usize,
    pub level: usize,
    pub title: String,
    /// The report text: entity summaries and relationship findings, most prominent first.
    pub text: String,
    /// Sum of member degrees (the order reports are listed in).
    pub rank: f64,
    /// Chunk ids behind the community's elements, most frequent first.
    pub text_units: Vec<usize>,
    /// The report a language model wrote (`canon graph summarize`); `title` and `text` then
    /// render it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm: Option<crate::graph_llm::LlmReport>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KnowledgeGraph {
    pub format: String,
    pub version: u32,
    /// `fast` or the extracting model's id.
    pub extractor: String,
    pub chunks: usize,
    pub entities: Vec<Entity>,
    pub relations: Vec<Relation>,
    pub clusters: Vec<Cluster>,
    pub reports: Vec<Report>,
    pub stats: ExtractStats,
}

/// Merges per-unit extractions: entities by exact upper-cased name (the first type seen wins;
/// descriptions deduplicated), relationships by unordered (source, target) with strengths added.
/// Noun phrases found in fewer than `min_np_units` units are dropped (with their edges).
pub fn merge(units: &[(usize, Extraction)], min_np_units: usize) -> (Vec<Entity>, Vec<Relation>) {
    let mut ents: Vec<Entity> = Vec::new();
    let mut by_name: HashMap<String, usize> = HashMap::new();
    for (u, ex) in units {
        for (n, t, d) in &ex.entities {
            let i = *by_name.entry(n.clone()).or_insert_with(|| {
                ents.push(Entity {
                    name: n.clone(),
                    kind: t.clone(),
                    descriptions: Vec::new(),
                    text_units: Vec::new(),
                    degree: 0,
                    llm_summary: None,
                });
                ents.len() - 1
            });
            let e = &mut ents[i];
            if !d.is_empty() && !e.descriptions.contains(d) {
                e.descriptions.push(d.clone());
            }
            if e.text_units.last() != Some(u) && !e.text_units.contains(u) {
                e.text_units.push(*u);
            }
        }
    }
    let keep: Vec<bool> = ents
        .iter()
        .map(|e| e.kind != "CONCEPT" || e.text_units.len() >= min_np_units)
        .collect();
    let mut rels: BTreeMap<(usize, usize), Relation> = BTreeMap::new();
    for (u, ex) in units {
        for (s, t, d, w) in &ex.relations {
            let (Some(&a), Some(&b)) = (by_name.get(s), by_name.get(t)) else {
                continue;
            };
            if a == b || !keep[a] || !keep[b] {
                continue;
            }
            let key = (a.min(b), a.max(b));
            let r = rels.entry(key).or_insert_with(|| Relation {
                source: key.0,
                target: key.1,
                descriptions: Vec::new(),
                weight: 0.0,
                text_units: Vec::new(),
                llm_summary: None,
            });
            r.weight += w;
            if !d.is_empty() && !r.descriptions.contains(d) {
                r.descriptions.push(d.clone());
            }
            if !r.text_units.contains(u) {
                r.text_units.push(*u);
            }
        }
    }
    // Renumber the kept entities.
    let mut new_id = vec![usize::MAX; ents.len()];
    let mut kept = Vec::new();
    for (i, e) in ents.into_iter().enumerate() {
        if keep[i] {
            new_id[i] = kept.len();
            kept.push(e);
        }
    }
    let mut rels: Vec<Relation> = rels
        .into_values()
        .map(|mut r| {
            r.source = new_id[r.source];
            r.target = new_id[r.target];
            r
        })
        .collect();
    for r in &rels {
        kept[r.source].degree += 1;
        kept[r.target].degree += 1;
    }
    rels.sort_by_key(|r| (r.source, r.target));
    (kept, rels)
}

/// Rough token count for report budgets (words × 4/3).
pub fn approx_tokens(s: &str) -> usize {
    (s.split_whitespace().count() * 4).div_ceil(3)
}

/// An extractive community report: relationships in decreasing prominence (combined degree of
/// source and target), each with its description and the entities' summaries, added while they
/// fit `budget` tokens (by `count`).
pub fn build_report(
    cluster: &Cluster,
    ents: &[Entity],
    rels: &[Relation],
    budget: usize,
    count: &dyn Fn(&str) -> usize,
) -> Report {
    let members: BTreeSet<usize> = cluster.nodes.iter().copied().collect();
    let mut inner: Vec<&Relation> = rels
        .iter()
        .filter(|r| members.contains(&r.source) && members.contains(&r.target))
        .collect();
    inner.sort_by(|a, b| {
        let da = ents[a.source].degree + ents[a.target].degree;
        let db = ents[b.source].degree + ents[b.target].degree;
        db.cmp(&da)
            .then(a.source.cmp(&b.source))
            .then(a.target.cmp(&b.target))
    });
    let mut top: Vec<usize> = cluster.nodes.clone();
    top.sort_by(|&a, &b| ents[b].degree.cmp(&ents[a].degree).then(a.cmp(&b)));
    let title = top
        .iter()
        .take(3)
        .map(|&i| ents[i].name.clone())
        .collect::<Vec<_>>()
        .join(", ");
    let head = format!("Community {}: {title}\n", cluster.id);
    let mut text = head.clone();
    let mut used = count(&head);
    let mut described: BTreeSet<usize> = BTreeSet::new();
    let push = |line: String, text: &mut String, used: &mut usize| -> bool {
        let c = count(&line);
        if *used + c > budget {
            return false;
        }
        *used += c;
        text.push_str(&line);
        true
    };
    'outer: for r in &inner {
        for e in [r.source, r.target] {
            if described.insert(e) {
                let s = ents[e].summary(300);
                if !s.is_empty()
                    && !push(format!("- {}: {s}\n", ents[e].name), &mut text, &mut used)
                {
                    break 'outer;
                }
            }
        }
        let d = r.description().to_string();
        let line = format!(
            "- {} — {}{}\n",
            ents[r.source].name,
            ents[r.target].name,
            if d.is_empty() {
                String::new()
            } else {
                format!(": {d}")
            }
        );
        if !push(line, &mut text, &mut used) {
            break;
        }
    }
    for &e in &top {
        if described.insert(e) {
            let s = ents[e].summary(300);
            if !s.is_empty() && !push(format!("- {}: {s}\n", ents[e].name), &mut text, &mut used) {
                break;
            }
        }
    }
    let mut freq: HashMap<usize, usize> = HashMap::new();
    for &e in &cluster.nodes {
        for &u in &ents[e].text_units {
            *freq.entry(u).or_default() += 1;
        }
    }
    let mut units: Vec<(usize, usize)> = freq.into_iter().collect();
    units.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    Report {
        cluster: cluster.id,
        level: cluster.level,
        title,
        text,
        rank: cluster.nodes.iter().map(|&e| ents[e].degree as f64).sum(),
        text_units: units.into_iter().map(|u| u.0).collect(),
        llm: None,
    }
}

/// Builds the graph from extractions: merge, hierarchical Leiden, reports.
pub fn build_graph(
    extractor: &str,
    chunks: usize,
    units: &[(usize, Extraction)],
    stats: ExtractStats,
    max_cluster_size: usize,
    report_budget: usize,
    min_np_units: usize,
) -> KnowledgeGraph {
    let (entities, relations) = merge(units, min_np_units);
    let mut g = Graph::new(entities.len());
    for r in &relations {
        g.add_edge(r.source, r.target, r.weight);
    }
    let clusters: Vec<Cluster> =
        hierarchical_leiden(&g, max_cluster_size, &LeidenConfig::default())
            .into_iter()
            .filter(|c| c.nodes.len() > 1 || !g.adj[c.nodes[0]].is_empty())
            .collect();
    let reports = clusters
        .iter()
        .map(|c| build_report(c, &entities, &relations, report_budget, &approx_tokens))
        .collect();
    KnowledgeGraph {
        format: GRAPH_FORMAT.into(),
        version: GRAPH_VERSION,
        extractor: extractor.into(),
        chunks,
        entities,
        relations,
        clusters,
        reports,
        stats,
    }
}

impl KnowledgeGraph {
    /// Writes `graph.json` into the index folder atomically.
    pub fn save(&self, index_dir: &Path) -> Result<()> {
        let p = index_dir.join(GRAPH_FILE);
        let s = serde_json::to_string(self).map_err(|e| RagError::Invalid(e.to_string()))?;
        canon_fs::write_atomic(&p, s.as_bytes()).map_err(|e| io_err(&p, e))
    }

    /// Reads `graph.json`, checking format, version and that it matches the index's chunk count.
    pub fn load(index_dir: &Path, chunks: usize) -> Result<KnowledgeGraph> {
        let p = index_dir.join(GRAPH_FILE);
        if !p.exists() {
            return Err(RagError::Invalid(format!(
                "expected a graph in {} (run `canon graph build --index {}`), found none",
                index_dir.display(),
                index_dir.display()
            )));
        }
        let t = std::fs::read_to_string(&p).map_err(|e| io_err(&p, e))?;
        let g: KnowledgeGraph = serde_json::from_str(&t).map_err(|e| {
            RagError::Invalid(format!(
                "expected {GRAPH_FORMAT} JSON in {}, found {e}",
                p.display()
            ))
        })?;
        if g.format != GRAPH_FORMAT || g.version != GRAPH_VERSION {
            return Err(RagError::Invalid(format!(
                "expected graph format {GRAPH_FORMAT} version {GRAPH_VERSION}, found {} version {}",
                g.format, g.version
            )));
        }
        if g.chunks != chunks {
            return Err(RagError::Invalid(format!(
                "expected a graph built over this index's {chunks} chunks, found one over {} (rebuild it with `canon graph build`)",
                g.chunks
            )));
        }
        Ok(g)
    }

    pub fn levels(&self) -> usize {
        self.clusters.iter().map(|c| c.level + 1).max().unwrap_or(0)
    }
}

// ---------------------------------------------------------------------------------------------
// Query.

/// One key point of a map answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KeyPoint {
    pub score: u32,
    pub text: String,
    /// The report it came from.
    pub report: usize,
}

/// The map instruction for one batch of reports.
pub fn map_prompt(question: &str, reports: &str) -> String {
    format!(
        "Community reports:\n{reports}\n\nQuestion: {question}\n\n\
List the points from these reports that help answer the question, one per line, each as \
`score: point` where score is how helpful the point is, from 0 (useless) to 100 (answers it). \
Write `0: none` if nothing helps."
    )
}

/// Parses map output lines `score: point` (also `Score 80 - point`, `(80) point`; score clamped
/// to 0..=100); lines without a leading score are skipped.
pub fn parse_map(out: &str, report: usize) -> Vec<KeyPoint> {
    out.lines()
        .filter_map(|l| {
            let mut t = l.trim().trim_start_matches(['-', '*', ' ', '(', '[']);
            if t.len() >= 5 && t[..5].eq_ignore_ascii_case("score") {
                t = t[5..].trim_start_matches([' ', ':', '=']);
            }
            let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
            if digits == 0 || digits > 3 {
                return None;
            }
            let score: u32 = t[..digits].parse().ok()?;
            // The score is followed by `:`, `/100`, `)`, `]` or ` -`; `1.` is list numbering.
            let after = &t[digits..];
            let after = after.strip_prefix("/100").unwrap_or(after);
            let rest = match after.strip_prefix([':', ')', ']']) {
                Some(r) => r,
                None => after.strip_prefix(" -")?,
            };
            let rest = rest.trim_start_matches([':', ' ', '-']).trim();
            (!rest.is_empty()).then(|| KeyPoint {
                score: score.min(100),
                text: rest.to_string(),
                report,
            })
        })
        .collect()
}

/// Packs report texts into batches of at most `budget` tokens (a report longer than the budget
/// is its own batch), in the given order.
pub fn pack(
    reports: &[(usize, String)],
    budget: usize,
    count: &dyn Fn(&str) -> usize,
) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut used = 0;
    for (i, (_, t)) in reports.iter().enumerate() {
        let c = count(t);
        if out.is_empty() || used + c > budget {
            out.push(Vec::new());
            used = 0;
        }
        used += c;
        if let Some(last) = out.last_mut() {
            last.push(i);
        }
    }
    out
}

/// The canned answer when no key point survives.
pub const NO_ANSWER: &str =
    "I do not know: none of the community reports has information that answers this question.";

/// Reduce: drops points scored 0, sorts the rest by score (descending, stable), and adds them to
/// the context while they fit `budget`. `None` when nothing survives (answer [`NO_ANSWER`]).
pub fn reduce_context(
    points: &[KeyPoint],
    budget: usize,
    count: &dyn Fn(&str) -> usize,
) -> Option<(String, Vec<KeyPoint>)> {
    let mut kept: Vec<KeyPoint> = points.iter().filter(|p| p.score > 0).cloned().collect();
    if kept.is_empty() {
        return None;
    }
    kept.sort_by_key(|p| std::cmp::Reverse(p.score));
    let mut ctx = String::new();
    let mut used = 0;
    let mut out = Vec::new();
    for p in kept {
        let line = format!("[{}] (importance {}) {}\n", out.len() + 1, p.score, p.text);
        let c = count(&line);
        if used + c > budget {
            break;
        }
        used += c;
        ctx.push_str(&line);
        out.push(p);
    }
    Some((ctx, out))
}

/// Extractive map for use without an LLM: a report's helpfulness is its BM25 score against the
/// question, scaled so the best report of the level scores 100; its key point is the report's
/// best-matching lines.
pub fn extractive_map(
    g: &KnowledgeGraph,
    level: usize,
    question: &str,
    top: usize,
) -> Vec<KeyPoint> {
    extractive_map_with(g, &report_index(g, level), question, top)
}

/// The reports of a level (and the leaves above it) with their BM25 index.
pub fn report_index(g: &KnowledgeGraph, level: usize) -> (Vec<usize>, Bm25) {
    let ids: Vec<usize> = (0..g.reports.len())
        .filter(|&i| {
            g.reports[i].level == level
                || (g.reports[i].level < level && is_leaf(g, g.reports[i].cluster))
        })
        .collect();
    let bm = Bm25::build(ids.iter().map(|&i| g.reports[i].text.as_str()));
    (ids, bm)
}

/// [`extractive_map`] over a prebuilt [`report_index`].
pub fn extractive_map_with(
    g: &KnowledgeGraph,
    ix: &(Vec<usize>, Bm25),
    question: &str,
    top: usize,
) -> Vec<KeyPoint> {
    let (ids, bm) = ix;
    let hits = bm.search(question, top);
    let best = hits.first().map_or(0.0, |h| h.1 as f64);
    let qterms: BTreeSet<String> = crate::bm25::terms(question).into_iter().collect();
    hits.iter()
        .map(|&(j, s)| {
            let r = &g.reports[ids[j]];
            let mut lines: Vec<(usize, &str)> = r
                .text
                .lines()
                .skip(1)
                .map(|l| {
                    (
                        crate::bm25::terms(l)
                            .iter()
                            .filter(|t| qterms.contains(*t))
                            .count(),
                        l,
                    )
                })
                .collect();
            lines.sort_by_key(|l| std::cmp::Reverse(l.0));
            let text = lines
                .iter()
                .take(2)
                .map(|l| l.1.trim_start_matches("- "))
                .collect::<Vec<_>>()
                .join(" ");
            KeyPoint {
                score: if best > 0.0 {
                    ((s as f64 / best) * 100.0).round() as u32
                } else {
                    0
                },
                text,
                report: ids[j],
            }
        })
        .collect()
}

fn is_leaf(g: &KnowledgeGraph, cluster: usize) -> bool {
    g.clusters
        .iter()
        .find(|c| c.id == cluster)
        .is_some_and(|c| c.leaf)
}

/// Local search: the entities matching the question (BM25 over name and description, plus
/// entities named in the question), ranked.
pub fn match_entities(g: &KnowledgeGraph, question: &str, k: usize) -> Vec<usize> {
    match_entities_with(g, &entity_index(g), question, k)
}

/// BM25 over entity names and descriptions.
pub fn entity_index(g: &KnowledgeGraph) -> Bm25 {
    Bm25::build(
        g.entities
            .iter()
            .map(|e| format!("{} {}", e.name, e.summary(400)))
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str),
    )
}

/// [`match_entities`] over a prebuilt [`entity_index`].
pub fn match_entities_with(g: &KnowledgeGraph, bm: &Bm25, question: &str, k: usize) -> Vec<usize> {
    let q_up = question.to_uppercase();
    let mut named: Vec<usize> = g
        .entities
        .iter()
        .enumerate()
        .filter(|(_, e)| {
            e.kind == "COMMAND"
                && e.name.len() >= 2
                && q_up
                    .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
                    .any(|w| w == e.name)
        })
        .map(|(i, _)| i)
        .collect();
    named.sort_by(|&a, &b| g.entities[b].degree.cmp(&g.entities[a].degree));
    let mut out: Vec<usize> = Vec::new();
    for i in named
        .into_iter()
        .chain(bm.search(question, k * 2).into_iter().map(|h| h.0))
    {
        if !out.contains(&i) {
            out.push(i);
        }
        if out.len() >= k {
            break;
        }
    }
    out
}

/// Local search context: for the matched entities, their text units ranked by how many matched
/// entities and relationships point at them, the relationships among and around them (by
/// weight), and the reports of their leaf communities.
pub struct LocalContext {
    pub entities: Vec<usize>,
    pub relations: Vec<usize>,
    pub text_units: Vec<usize>,
    pub reports: Vec<usize>,
}

pub fn local_context(
    g: &KnowledgeGraph,
    matched: &[usize],
    max_units: usize,
    max_rels: usize,
) -> LocalContext {
    let set: BTreeSet<usize> = matched.iter().copied().collect();
    let mut rels: Vec<usize> = (0..g.relations.len())
        .filter(|&i| set.contains(&g.relations[i].source) || set.contains(&g.relations[i].target))
        .collect();
    rels.sort_by(|&a, &b| {
        let ra = &g.relations[a];
        let rb = &g.relations[b];
        let both = |r: &Relation| (set.contains(&r.source) && set.contains(&r.target)) as u8;
        both(rb)
            .cmp(&both(ra))
            .then(rb.weight.total_cmp(&ra.weight))
            .then(a.cmp(&b))
    });
    rels.truncate(max_rels);
    let mut score: HashMap<usize, (usize, usize)> = HashMap::new();
    for (rank, &e) in matched.iter().enumerate() {
        for &u in &g.entities[e].text_units {
            let s = score.entry(u).or_insert((0, usize::MAX));
            s.0 += 1;
            s.1 = s.1.min(rank);
        }
    }
    for &r in &rels {
        for &u in &g.relations[r].text_units {
            if let Some(s) = score.get_mut(&u) {
                s.0 += 1;
            }
        }
    }
    let mut units: Vec<(usize, (usize, usize))> = score.into_iter().collect();
    // First the best-ranked entity's units, then by links.
    units.sort_by(|a, b| {
        a.1.1
            .cmp(&b.1.1)
            .then(b.1.0.cmp(&a.1.0))
            .then(a.0.cmp(&b.0))
    });
    let text_units: Vec<usize> = units.into_iter().take(max_units).map(|u| u.0).collect();
    let mut reports = Vec::new();
    for &e in matched {
        for (i, r) in g.reports.iter().enumerate() {
            if is_leaf(g, r.cluster)
                && g.clusters
                    .iter()
                    .any(|c| c.id == r.cluster && c.nodes.binary_search(&e).is_ok())
                && !reports.contains(&i)
            {
                reports.push(i);
            }
        }
    }
    LocalContext {
        entities: matched.to_vec(),
        relations: rels,
        text_units,
        reports,
    }
}

#[cfg(test)]
mod tests {
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
        fn chat(
            &mut self,
            _m: &[(String, String)],
            _t: usize,
        ) -> std::result::Result<String, String> {
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
}
