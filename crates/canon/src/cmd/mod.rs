pub mod agent;
pub mod align;
pub mod ask;
pub mod assets;
pub mod autoprompt;
pub mod browse;
pub mod chat;
pub mod cot;
pub mod data;
pub mod embed;
pub mod eval;
pub mod eval_rag;
pub mod fewshot;
pub mod finetune;
pub mod finetune_bert;
pub mod finetune_rag;
pub mod flan;
pub mod generate;
pub mod graph;
pub mod graph_summarize;
pub mod index;
pub mod info;
pub mod lora_finetune;
pub mod merge;
pub mod perplexity;
pub mod plot;
pub mod quantize;
pub mod scale;
pub mod serve;
pub mod tokenize;
pub mod toolformer;
pub mod train;
pub mod translate;
pub mod webgpt;
pub mod zero_shot;

/// Writes `text` to `path` through a temporary file and a rename, so a reader never sees a
/// half-written file.
pub(crate) fn write_atomic(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use anyhow::Context;
    canon_fs::write_atomic(path, text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}
