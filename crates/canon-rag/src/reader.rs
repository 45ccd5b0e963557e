//! Document readers. Every reader turns a file into a [`Document`]: its lines and the headings
//! that open its sections. Binary files, bad UTF-8 and empty files are skipped and counted.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{RagError, Result, io_err};

/// One readable document.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// The file it came from.
    pub path: String,
    /// Page name: `ls(1)` for a man page, the file stem otherwise.
    pub page: String,
    /// Text lines (1-based line `i + 1`).
    pub lines: Vec<String>,
    /// `(line index, title)` of each section start, in order.
    pub headings: Vec<(usize, String)>,
}

/// The format a file is read as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Text,
    Markdown,
    Html,
    Man,
    Info,
}

/// Why a file was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    Binary,
    BadUtf8,
    Empty,
    Unreadable,
}

/// Counts of files read and skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReadStats {
    pub read: usize,
    pub binary: usize,
    pub bad_utf8: usize,
    pub empty: usize,
    pub unreadable: usize,
}

impl ReadStats {
    pub fn count(&mut self, s: Skip) {
        match s {
            Skip::Binary => self.binary += 1,
            Skip::BadUtf8 => self.bad_utf8 += 1,
            Skip::Empty => self.empty += 1,
            Skip::Unreadable => self.unreadable += 1,
        }
    }
    pub fn skipped(&self) -> usize {
        self.binary + self.bad_utf8 + self.empty + self.unreadable
    }
}

fn strip_gz(name: &str) -> &str {
    name.strip_suffix(".gz").unwrap_or(name)
}

/// The format of `path` by its name; `None` for files no reader takes.
pub fn kind_of(path: &Path) -> Option<Kind> {
    let name = path.file_name()?.to_str()?;
    let base = strip_gz(name);
    let in_man = path.components().any(|c| {
        c.as_os_str()
            .to_str()
            .is_some_and(|s| s == "man" || (s.starts_with("man") && s.len() <= 6))
    });
    let ext = base.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("md" | "markdown") => Some(Kind::Markdown),
        Some("html" | "htm") => Some(Kind::Html),
        Some("txt" | "text" | "rst") | None if !in_man => Some(Kind::Text),
        Some("info") => Some(Kind::Info),
        Some(e) if e.starts_with("info-") => Some(Kind::Info),
        Some(e) if e.chars().next().is_some_and(|c| c.is_ascii_digit()) || in_man => {
            Some(Kind::Man)
        }
        _ => None,
    }
}

