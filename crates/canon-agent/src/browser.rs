//! WebGPT's text-based browser (Nakano et al., 2021) over a local site: a folder of HTML (or
//! text) pages with a BM25 search engine.
//!
//! Commands (the paper's): `Search <query>`, `Clicked on link <id>`, `Find in page: <text>`,
//! `Quote: <text>`, `Scrolled down <1|2|3>`, `Scrolled up <1|2|3>`, `Top`, `Back`,
//! `End: Answer`, `End: Nonsense`, `End: Controversial`.
//!
//! Rendering: a page is its text lines with links shown inline as `【id†text】` (ids numbered per
//! page from 0); the model sees a window of `window` lines at the cursor. A scroll moves the cursor
//! by that many windows (clamped to the page); `Find in page` moves it to the next line containing
//! the text (case-insensitive), searching after the current window and wrapping to the top once;
//! `Back` returns to the previous page and its cursor; `Search` shows a results page whose links
//! are the hits. A quote must be a substring of the current page; quotes are kept in collection
//! order, without duplicates. A malformed or failing command is an error observation that leaves
//! the state unchanged. The episode ends on `End: ...`, when the action budget is spent (a forced
//! `End: Answer`), or when the quotes exceed their character limit.

use std::path::Path;

use serde::Serialize;

use crate::{AgentError, Result};

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

/// The site: pages and a BM25 index over their text.
pub struct Site {
    pub pages: Vec<SitePage>,
    bm25: canon_rag::bm25::Bm25,
}

impl Site {
    /// Reads every `.html`/`.htm`/`.txt` file under `dir` (sorted by path); links resolve by
    /// relative path.
    pub fn load(dir: &Path) -> Result<Site> {
        let mut files = walk(dir)?;
        files.sort();
        let mut raw = Vec::new();
        for rel in &files {
            let p = dir.join(rel);
            let text = std::fs::read_to_string(&p).map_err(|source| AgentError::Io {
                path: p.display().to_string(),
                error: source,
            })?;
            raw.push((rel.clone(), text));
        }
        Site::from_texts(raw)
    }

    /// Builds a site from `(relative url, content)` pairs.
    pub fn from_texts(raw: Vec<(String, String)>) -> Result<Site> {
        if raw.is_empty() {
            return Err(AgentError::Task(
                "expected a site with .html or .txt pages, found none".into(),
            ));
        }
        let urls: Vec<String> = raw.iter().map(|r| r.0.clone()).collect();
        let mut pages = Vec::new();
        for (url, text) in raw {
            let (title, lines, links) = if url.ends_with(".txt") {
                let lines: Vec<String> = text
                    .lines()
                    .map(|l| l.trim().to_string())
                    .filter(|l| !l.is_empty())
                    .collect();
                (url.clone(), lines, Vec::new())
            } else {
                render_html(&text)
            };
            let base = Path::new(&url)
                .parent()
                .map(|p| p.to_path_buf())
                .unwrap_or_default();
            let links = links
                .into_iter()
                .map(|(t, href)| {
                    let h = href.split('#').next().unwrap_or("");
                    let target_path = base.join(h);
                    let norm = normalize(&target_path.to_string_lossy());
                    Link {
                        text: t,
                        target: urls.iter().position(|u| *u == norm),
                    }
                })
                .collect();
            pages.push(SitePage {
                title: if title.is_empty() { url.clone() } else { title },
                url,
                lines,
                links,
            });
        }
        let docs: Vec<String> = pages
            .iter()
            .map(|p| format!("{}\n{}", p.title, p.text()))
            .collect();
        let bm25 = canon_rag::bm25::Bm25::build(docs.iter().map(String::as_str));
        Ok(Site { pages, bm25 })
    }
}

fn normalize(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            o => parts.push(o),
        }
    }
    parts.join("/")
}

/// The `.html`/`.htm`/`.txt` files under `root`, as `/`-separated relative paths in path order.
fn walk(root: &Path) -> Result<Vec<String>> {
    let files = canon_fs::walk_files(
        root,
        |_| true,
        |p| {
            p.extension()
                .is_some_and(|x| x == "html" || x == "htm" || x == "txt")
        },
    )
    .map_err(|e| AgentError::Io {
        path: e.path.display().to_string(),
        error: e.error,
    })?;
    Ok(files
        .iter()
        .filter_map(|p| p.strip_prefix(root).ok())
        .map(|rel| rel.to_string_lossy().replace('\\', "/"))
        .collect())
}

