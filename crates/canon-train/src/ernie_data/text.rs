//! ERNIE's text side: docstring paragraphs and comment runs, words, and the exact-match entity
//! linker (rules in the parent module's header).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use super::scan::{is_identifier, scan};
use super::*;

/// Docstring paragraphs and comment runs of every file (see the module header).
pub fn text_units(files: &[SourceFile]) -> Vec<TextUnit> {
    let mut out = Vec::new();
    let mut push = |module: &str, path: &Path, line: usize, text: &str| {
        let w = words(text);
        let letters = w.iter().filter(|x| is_identifier(&x.text)).count();
        if w.len() >= MIN_WORDS && letters * 2 >= w.len() {
            out.push(TextUnit {
                module: module.to_string(),
                origin: format!("{}:{line}", path.display()),
                text: text.trim().to_string(),
            });
        }
    };
    for f in files {
        let s = scan(&f.text);
        for (line, doc) in &s.docstrings {
            let mut para = String::new();
            let mut start = *line;
            for (k, l) in doc.lines().enumerate() {
                if l.trim().is_empty() {
                    push(&f.module, &f.path, start, &para);
                    para.clear();
                    start = line + k + 1;
                } else {
                    para.push_str(l.trim());
                    para.push(' ');
                }
            }
            push(&f.module, &f.path, start, &para);
        }
        let mut para = String::new();
        let (mut start, mut last) = (0usize, 0usize);
        for (line, c) in &s.comments {
            let c = c.trim_start_matches(['#', '!']).trim();
            if *line != last + 1 || c.is_empty() {
                push(&f.module, &f.path, start, &para);
                para.clear();
                start = *line;
            }
            para.push_str(c);
            para.push(' ');
            last = *line;
        }
        push(&f.module, &f.path, start, &para);
    }
    out
}

/// A word and its byte span in the text.
#[derive(Debug, Clone, PartialEq)]
pub struct Word {
    pub text: String,
    pub start: usize,
    pub end: usize,
}

/// Splits `text` into identifier words, digit runs and single other characters.
pub fn words(text: &str) -> Vec<Word> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let s = i;
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        } else if c.is_ascii_alphabetic() || c == b'_' {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
        } else if c.is_ascii_digit() {
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
        } else {
            // One character (UTF-8 aware).
            i += text[i..].chars().next().map_or(1, char::len_utf8);
        }
        out.push(Word {
            text: text[s..i].to_string(),
            start: s,
            end: i,
        });
    }
    out
}

/// Exact-match entity linker over words (rules in the module header).
pub struct Linker<'a> {
    kg: &'a KnowledgeGraph,
    /// Class/function short name → entity, for names defined exactly once.
    unique: HashMap<String, u32>,
}

fn code_like(w: &str) -> bool {
    w.contains('_')
        || w.chars().any(|c| c.is_ascii_digit())
        || w.chars().skip(1).any(|c| c.is_ascii_uppercase())
}

impl<'a> Linker<'a> {
    pub fn new(kg: &'a KnowledgeGraph) -> Self {
        let mut count: BTreeMap<&str, (usize, u32)> = BTreeMap::new();
        for (i, e) in kg.entities.iter().enumerate() {
            if e.kind != EntityKind::Module {
                let short = e.name.rsplit('.').next().unwrap_or(&e.name);
                let c = count.entry(short).or_insert((0, i as u32));
                c.0 += 1;
            }
        }
        let unique = count
            .into_iter()
            .filter(|(_, (n, _))| *n == 1)
            .map(|(k, (_, i))| (k.to_string(), i))
            .collect();
        Self { kg, unique }
    }

    /// The entity aligned to each word of `w` (the first word of each mention), in `module`.
    pub fn link(&self, w: &[Word], module: &str) -> Vec<Option<u32>> {
        let mut out = vec![None; w.len()];
        let mut i = 0;
        while i < w.len() {
            if !is_identifier(&w[i].text)
                || (i > 0 && w[i - 1].text == "." && w[i - 1].end == w[i].start)
            {
                i += 1;
                continue;
            }
            // The run a.b.c written without spaces: word indices of its components.
            let mut comps = vec![i];
            let mut j = i;
            while j + 2 < w.len()
                && w[j + 1].text == "."
                && w[j + 1].start == w[j].end
                && w[j + 2].start == w[j + 1].end
                && is_identifier(&w[j + 2].text)
            {
                j += 2;
                comps.push(j);
            }
            let mut found = None;
            for k in (1..=comps.len()).rev() {
                let name: Vec<&str> = comps[..k].iter().map(|&c| w[c].text.as_str()).collect();
                let name = name.join(".");
                let last = comps[k - 1];
                let next = w.get(last + 1).map(|x| x.text.as_str());
                if let Some(e) = self.candidate(&name, module, k, comps.len() > 1, w, i, next) {
                    found = Some((e, last));
                    break;
                }
            }
            match found {
                Some((e, last)) => {
                    out[i] = Some(e);
                    i = last + 1;
                }
                None => i = comps[comps.len() - 1] + 1,
            }
        }
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn candidate(
        &self,
        name: &str,
        module: &str,
        parts: usize,
        dotted: bool,
        w: &[Word],
        i: usize,
        next: Option<&str>,
    ) -> Option<u32> {
        let kg = self.kg;
        let e = kg
            .id(name)
            .or_else(|| kg.id(&format!("{module}.{name}")))
            .or_else(|| kg.resolve(module, name))
            .or_else(|| (parts == 1).then(|| self.unique.get(name).copied())?)?;
        if parts > 1 {
            return Some(e);
        }
        let prev = i.checked_sub(1).map(|p| w[p].text.as_str());
        let ok = code_like(name)
            || dotted
            || next == Some("(")
            || match kg.entities[e as usize].kind {
                EntityKind::Module => {
                    next == Some("module") || prev == Some("module") || prev == Some("import")
                }
                EntityKind::Class => {
                    name.starts_with(|c: char| c.is_ascii_uppercase())
                        && !matches!(prev, None | Some(".") | Some(":") | Some("!") | Some("?"))
                }
                EntityKind::Function => false,
            };
        ok.then_some(e)
    }
}
