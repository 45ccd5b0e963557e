//! The episode's state: commands, the view and its cursor, the back stack and the quotes.

use serde::Serialize;

use super::render::{Link, SitePage, strip_markers};
use super::site::Site;

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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
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
