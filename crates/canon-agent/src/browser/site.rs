//! The site: a folder of pages, their links resolved, and a BM25 index over their text.

use std::path::Path;

use super::render::{Link, SitePage, render_html};
use crate::{AgentError, Result};

/// The site: pages and a BM25 index over their text.
pub struct Site {
    pub pages: Vec<SitePage>,
    pub(super) bm25: canon_rag::bm25::Bm25,
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