/// One browser command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Search(String),
    Click(usize),
    Find(String),
    Quote(String),
    ScrollDown(usize),
    ScrollUp(usize),
    Top,
    Back,
    End(String),
}

impl Command {
    pub fn parse(s: &str) -> std::result::Result<Command, String> {
        let s = s.trim();
        let arg = |p: &str| s.strip_prefix(p).map(str::trim);
        let nonempty = |v: &str, what: &str| {
            if v.is_empty() {
                Err(format!("expected {what}, found nothing"))
            } else {
                Ok(v.to_string())
            }
        };
        let amount = |v: &str| match v {
            "1" | "2" | "3" => Ok(v.parse::<usize>().unwrap_or(1)),
            o => Err(format!("expected a scroll amount 1, 2 or 3, found {o:?}")),
        };
        if let Some(v) = arg("Search ") {
            return nonempty(v, "a query").map(Command::Search);
        }
        if let Some(v) = arg("Clicked on link ") {
            return v
                .parse()
                .map(Command::Click)
                .map_err(|_| format!("expected a link id (a number), found {v:?}"));
        }
        if let Some(v) = arg("Find in page:") {
            return nonempty(v, "text to find").map(Command::Find);
        }
        if let Some(v) = arg("Quote:") {
            return nonempty(v, "text to quote").map(Command::Quote);
        }
        if let Some(v) = arg("Scrolled down") {
            return amount(v).map(Command::ScrollDown);
        }
        if let Some(v) = arg("Scrolled up") {
            return amount(v).map(Command::ScrollUp);
        }
        match s {
            "Top" => return Ok(Command::Top),
            "Back" => return Ok(Command::Back),
            _ => {}
        }
        if let Some(v) = arg("End:") {
            return match v {
                "Answer" | "Nonsense" | "Controversial" => Ok(Command::End(v.to_string())),
                o => Err(format!(
                    "expected End: Answer, End: Nonsense or End: Controversial, found End: {o}"
                )),
            };
        }
        Err(format!(
            "expected a command (Search <query>, Clicked on link <id>, Find in page: <text>, Quote: <text>, Scrolled down <1-3>, Scrolled up <1-3>, Top, Back, End: Answer), found {s:?}"
        ))
    }

    /// The command as written.
    pub fn text(&self) -> String {
        match self {
            Command::Search(q) => format!("Search {q}"),
            Command::Click(i) => format!("Clicked on link {i}"),
            Command::Find(t) => format!("Find in page: {t}"),
            Command::Quote(t) => format!("Quote: {t}"),
            Command::ScrollDown(n) => format!("Scrolled down {n}"),
            Command::ScrollUp(n) => format!("Scrolled up {n}"),
            Command::Top => "Top".into(),
            Command::Back => "Back".into(),
            Command::End(v) => format!("End: {v}"),
        }
    }
}

/// A collected quote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Quote {
    pub title: String,
    pub url: String,
    pub text: String,
}

/// Limits of an episode.
#[derive(Debug, Clone, Copy)]
pub struct BrowserConfig {
    pub window: usize,
    pub max_actions: usize,
    pub max_quote_chars: usize,
    pub search_results: usize,
}

impl Default for BrowserConfig {
    fn default() -> Self {
        BrowserConfig {
            window: 10,
            max_actions: 20,
            max_quote_chars: 2000,
            search_results: 5,
        }
    }
}

/// What is on screen: a site page or a results page.
#[derive(Debug, Clone)]
struct View {
    page: SitePage,
    cursor: usize,
}

/// One browsing episode.
pub struct Browser<'a> {
    site: &'a Site,
    cfg: BrowserConfig,
    pub question: String,
    view: Option<View>,
    back: Vec<View>,
    pub quotes: Vec<Quote>,
    pub actions: Vec<String>,
    /// `Some(verdict)` once ended.
    pub ended: Option<String>,
}

impl<'a> Browser<'a> {
    pub fn new(site: &'a Site, question: &str, cfg: BrowserConfig) -> Self {
        Browser {
            site,
            cfg,
            question: question.to_string(),
            view: None,
            back: Vec::new(),
            quotes: Vec::new(),
            actions: Vec::new(),
            ended: None,
        }
    }

