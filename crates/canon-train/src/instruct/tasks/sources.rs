//! Readers of the FLAN task sources on this machine: roff manual pages (gzipped, per language)
//! and glibc locale definitions (day and month names).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use super::sorted_files;
/// Decodes groff escapes common in manual pages (accented letters, dashes, fonts); `None` when an
/// escape is left that this does not know.
pub fn decode_roff(s: &str) -> Option<String> {
    let accent = |mark: char, c: char| -> Option<char> {
        let table: &[(char, &str, &str)] = &[
            (':', "aeiouyAEIOU", "äëïöüÿÄËÏÖÜ"),
            ('\'', "aeiouyAEIOUcnszCNSZ", "áéíóúýÁÉÍÓÚćńśźĆŃŚŹ"),
            ('`', "aeiouAEIOU", "àèìòùÀÈÌÒÙ"),
            ('^', "aeiouAEIOU", "âêîôûÂÊÎÔÛ"),
            (',', "cC", "çÇ"),
            ('~', "anoANO", "ãñõÃÑÕ"),
            ('/', "lLoO", "łŁøØ"),
            ('o', "aA", "åÅ"),
        ];
        let (_, from, to) = table.iter().find(|(m, _, _)| *m == mark)?;
        let i = from.chars().position(|x| x == c)?;
        to.chars().nth(i)
    };
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match it.next()? {
            '-' => out.push('-'),
            '&' | ':' => {}
            'e' | '\\' => out.push('\\'),
            ' ' | '~' => out.push(' '),
            'f' => {
                // \fB, \fI, \fR, \fP, \f(CW
                if it.next()? == '(' {
                    it.next()?;
                    it.next()?;
                }
            }
            '(' => {
                let a = it.next()?;
                let b = it.next()?;
                let ch = match (a, b) {
                    ('s', 's') => 'ß',
                    ('e', 'm') => '—',
                    ('e', 'n') => '–',
                    ('l', 'q') | ('r', 'q') => '"',
                    ('a', 'q') => '\'',
                    ('a', 'e') => 'æ',
                    ('A', 'E') => 'Æ',
                    ('b', 'u') => '•',
                    (m, l) => accent(m, l)?,
                };
                out.push(ch);
            }
            '*' => {
                // \*(Aq, \*(lq, \*(rq, \*x
                let a = it.next()?;
                let name = if a == '(' {
                    let x = it.next()?;
                    let y = it.next()?;
                    format!("{x}{y}")
                } else {
                    a.to_string()
                };
                match name.as_str() {
                    "Aq" | "aq" => out.push('\''),
                    "lq" | "rq" | "L\"" | "R\"" => out.push('"'),
                    _ => return None,
                }
            }
            '[' => {
                let mut name = String::new();
                for x in it.by_ref() {
                    if x == ']' {
                        break;
                    }
                    name.push(x);
                }
                let hex = name.strip_prefix('u')?;
                out.push(char::from_u32(u32::from_str_radix(hex, 16).ok()?)?);
            }
            _ => return None,
        }
    }
    Some(out)
}

pub(super) fn read_gz(path: &Path) -> Option<String> {
    let f = std::fs::File::open(path).ok()?;
    let mut s = String::new();
    flate2::read::GzDecoder::new(f)
        .read_to_string(&mut s)
        .ok()?;
    Some(s)
}

/// A manual page: its `.SH NAME` summary (`cmd - summary`) and its plain-text lines.
pub(super) struct ManPage {
    pub(super) cmd: String,
    pub(super) summary: String,
    pub(super) lines: Vec<String>,
}

pub(super) fn parse_man(text: &str) -> Option<ManPage> {
    let lines: Vec<&str> = text.lines().collect();
    let first_sh = lines.iter().position(|l| l.starts_with(".SH"))?;
    let name_line = lines[first_sh + 1..]
        .iter()
        .find(|l| !l.starts_with('.') && !l.trim().is_empty())?;
    let decoded = decode_roff(name_line)?;
    let (cmd, summary) = decoded.split_once(" - ")?;
    let cmd = cmd.split(',').next()?.trim().to_string();
    let summary = summary.trim().to_string();
    if cmd.is_empty() || summary.len() < 8 || cmd.contains(' ') {
        return None;
    }
    let mut body = Vec::new();
    for l in &lines[first_sh + 2..] {
        if l.starts_with('.') || l.contains("\\f") {
            continue;
        }
        if let Some(t) = decode_roff(l) {
            let t = t.trim().to_string();
            let words = t.split_whitespace().count();
            if (6..=40).contains(&words) && t.len() <= 240 && t.ends_with('.') {
                body.push(t);
            }
        }
    }
    Some(ManPage {
        cmd,
        summary,
        lines: body,
    })
}

/// Pages under `dir/man*/` by file name (e.g. `ls.1.gz`).
pub(super) fn man_pages(dir: &Path) -> BTreeMap<String, ManPage> {
    let mut out = BTreeMap::new();
    for sec in sorted_files(dir) {
        let is_sec = sec
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("man"));
        if !is_sec {
            continue;
        }
        for f in sorted_files(&sec) {
            let name = f.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if !name.ends_with(".gz") {
                continue;
            }
            if let Some(p) = read_gz(&f).and_then(|t| parse_man(&t)) {
                out.insert(name.to_string(), p);
            }
        }
    }
    out
}

/// Decodes `<U00E4>` sequences of glibc locale sources.
pub(super) fn decode_locale(s: &str) -> Option<String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("<U") {
        out.push_str(&rest[..i]);
        let j = rest[i..].find('>')? + i;
        out.push(char::from_u32(
            u32::from_str_radix(&rest[i + 2..j], 16).ok()?,
        )?);
        rest = &rest[j + 1..];
    }
    out.push_str(rest);
    Some(out)
}

/// A locale's language name and its `day` (7) and `mon` (12) lists.
pub fn locale_names(path: &Path) -> Option<(String, Vec<String>, Vec<String>)> {
    let text = std::fs::read_to_string(path).ok()?;
    let lines: Vec<&str> = text.lines().collect();
    let quoted = |s: &str| -> Vec<String> {
        s.split('"')
            .skip(1)
            .step_by(2)
            .filter_map(decode_locale)
            .collect()
    };
    let mut language = None;
    let mut lists: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i];
        let key = l.split_whitespace().next().unwrap_or("");
        if key == "language" && language.is_none() {
            language = quoted(l).into_iter().next();
        }
        if (key == "day" || key == "mon") && !lists.contains_key(key) {
            let mut joined = l[key.len()..].to_string();
            while joined.trim_end().ends_with('/') && i + 1 < lines.len() {
                i += 1;
                joined.push_str(lines[i]);
            }
            lists.insert(if key == "day" { "day" } else { "mon" }, quoted(&joined));
        }
        i += 1;
    }
    let day = lists.remove("day")?;
    let mon = lists.remove("mon")?;
    (day.len() == 7 && mon.len() == 12).then_some((language?, day, mon))
}

pub(super) const EN_DAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];
pub(super) const EN_MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