/// All files under `roots` (files as given, folders walked, sorted) with a reader.
pub fn walk(roots: &[PathBuf]) -> Result<Vec<(PathBuf, Kind)>> {
    let mut out = Vec::new();
    for r in roots {
        let meta = std::fs::metadata(r).map_err(|e| io_err(r, e))?;
        if meta.is_file() {
            out.push((r.clone(), kind_of(r).unwrap_or(Kind::Text)));
            continue;
        }
        let files = canon_fs::walk_files(r, |_| true, |p| kind_of(p).is_some())
            .map_err(|e| io_err(&e.path, e.error))?;
        for p in files {
            if let Some(k) = kind_of(&p) {
                out.push((p, k));
            }
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

fn read_bytes(path: &Path) -> std::result::Result<Vec<u8>, Skip> {
    let raw = std::fs::read(path).map_err(|_| Skip::Unreadable)?;
    if path.extension().is_some_and(|e| e == "gz") {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|_| Skip::Binary)?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

fn to_text(bytes: Vec<u8>) -> std::result::Result<String, Skip> {
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(Skip::Empty);
    }
    if bytes.contains(&0) {
        return Err(Skip::Binary);
    }
    String::from_utf8(bytes).map_err(|_| Skip::BadUtf8)
}

/// Reads one file as `kind`. `render_man`: render man pages with the system `man` (no
/// hyphenation, no justification) and fall back to the built-in reader when it fails.
pub fn read(path: &Path, kind: Kind, render_man: bool) -> std::result::Result<Document, Skip> {
    let file = path.file_name().and_then(|s| s.to_str()).unwrap_or("");
    let base = strip_gz(file);
    let doc = match kind {
        Kind::Man => {
            let page = match base.rsplit_once('.') {
                Some((n, s)) => format!("{n}({s})"),
                None => base.to_string(),
            };
            let rendered = if render_man {
                render_with_man(path)
            } else {
                None
            };
            let (lines, headings) = match rendered {
                Some(t) => man_rendered(&t),
                None => man_source(&to_text(read_bytes(path)?)?),
            };
            Document {
                path: path.display().to_string(),
                page,
                lines,
                headings,
            }
        }
        _ => {
            let text = to_text(read_bytes(path)?)?;
            let stem = base.rsplit_once('.').map_or(base, |(s, _)| s).to_string();
            let (lines, headings) = match kind {
                Kind::Markdown => markdown(&text),
                Kind::Html => markdown(&html_to_text(&text)),
                Kind::Info => info(&text),
                _ => (text.lines().map(str::to_string).collect(), Vec::new()),
            };
            Document {
                path: path.display().to_string(),
                page: stem,
                lines,
                headings,
            }
        }
    };
    if doc.lines.iter().all(|l| l.trim().is_empty()) {
        return Err(Skip::Empty);
    }
    Ok(doc)
}

fn render_with_man(path: &Path) -> Option<String> {
    let out = Command::new("man")
        .args(["--nh", "--nj", "-l"])
        .arg(path)
        .env("MANWIDTH", "100")
        .env("MAN_KEEP_FORMATTING", "")
        .env_remove("MAN_KEEP_FORMATTING")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?;
    let s = strip_overstrike(&s);
    (!s.trim().is_empty()).then_some(s)
}

/// Removes backspace overstrikes (`X\bX`, `_\bX`) and SGR escapes.
pub fn strip_overstrike(s: &str) -> String {
    let mut out: Vec<char> = Vec::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        match c {
            '\u{8}' => {
                out.pop();
            }
            '\u{1b}' if it.peek() == Some(&'[') => {
                for d in it.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            _ => out.push(c),
        }
    }
    out.into_iter().collect()
}

/// A rendered man page: the header/footer lines go, unindented lines are section headings.
pub fn man_rendered(text: &str) -> (Vec<String>, Vec<(usize, String)>) {
    let mut all: Vec<&str> = text.lines().collect();
    // The first and last non-empty lines are the running header and footer.
    if let Some(i) = all.iter().position(|l| !l.trim().is_empty()) {
        all.drain(..=i);
    }
    if let Some(i) = all.iter().rposition(|l| !l.trim().is_empty()) {
        all.truncate(i);
    }
    let mut lines = Vec::new();
    let mut headings = Vec::new();
    for l in all {
        let t = l.trim_end();
        if !t.is_empty() && !t.starts_with(' ') && !t.starts_with('\t') {
            headings.push((lines.len(), t.trim().to_string()));
        }
        lines.push(t.to_string());
    }
    (lines, headings)
}

fn unescape_roff(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('f') => {
                if it.peek() == Some(&'(') {
                    it.next();
                    it.next();
                    it.next();
                } else if it.peek() == Some(&'[') {
                    for d in it.by_ref() {
                        if d == ']' {
                            break;
                        }
                    }
                } else {
                    it.next();
                }
            }
            Some('-') => out.push('-'),
            Some('e') | Some('\\') => out.push('\\'),
            Some('&') | Some('|') | Some('^') | Some(',') | Some('/') => {}
            Some(' ') | Some('~') => out.push(' '),
            Some('(') => {
                let a = it.next().unwrap_or(' ');
                let b = it.next().unwrap_or(' ');
                out.push_str(match (a, b) {
                    ('e', 'm') | ('e', 'n') => "-",
                    ('b', 'u') => "*",
                    ('a', 'q') => "'",
                    ('d', 'q') => "\"",
                    _ => "",
                });
            }
            Some('"') => break, // comment
            Some(o) => out.push(o),
            None => {}
        }
    }
    out
}

/// The built-in reader for man/mdoc source: macros become structure, the text stays.
/// `.SH`/`.Sh` open sections, `.TP`/`.IP`/`.It` put the option line on a line of its own.
pub fn man_source(text: &str) -> (Vec<String>, Vec<(usize, String)>) {
    let mut lines = Vec::new();
    let mut headings = Vec::new();
    for raw in text.lines() {
        if let Some(rest) = raw.strip_prefix('.').or_else(|| raw.strip_prefix('\'')) {
            let (mac, args) = rest
                .trim_start()
                .split_once(char::is_whitespace)
                .unwrap_or((rest.trim(), ""));
            let args = unescape_roff(args.trim()).replace('"', "");
            match mac {
                "SH" | "Sh" | "SS" | "Ss" => {
                    lines.push(String::new());
                    headings.push((lines.len(), args.clone()));
                    lines.push(args);
                }
                "IP" | "It" | "TQ" if !args.is_empty() => lines.push(args),
                "PP" | "LP" | "P" | "Pp" | "br" | "sp" => lines.push(String::new()),
                "B" | "I" | "BR" | "IR" | "RB" | "RI" | "BI" | "IB" | "Nm" | "Fl" | "Ar" | "Op"
                | "Nd"
                    if !args.is_empty() =>
                {
                    let args = if matches!(mac, "BR" | "IR" | "RB" | "RI" | "BI" | "IB") {
                        args.split_whitespace().collect::<String>()
                    } else {
                        args
                    };
                    lines.push(args);
                }
                _ => {}
            }
            continue;
        }
        lines.push(unescape_roff(raw));
    }
    (lines, headings)
}

/// Markdown: `#` headings open sections; the text stays as written.
pub fn markdown(text: &str) -> (Vec<String>, Vec<(usize, String)>) {
    let mut lines = Vec::new();
    let mut headings = Vec::new();
    let mut fence = false;
    for l in text.lines() {
        if l.trim_start().starts_with("```") {
            fence = !fence;
        }
        if !fence && l.starts_with('#') {
            let title = l.trim_start_matches('#').trim();
            if !title.is_empty() {
                headings.push((lines.len(), title.to_string()));
            }
        }
        lines.push(l.to_string());
    }
    (lines, headings)
}

/// HTML to Markdown-like text: scripts and styles dropped, headings as `#`, blocks on new lines,
/// common entities decoded.
pub fn html_to_text(html: &str) -> String {
    let mut out = String::with_capacity(html.len() / 2);
    let lower = html.to_ascii_lowercase();
    let mut i = 0;
    let bytes = html.as_bytes();
    while i < bytes.len() {
        if bytes[i] == b'<' {
            let end = match html[i..].find('>') {
                Some(e) => i + e + 1,
                None => break,
            };
            let tag = &lower[i + 1..end - 1];
            let name: String = tag
                .trim_start_matches('/')
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            if (name == "script" || name == "style") && !tag.starts_with('/') {
                let close = format!("</{name}");
                i = lower[end..].find(&close).map_or(bytes.len(), |p| {
                    let after = end + p;
                    lower[after..]
                        .find('>')
                        .map_or(bytes.len(), |q| after + q + 1)
                });
                continue;
            }
            match name.as_str() {
                "h1" | "h2" | "h3" | "h4" | "h5" | "h6" if !tag.starts_with('/') => {
                    let n = name.as_bytes()[1] - b'0';
                    out.push('\n');
                    out.push_str(&"#".repeat(n as usize));
                    out.push(' ');
                }
                "p" | "div" | "br" | "li" | "tr" | "pre" | "h1" | "h2" | "h3" | "h4" | "h5"
                | "h6" | "dt" | "dd" | "table" | "ul" | "ol" | "section" => out.push('\n'),
                _ => {}
            }
            i = end;
        } else {
            let next = html[i..].find('<').map_or(bytes.len(), |p| i + p);
            out.push_str(&decode_entities(&html[i..next]));
            i = next;
        }
    }
    out
}

fn decode_entities(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&nbsp;", " ")
        .replace("&amp;", "&")
}

/// Info files: each node (after the 0x1f separator) is a section named by its `Node:`.
pub fn info(text: &str) -> (Vec<String>, Vec<(usize, String)>) {
    let mut lines = Vec::new();
    let mut headings = Vec::new();
    for node in text.split('\u{1f}') {
        let mut it = node.trim_start_matches('\n').lines();
        let Some(first) = it.next() else { continue };
        if first.starts_with("Tag Table:")
            || first.starts_with("End Tag Table")
            || first.starts_with("Indirect:")
        {
            continue;
        }
        if let Some(p) = first.find("Node: ") {
            let name = first[p + 6..].split(',').next().unwrap_or("").trim();
            headings.push((lines.len(), name.to_string()));
        } else {
            lines.push(first.to_string());
        }
        lines.extend(it.map(str::to_string));
    }
    (lines, headings)
}

/// Reads every file, skipping and counting the unreadable ones.
pub fn read_all(
    files: &[(PathBuf, Kind)],
    render_man: bool,
    stats: &mut ReadStats,
) -> Vec<Document> {
    let mut out = Vec::new();
    for (p, k) in files {
        match read(p, *k, render_man) {
            Ok(d) => {
                stats.read += 1;
                out.push(d);
            }
            Err(s) => stats.count(s),
        }
    }
    out
}

/// Checks that every root exists.
pub fn check_roots(roots: &[PathBuf]) -> Result<()> {
    for r in roots {
        if !r.exists() {
            return Err(RagError::Invalid(format!(
                "expected a file or folder to index, found no such path: {}",
                r.display()
            )));
        }
    }
    Ok(())
}