    fn results_page(&self, q: &str) -> SitePage {
        // A page titled exactly as the query comes first (a search engine's navigational
        // result), then BM25's ranking.
        let exact = self
            .site
            .pages
            .iter()
            .position(|p| p.title.eq_ignore_ascii_case(q.trim()));
        let mut hits: Vec<(usize, f32)> = exact.map(|i| (i, f32::INFINITY)).into_iter().collect();
        for h in self.site.bm25.search(q, self.cfg.search_results) {
            if Some(h.0) != exact && hits.len() < self.cfg.search_results {
                hits.push(h);
            }
        }
        let mut lines = Vec::new();
        let mut links = Vec::new();
        for (i, (doc, _)) in hits.iter().enumerate() {
            let p = &self.site.pages[*doc];
            let snippet: String = p
                .lines
                .iter()
                .skip(1)
                .take(1)
                .cloned()
                .collect::<Vec<_>>()
                .join(" ");
            let snippet = strip_markers(&snippet);
            let snippet: String = snippet.chars().take(120).collect();
            lines.push(format!("【{i}†{}】 {}", p.title, p.url));
            if !snippet.is_empty() {
                lines.push(snippet);
            }
            links.push(Link {
                text: p.title.clone(),
                target: Some(*doc),
            });
        }
        if lines.is_empty() {
            lines.push("No results.".into());
        }
        SitePage {
            url: format!("search?q={q}"),
            title: format!("Search results for '{q}'"),
            lines,
            links,
        }
    }

    fn max_cursor(&self, v: &View) -> usize {
        v.page.lines.len().saturating_sub(1) / self.cfg.window * self.cfg.window
    }

    /// Applies a command written as text; returns the observation (the rendered state, or an
    /// error line followed by the unchanged state).
    pub fn step(&mut self, command: &str) -> String {
        if self.ended.is_some() {
            return format!("error: the episode has ended\n{}", self.render());
        }
        let cmd = match Command::parse(command) {
            Ok(c) => c,
            Err(e) => return format!("error: {e}\n{}", self.render()),
        };
        if let Err(e) = self.apply(&cmd) {
            return format!("error: {e}\n{}", self.render());
        }
        self.actions.push(cmd.text());
        if self.ended.is_none() && self.actions.len() >= self.cfg.max_actions {
            self.ended = Some("Answer".into());
        }
        if self.ended.is_none() && self.quote_chars() > self.cfg.max_quote_chars {
            self.ended = Some("Answer".into());
        }
        self.render()
    }

    fn quote_chars(&self) -> usize {
        self.quotes.iter().map(|q| q.text.chars().count()).sum()
    }

    fn apply(&mut self, cmd: &Command) -> std::result::Result<(), String> {
        match cmd {
            Command::Search(q) => {
                let page = self.results_page(q);
                if let Some(v) = self.view.take() {
                    self.back.push(v);
                }
                self.view = Some(View { page, cursor: 0 });
            }
            Command::Click(i) => {
                let v = self.view.as_ref().ok_or("no page is open: search first")?;
                let link = v.page.links.get(*i).ok_or_else(|| {
                    format!("expected a link id below {}, found {i}", v.page.links.len())
                })?;
                let target = link
                    .target
                    .ok_or_else(|| format!("link {i} leads outside the site"))?;
                let page = self.site.pages[target].clone();
                if let Some(v) = self.view.take() {
                    self.back.push(v);
                }
                self.view = Some(View { page, cursor: 0 });
            }
            Command::Find(t) => {
                let v = self.view.as_ref().ok_or("no page is open: search first")?;
                let needle = t.to_lowercase();
                let n = v.page.lines.len();
                let start = (v.cursor + self.cfg.window).min(n);
                let hit = (start..n)
                    .chain(0..start)
                    .find(|&i| {
                        strip_markers(&v.page.lines[i])
                            .to_lowercase()
                            .contains(&needle)
                    })
                    .ok_or_else(|| format!("{t:?} is not on this page"))?;
                if let Some(v) = self.view.as_mut() {
                    v.cursor = hit;
                }
            }
            Command::Quote(t) => {
                let v = self.view.as_ref().ok_or("no page is open: search first")?;
                let text = strip_markers(&v.page.text())
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ");
                let want = t.split_whitespace().collect::<Vec<_>>().join(" ");
                if !text.contains(&want) {
                    return Err(format!("the quote is not on this page: {t:?}"));
                }
                let q = Quote {
                    title: v.page.title.clone(),
                    url: v.page.url.clone(),
                    text: want,
                };
                if !self.quotes.contains(&q) {
                    self.quotes.push(q);
                }
            }
            Command::ScrollDown(k) | Command::ScrollUp(k) => {
                let down = matches!(cmd, Command::ScrollDown(_));
                let v = self.view.as_ref().ok_or("no page is open: search first")?;
                let maxc = self.max_cursor(v);
                let step = k * self.cfg.window;
                let c = if down {
                    (v.cursor + step).min(maxc)
                } else {
                    v.cursor.saturating_sub(step)
                };
                if let Some(v) = self.view.as_mut() {
                    v.cursor = c;
                }
            }
            Command::Top => {
                let v = self.view.as_mut().ok_or("no page is open: search first")?;
                v.cursor = 0;
            }
            Command::Back => {
                let prev = self.back.pop().ok_or("there is no previous page")?;
                self.view = Some(prev);
            }
            Command::End(v) => self.ended = Some(v.clone()),
        }
        Ok(())
    }

