//! Rendering: HTML to text lines with `【id†text】` link markers, and back to plain text.

use serde::Serialize;

/// A link on a page: its text and the page it leads to (an index into the site).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Link {
    pub text: String,
    pub target: Option<usize>,
}

/// A parsed page.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SitePage {
    pub url: String,
    pub title: String,
    /// Lines with `【id†text】` link markers.
    pub lines: Vec<String>,
    pub links: Vec<Link>,
}

impl SitePage {
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }
}

/// HTML to text lines with link markers: block tags (`p`, `div`, `h1`-`h6`, `li`, `br`, `tr`)
/// break lines, `<a href>` becomes `【id†text】`, `script`/`style` are dropped, entities decoded.
/// Returns (title, lines, (link text, href)).
pub fn render_html(html: &str) -> (String, Vec<String>, Vec<(String, String)>) {
    let mut title = String::new();
    let mut lines = Vec::new();
    let mut cur = String::new();
    let mut links: Vec<(String, String)> = Vec::new();
    let mut in_link: Option<(String, String)> = None;
    let mut skip: Option<String> = None;
    let mut in_title = false;
    let mut rest = html;
    let flush = |cur: &mut String, lines: &mut Vec<String>| {
        let t = cur.split_whitespace().collect::<Vec<_>>().join(" ");
        if !t.is_empty() {
            lines.push(t);
        }
        cur.clear();
    };
    while !rest.is_empty() {
        let Some(lt) = rest.find('<') else {
            push_text(
                rest,
                &mut cur,
                &mut in_link,
                in_title,
                &mut title,
                skip.is_some(),
            );
            break;
        };
        push_text(
            &rest[..lt],
            &mut cur,
            &mut in_link,
            in_title,
            &mut title,
            skip.is_some(),
        );
        let Some(gt) = rest[lt..].find('>') else {
            break;
        };
        let tag = &rest[lt + 1..lt + gt];
        rest = &rest[lt + gt + 1..];
        let closing = tag.starts_with('/');
        let name: String = tag
            .trim_start_matches('/')
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_ascii_lowercase();
        if let Some(s) = &skip {
            if closing && &name == s {
                skip = None;
            }
            continue;
        }
        match name.as_str() {
            "script" | "style" if !closing => skip = Some(name),
            "title" => in_title = !closing,
            "a" if !closing => {
                let href = attr(tag, "href").unwrap_or_default();
                in_link = Some((String::new(), href));
            }
            "a" => {
                if let Some((text, href)) = in_link.take() {
                    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
                    cur.push_str(&format!("【{}†{}】", links.len(), text));
                    links.push((text, href));
                }
            }
            "p" | "div" | "br" | "li" | "tr" | "h1" | "h2" | "h3" | "h4" | "h5" | "h6" | "ul"
            | "ol" | "table" | "section" | "article" | "body" => flush(&mut cur, &mut lines),
            _ => {}
        }
    }
    flush(&mut cur, &mut lines);
    (title.trim().to_string(), lines, links)
}

fn push_text(
    s: &str,
    cur: &mut String,
    in_link: &mut Option<(String, String)>,
    in_title: bool,
    title: &mut String,
    skipping: bool,
) {
    if skipping {
        return;
    }
    let t = decode_entities(s);
    if in_title {
        title.push_str(&t);
    } else if let Some((text, _)) = in_link {
        text.push_str(&t);
    } else {
        cur.push_str(&t);
    }
}

fn decode_entities(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&nbsp;", " ")
        .replace("&amp;", "&")
}

fn attr(tag: &str, name: &str) -> Option<String> {
    let lower = tag.to_ascii_lowercase();
    let at = lower.find(&format!("{name}="))? + name.len() + 1;
    let v = &tag[at..];
    let (q, v) = match v.chars().next()? {
        '"' => ('"', &v[1..]),
        '\'' => ('\'', &v[1..]),
        _ => (' ', v),
    };
    Some(v.split(q).next().unwrap_or("").to_string())
}

/// The text without link markers (`【3†text】` → `text`).
pub fn strip_markers(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(a) = rest.find('【') {
        out.push_str(&rest[..a]);
        let after = &rest[a + '【'.len_utf8()..];
        match (after.find('†'), after.find('】')) {
            (Some(d), Some(e)) if d < e => {
                out.push_str(&after[d + '†'.len_utf8()..e]);
                rest = &after[e + '】'.len_utf8()..];
            }
            _ => {
                out.push('【');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}
