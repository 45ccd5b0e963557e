//! Fast extraction (no LLM): the corpus' own structure plus noun phrases.

use super::*;

pub(super) const STOP: &[&str] = &[
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

pub(super) fn is_stop(w: &str) -> bool {
    STOP.contains(&w)
}

/// The command a page documents: `tar(1)` → `TAR`.
pub(super) fn page_entity(page: &str) -> String {
    page.split('(').next().unwrap_or(page).to_uppercase()
}

pub(super) fn option_tokens(line: &str) -> Vec<String> {
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

pub(super) fn l_is_tag(text: &str, v: &str) -> bool {
    text.lines().any(|l| l.trim() == v)
}