    /// The lines in the current window, without link markers and with runs of whitespace
    /// collapsed: the texts a `Quote:` of this window can take whole.
    pub fn visible_lines(&self) -> Vec<String> {
        let Some(v) = &self.view else {
            return Vec::new();
        };
        let n = v.page.lines.len();
        let end = (v.cursor + self.cfg.window).min(n);
        v.page.lines[v.cursor.min(n)..end]
            .iter()
            .map(|l| {
                strip_markers(l)
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// Whether `text` (whitespace collapsed, as `visible_lines` gives it) is already quoted from
    /// the open page: quoting it again would change nothing but spend an action.
    pub fn is_quoted(&self, text: &str) -> bool {
        let Some(v) = &self.view else {
            return false;
        };
        self.quotes
            .iter()
            .any(|q| q.url == v.page.url && q.title == v.page.title && q.text == text)
    }

    /// Links on the open page (0 when none is open).
    pub fn link_count(&self) -> usize {
        self.view.as_ref().map_or(0, |v| v.page.links.len())
    }

    /// Whether a page is open and a previous page exists to go back to.
    pub fn has_page(&self) -> bool {
        self.view.is_some()
    }
    pub fn can_go_back(&self) -> bool {
        !self.back.is_empty()
    }

    /// The limits of this episode.
    pub fn config(&self) -> BrowserConfig {
        self.cfg
    }

    /// The state as the model sees it.
    pub fn render(&self) -> String {
        let mut s = format!("Question:\n{}\n\nQuotes:\n", self.question);
        if self.quotes.is_empty() {
            s.push_str("(none)\n");
        }
        for (i, q) in self.quotes.iter().enumerate() {
            s.push_str(&format!(
                "[{}] From {} ({}):\n{}\n",
                i + 1,
                q.title,
                q.url,
                q.text
            ));
        }
        s.push_str("\nPast actions:\n");
        if self.actions.is_empty() {
            s.push_str("(none)\n");
        }
        for a in &self.actions {
            s.push_str(a);
            s.push('\n');
        }
        match &self.view {
            None => s.push_str("\nNo page is open.\n"),
            Some(v) => {
                let n = v.page.lines.len();
                let end = (v.cursor + self.cfg.window).min(n);
                s.push_str(&format!(
                    "\nTitle: {}\nURL: {}\nLines {}-{} of {}:\n",
                    v.page.title,
                    v.page.url,
                    if n == 0 { 0 } else { v.cursor + 1 },
                    end,
                    n
                ));
                for l in &v.page.lines[v.cursor.min(n)..end] {
                    s.push_str(l);
                    s.push('\n');
                }
            }
        }
        match &self.ended {
            Some(v) => s.push_str(&format!("\nEnded: {v}\n")),
            None => s.push_str(&format!(
                "\nActions left: {}\nNext action:",
                self.cfg.max_actions.saturating_sub(self.actions.len())
            )),
        }
        s
    }

    /// The answer prompt: the question and the references in collection order, cited by number.
    pub fn answer_prompt(&self) -> String {
        let mut s = format!("Question: {}\n\nReferences:\n", self.question);
        for (i, q) in self.quotes.iter().enumerate() {
            s.push_str(&format!(
                "[{}] {} ({}): {}\n",
                i + 1,
                q.title,
                q.url,
                q.text
            ));
        }
        s.push_str(
            "\nAnswer the question from the references, citing them as [1], [2], ...\nAnswer:",
        );
        s
    }
}

/// A documented heuristic answer score until a reward model exists: +1 per distinct valid
/// citation `[k]` (1 ≤ k ≤ `references`), −1 per citation of a reference that does not exist,
/// −1 for an empty answer; a tiny length term (−0.001 per character beyond 600) breaks ties toward
/// concise answers.
pub fn heuristic_score(answer: &str, references: usize) -> f64 {
    if answer.trim().is_empty() {
        return -1.0;
    }
    let mut valid = std::collections::BTreeSet::new();
    let mut invalid = 0usize;
    let mut rest = answer;
    while let Some(a) = rest.find('[') {
        let after = &rest[a + 1..];
        let Some(b) = after.find(']') else { break };
        if let Ok(k) = after[..b].trim().parse::<usize>() {
            if (1..=references).contains(&k) {
                valid.insert(k);
            } else {
                invalid += 1;
            }
        }
        rest = &after[b + 1..];
    }
    let len = answer.chars().count().saturating_sub(600) as f64;
    valid.len() as f64 - invalid as f64 - 0.001 * len
}

/// Best-of-n: the index of the highest score, the lowest index among ties; `None` when empty.
pub fn best_of_n(scores: &[f64]) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (i, s) in scores.iter().enumerate() {
        if best.is_none_or(|b| *s > scores[b]) {
            best = Some(i);
        }
    }
    best
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

#[cfg(test)]
mod tests {
    use super::*;

    fn site() -> Site {
        let mut long = String::from("<html><head><title>Rust</title></head><body><h1>Rust</h1>");
        for i in 1..=23 {
            long.push_str(&format!("<p>Rust line {i}.</p>"));
        }
        long.push_str("<p>Rust was first released in 2015. See <a href=\"cargo.html\">Cargo</a>.</p></body></html>");
        Site::from_texts(vec![
            ("index.html".into(), "<html><head><title>Home</title></head><body><p>Welcome to the <a href=\"rust.html\">Rust page</a> and the <a href=\"http://example.org/\">outside</a>.</p><script>var x = '<p>no</p>';</script><p>Fish &amp; chips.</p></body></html>".into()),
            ("rust.html".into(), long),
            ("cargo.html".into(), "<title>Cargo</title><p>Cargo is the Rust package manager.</p><p>It builds crates.</p><p>Go <a href=\"./index.html\">home</a>.</p>".into()),
        ])
        .unwrap()
    }

    #[test]
    fn html_renders_with_link_markers() {
        let s = site();
        let home = &s.pages[0];
        assert_eq!(home.url, "index.html");
        assert_eq!(
            home.lines,
            [
                "Welcome to the 【0†Rust page】 and the 【1†outside】.",
                "Fish & chips."
            ]
        );
        assert_eq!(home.links[0].target, Some(1));
        assert_eq!(home.links[1].target, None);
        assert_eq!(s.pages[2].links[0].target, Some(0), "./index.html resolves");
        assert_eq!(
            strip_markers(&home.lines[0]),
            "Welcome to the Rust page and the outside."
        );
    }

    #[test]
    fn commands_round_trip_and_malformed_ones_are_errors() {
        for c in [
            "Search rust release",
            "Clicked on link 3",
            "Find in page: 2015",
            "Quote: Rust was first released in 2015.",
            "Scrolled down 2",
            "Scrolled up 1",
            "Top",
            "Back",
            "End: Answer",
            "End: Nonsense",
            "End: Controversial",
        ] {
            assert_eq!(Command::parse(c).unwrap().text(), c);
        }
        for bad in [
            "Scrolled down 4",
            "Clicked on link x",
            "Search ",
            "End: Maybe",
            "Jump",
            "Quote:",
        ] {
            assert!(Command::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_scripted_episode_gives_exact_observations() {
        let s = site();
        let cfg = BrowserConfig {
            window: 10,
            max_actions: 13,
            max_quote_chars: 500,
            search_results: 3,
        };
        let mut b = Browser::new(&s, "When was Rust first released?", cfg);
        let o = b.step("Search Rust released");
        assert!(o.starts_with("Question:\nWhen was Rust first released?\n\nQuotes:\n(none)\n\nPast actions:\nSearch Rust released\n\nTitle: Search results for 'Rust released'\nURL: search?q=Rust released\nLines 1-"), "{o}");
        assert!(o.contains("【0†Rust】 rust.html\nRust line 1.\n"), "{o}");
        let o = b.step("Clicked on link 0");
        assert!(
            o.contains("Title: Rust\nURL: rust.html\nLines 1-10 of 25:\nRust\nRust line 1.\n"),
            "{o}"
        );
        assert!(
            o.ends_with("Rust line 9.\n\nActions left: 11\nNext action:"),
            "{o}"
        );
        // scrolling clamps at the last window
        let o = b.step("Scrolled down 3");
        assert!(o.contains("Lines 21-25 of 25:\nRust line 20.\n"), "{o}");
        let o = b.step("Scrolled up 1");
        assert!(o.contains("Lines 11-20 of 25:\nRust line 10.\n"), "{o}");
        // find jumps to the next matching line after the window, wrapping to the top
        let o = b.step("Find in page: line 3");
        assert!(
            o.contains("Lines 4-13 of 25:\nRust line 3.\n"),
            "wrapped to the top: {o}"
        );
        let o = b.step("Find in page: nowhere");
        assert!(
            o.starts_with("error: \"nowhere\" is not on this page\n"),
            "{o}"
        );
        let o = b.step("Find in page: released");
        assert!(
            o.contains("Lines 25-25 of 25:\nRust was first released in 2015. See 【0†Cargo】.\n"),
            "{o}"
        );
        let o = b.step("Quote: first released in 2015");
        assert!(
            o.contains("Quotes:\n[1] From Rust (rust.html):\nfirst released in 2015\n"),
            "{o}"
        );
        let o = b.step("Quote: released in 1999");
        assert!(o.starts_with("error: the quote is not on this page"), "{o}");
        b.step("Quote: first released in 2015"); // a duplicate is kept once
        assert_eq!(b.quotes.len(), 1);
        b.step("Clicked on link 0");
        b.step("Quote: Cargo is the Rust package manager.");
        // Back after two clicks: the Rust page at the cursor it had
        let o = b.step("Back");
        assert!(
            o.contains("Title: Rust\nURL: rust.html\nLines 25-25 of 25:"),
            "{o}"
        );
        let o = b.step("Back");
        assert!(
            o.contains("Title: Search results for 'Rust released'"),
            "{o}"
        );
        assert_eq!(
            b.answer_prompt(),
            "Question: When was Rust first released?\n\nReferences:\n[1] Rust (rust.html): first released in 2015\n[2] Cargo (cargo.html): Cargo is the Rust package manager.\n\nAnswer the question from the references, citing them as [1], [2], ...\nAnswer:"
        );
        // the 13th action spends the budget: a forced End: Answer
        assert_eq!(b.actions.len(), 12);
        let o = b.step("Top");
        assert_eq!(b.ended.as_deref(), Some("Answer"));
        assert!(o.ends_with("\nEnded: Answer\n"), "{o}");
        assert!(b.step("Top").starts_with("error: the episode has ended"));
    }

    #[test]
    fn best_of_n_takes_the_highest_score_and_the_first_of_ties() {
        assert_eq!(best_of_n(&[]), None);
        assert_eq!(best_of_n(&[0.5]), Some(0));
        assert_eq!(best_of_n(&[1.0, 3.0, 3.0, 2.0]), Some(1));
        assert_eq!(
            heuristic_score("Rust came out in 2015 [1], says [2].", 2),
            2.0
        );
        assert_eq!(heuristic_score("In 2015 [1][1] and [3].", 2), 0.0);
        assert_eq!(heuristic_score("  ", 2), -1.0);
        let s = [
            heuristic_score("No idea.", 1),
            heuristic_score("2015 [1].", 1),
            heuristic_score("2015 [1]. Also [1].", 1),
        ];
        assert_eq!(best_of_n(&s), Some(1));
    }

    #[test]
    fn errors_leave_the_state_unchanged() {
        let s = site();
        let mut b = Browser::new(&s, "q", BrowserConfig::default());
        let before = b.render();
        assert!(
            b.step("Clicked on link 0")
                .starts_with("error: no page is open")
        );
        assert!(
            b.step("Back")
                .starts_with("error: there is no previous page")
        );
        assert!(
            b.step("Scrolled down 9")
                .starts_with("error: expected a scroll amount")
        );
        assert_eq!(b.render(), before);
        b.step("Search welcome");
        let o = b.step("Clicked on link 7");
        assert!(o.starts_with("error: expected a link id below"), "{o}");
        b.step("Clicked on link 0");
        assert!(
            b.step("Clicked on link 1")
                .starts_with("error: link 1 leads outside the site")
        );
        assert_eq!(b.actions, ["Search welcome", "Clicked on link 0"]);
    }
}
