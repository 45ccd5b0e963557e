//! The encyclopedia environment of the ReAct loop: pages, the title index, the page cursor and
//! the search and lookup tools.

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use crate::react_data::Page;
use crate::tools::{Tool, ToolError, ToolSpec};

/// The pages and a title index.
pub struct Wiki {
    pub pages: Vec<Page>,
    by_title: std::collections::HashMap<String, usize>,
    titles: canon_rag::bm25::Bm25,
}

impl Wiki {
    pub fn new(pages: Vec<Page>) -> Wiki {
        let by_title = pages
            .iter()
            .enumerate()
            .map(|(i, p)| (p.title.to_lowercase(), i))
            .collect();
        let docs: Vec<String> = pages.iter().map(|p| title_terms(&p.title)).collect();
        let titles = canon_rag::bm25::Bm25::build(docs.iter().map(String::as_str));
        Wiki {
            pages,
            by_title,
            titles,
        }
    }
}

/// A title as BM25 terms: its words and their character trigrams (padded with `_`), so `libc`
/// is similar to `libc6`.
pub fn title_terms(title: &str) -> String {
    let mut out = Vec::new();
    for w in title
        .to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        out.push(w.to_string());
        let cs: Vec<char> = std::iter::once('_')
            .chain(w.chars())
            .chain(std::iter::once('_'))
            .collect();
        for g in cs.windows(3) {
            out.push(g.iter().collect::<String>());
        }
    }
    out.join(" ")
}

/// The paper's sentence split: paragraphs on newlines, sentences on `". "`, each re-terminated.
pub fn sentences(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for para in text.split('\n').map(str::trim).filter(|p| !p.is_empty()) {
        for s in para.split(". ").map(str::trim).filter(|s| !s.is_empty()) {
            let s = s.trim_end_matches('.');
            out.push(format!("{s}."));
        }
    }
    out
}

#[derive(Default)]
struct Cursor {
    page: Option<usize>,
    keyword: String,
    results: Vec<String>,
    next: usize,
}

/// One episode's state: the current page and the lookup cursor (reset by each search).
#[derive(Clone)]
pub struct WikiEnv {
    wiki: Arc<Wiki>,
    cursor: Arc<Mutex<Cursor>>,
}

impl WikiEnv {
    pub fn new(wiki: Arc<Wiki>) -> Self {
        WikiEnv {
            wiki,
            cursor: Arc::new(Mutex::new(Cursor::default())),
        }
    }

    pub fn search(&self, entity: &str) -> String {
        let entity = entity.trim();
        let mut c = match self.cursor.lock() {
            Ok(c) => c,
            Err(p) => p.into_inner(),
        };
        *c = Cursor::default();
        if let Some(&i) = self.wiki.by_title.get(&entity.to_lowercase()) {
            c.page = Some(i);
            return sentences(&self.wiki.pages[i].text)
                .into_iter()
                .take(5)
                .collect::<Vec<_>>()
                .join(" ");
        }
        let similar: Vec<String> = self
            .wiki
            .titles
            .search(&title_terms(entity), 5)
            .into_iter()
            .map(|(i, _)| format!("'{}'", self.wiki.pages[i].title))
            .collect();
        format!(
            "Could not find [{entity}]. Similar: [{}].",
            similar.join(", ")
        )
    }

    pub fn lookup(&self, keyword: &str) -> String {
        let keyword = keyword.trim();
        let mut c = match self.cursor.lock() {
            Ok(c) => c,
            Err(p) => p.into_inner(),
        };
        let Some(page) = c.page else {
            return "No page is open: search for an entity first.".into();
        };
        if c.keyword != keyword {
            let k = keyword.to_lowercase();
            c.results = sentences(&self.wiki.pages[page].text)
                .into_iter()
                .filter(|s| s.to_lowercase().contains(&k))
                .collect();
            c.keyword = keyword.to_string();
            c.next = 0;
        }
        if c.next >= c.results.len() {
            return "No more results.".into();
        }
        let r = format!(
            "(Result {} / {}) {}",
            c.next + 1,
            c.results.len(),
            c.results[c.next]
        );
        c.next += 1;
        r
    }

    /// The `Search` and `Lookup` tools over this episode's cursor.
    pub fn tools(&self) -> Vec<Arc<dyn Tool>> {
        vec![
            Arc::new(WikiTool {
                env: self.clone(),
                lookup: false,
            }),
            Arc::new(WikiTool {
                env: self.clone(),
                lookup: true,
            }),
        ]
    }
}

struct WikiTool {
    env: WikiEnv,
    lookup: bool,
}

impl Tool for WikiTool {
    fn spec(&self) -> ToolSpec {
        if self.lookup {
            ToolSpec {
                name: "Lookup".into(),
                description: "The next sentence of the current page that contains the keyword."
                    .into(),
                parameters: json!({"type": "object",
                    "properties": {"keyword": {"type": "string"}}, "required": ["keyword"]}),
            }
        } else {
            ToolSpec {
                name: "Search".into(),
                description: "The first sentences of the page about an entity, or similar titles."
                    .into(),
                parameters: json!({"type": "object",
                    "properties": {"entity": {"type": "string"}}, "required": ["entity"]}),
            }
        }
    }
    fn call(&self, args: &Value) -> std::result::Result<String, ToolError> {
        if self.lookup {
            Ok(self.env.lookup(args["keyword"].as_str().unwrap_or("")))
        } else {
            Ok(self.env.search(args["entity"].as_str().unwrap_or("")))
        }
    }
}
