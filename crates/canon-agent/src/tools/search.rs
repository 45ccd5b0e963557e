//! BM25 search over a `canon index` folder as a tool.

use serde_json::{Value, json};

use super::{Tool, ToolError, ToolSpec};

pub struct IndexSearch {
    pub index: canon_rag::index::Index,
    pub k: usize,
}

impl Tool for IndexSearch {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "search".into(),
            description: format!(
                "Keyword (BM25) search over a local document index of {} passages; answers the \
                 top {} passages with their source.",
                self.index.meta.chunks, self.k
            ),
            parameters: json!({"type": "object",
                "properties": {"query": {"type": "string"}}, "required": ["query"]}),
        }
    }
    fn call(&self, args: &Value) -> Result<String, ToolError> {
        let q = args["query"].as_str().unwrap_or("");
        let hits = self
            .index
            .search(q, None, canon_rag::index::Mode::Bm25, self.k)
            .map_err(|e| ToolError::new(e.to_string()))?;
        if hits.is_empty() {
            return Ok(format!("No passage matches {q:?}."));
        }
        Ok(hits
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let text = h
                    .chunk
                    .text
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ");
                format!("[{}] {}: {}", i + 1, h.chunk.page, text)
            })
            .collect::<Vec<_>>()
            .join("\n"))
    }
}
