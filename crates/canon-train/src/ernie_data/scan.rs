//! Source scanning for the knowledge graph and the text: code with strings and comments
//! blanked, docstrings and comments with their lines, and the small parsers over code lines.

pub(super) fn is_identifier(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

/// A file split into code (strings and comments blanked, line structure kept), triple-quoted
/// strings and comments, each with its 1-based line.
pub(super) struct Scanned {
    pub(super) code: String,
    pub(super) docstrings: Vec<(usize, String)>,
    pub(super) comments: Vec<(usize, String)>,
}

pub(super) fn scan(text: &str) -> Scanned {
    let c: Vec<char> = text.chars().collect();
    let mut code = String::with_capacity(text.len());
    let (mut docstrings, mut comments) = (Vec::new(), Vec::new());
    let mut line = 1usize;
    let mut i = 0;
    let blank = |ch: char| if ch == '\n' { '\n' } else { ' ' };
    while i < c.len() {
        let ch = c[i];
        if ch == '#' {
            let start = i;
            while i < c.len() && c[i] != '\n' {
                code.push(' ');
                i += 1;
            }
            comments.push((line, c[start + 1..i].iter().collect()));
        } else if ch == '"' || ch == '\'' {
            let triple = i + 2 < c.len() && c[i + 1] == ch && c[i + 2] == ch;
            let start_line = line;
            if triple {
                code.push_str("   ");
                i += 3;
                let start = i;
                while i < c.len()
                    && !(c[i] == ch && c.get(i + 1) == Some(&ch) && c.get(i + 2) == Some(&ch))
                {
                    if c[i] == '\\' && i + 1 < c.len() {
                        code.push(blank(c[i]));
                        i += 1;
                    }
                    if c[i] == '\n' {
                        line += 1;
                    }
                    code.push(blank(c[i]));
                    i += 1;
                }
                docstrings.push((start_line, c[start..i.min(c.len())].iter().collect()));
                i = (i + 3).min(c.len());
                code.push_str("   ");
            } else {
                code.push(' ');
                i += 1;
                while i < c.len() && c[i] != ch && c[i] != '\n' {
                    if c[i] == '\\' && i + 1 < c.len() && c[i + 1] != '\n' {
                        code.push(' ');
                        i += 1;
                    }
                    code.push(' ');
                    i += 1;
                }
                if i < c.len() && c[i] == ch {
                    code.push(' ');
                    i += 1;
                }
            }
        } else {
            if ch == '\n' {
                line += 1;
            }
            code.push(ch);
            i += 1;
        }
    }
    Scanned {
        code,
        docstrings,
        comments,
    }
}

pub(super) fn indent_of(l: &str) -> usize {
    l.len() - l.trim_start().len()
}

/// The identifier after `kw ` at the start of `t`, e.g. `class Foo(` → `Foo`.
pub(super) fn def_name<'a>(t: &'a str, kw: &str) -> Option<&'a str> {
    let rest = t.strip_prefix(kw)?.strip_prefix(' ')?.trim_start();
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    let n = &rest[..end];
    is_identifier(n).then_some(n)
}

/// Dotted names immediately followed by `(` in a code line.
pub(super) fn called_names(t: &str) -> Vec<&str> {
    let b = t.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let is_start = (b[i].is_ascii_alphabetic() || b[i] == b'_')
            && (i == 0
                || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_' || b[i - 1] == b'.'));
        if !is_start {
            i += 1;
            continue;
        }
        let s = i;
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'.') {
            i += 1;
        }
        if i < b.len() && b[i] == b'(' {
            out.push(t[s..i].trim_end_matches('.'));
        }
    }
    out
}
