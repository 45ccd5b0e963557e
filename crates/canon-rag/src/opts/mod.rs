//! The settings of the retrieval commands (`canon index`, `search`, `ask`, `graph`, `eval rag`)
//! with their checks. With the `cli` feature they are also the command line's argument structs
//! (clap's derive, the doc comments being the `--help` text), so the binary parses straight into
//! them.

use std::path::PathBuf;

use crate::index::Mode;
use crate::{RagError, Result};

#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct IndexArgs {
    #[cfg_attr(feature = "cli", command(subcommand))]
    pub cmd: IndexCmd,
}

#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(clap::Subcommand))]
pub enum IndexCmd {
    /// Read, chunk, embed and index documents into a new index folder.
    #[cfg_attr(
        feature = "cli",
        command(after_help = "Examples:
  canon index build --docs notes/ README.md --out docs.idx
  canon index build --man --docs /usr/share/man/man1 --out man1.idx")
    )]
    Build(BuildArgs),
    /// Re-index the files of an index that changed, appeared or disappeared since it was built.
    #[cfg_attr(
        feature = "cli",
        command(after_help = "Example:
  canon index update --index docs.idx")
    )]
    Update(UpdateArgs),
}

#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct BuildArgs {
    /// Files or folders to index (folders are walked; .gz files are read decompressed).
    #[cfg_attr(feature = "cli", arg(long, num_args = 1.., required = true))]
    pub docs: Vec<PathBuf>,
    /// Render man pages with the system `man` (no hyphenation or justification) instead of the
    /// built-in reader.
    #[cfg_attr(feature = "cli", arg(long))]
    pub man: bool,
    /// The index folder to write (replaced atomically when it exists).
    #[cfg_attr(feature = "cli", arg(long))]
    pub out: PathBuf,
    /// Embedding model: an alias (minilm) or an HF-style BERT folder; append `:q8_0` (minilm:q8_0)
    /// to run its linear layers on 8-bit weights, about twice as fast, cosine to the f32 vectors
    /// about 0.998 or more. The index records the name, so searches embed queries the same way.
    #[cfg_attr(feature = "cli", arg(long, default_value = "minilm"))]
    pub model: String,
    /// Most tokens (embedding tokenizer) per chunk.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 200))]
    pub max_tokens: usize,
    /// Tokens repeated from the previous chunk of the same section.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 32))]
    pub overlap: usize,
    /// Texts per embedding forward pass.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 32))]
    pub batch_size: usize,
    /// Build an HNSW graph for dense search when the index has at least this many chunks.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = crate::index::HNSW_MIN_CHUNKS))]
    pub hnsw_min: usize,
    /// Index at most this many files (the first in path order).
    #[cfg_attr(feature = "cli", arg(long))]
    pub limit: Option<usize>,
    /// Refuse a build whose --docs hold more files than this (a guard against indexing a whole
    /// disk by mistake; --limit takes the first files instead).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 100_000))]
    pub max_files: usize,
    /// Read and chunk only: print the counts and the reading time, embed and write nothing.
    #[cfg_attr(feature = "cli", arg(long))]
    pub dry_run: bool,
}

#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct UpdateArgs {
    /// The index folder to update.
    #[cfg_attr(feature = "cli", arg(long))]
    pub index: PathBuf,
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 32))]
    pub batch_size: usize,
    /// Build an HNSW graph for dense search when the index has at least this many chunks.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = crate::index::HNSW_MIN_CHUNKS))]
    pub hnsw_min: usize,
}

#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[cfg_attr(
    feature = "cli",
    command(after_help = "Examples:
  canon search --index man1.idx \"list directory contents sorted by time\"
  canon search --index man1.idx --mode bm25 --k 10 --json \"--block-size\"")
)]
pub struct SearchArgs {
    /// The index folder.
    #[cfg_attr(feature = "cli", arg(long))]
    pub index: PathBuf,
    /// The query.
    pub query: String,
    /// Number of passages.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 5))]
    pub k: usize,
    /// hybrid (reciprocal rank fusion of dense and BM25), dense or bm25.
    #[cfg_attr(feature = "cli", arg(long, default_value = "hybrid"))]
    pub mode: String,
    /// One JSON object per hit.
    #[cfg_attr(feature = "cli", arg(long))]
    pub json: bool,
}

#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[cfg_attr(
    feature = "cli",
    command(after_help = "Examples:
  canon ask --index man.idx \"how do I make tar extract into another directory?\"
  canon ask --index man.idx --k 3 --json \"which ls option sorts by modification time?\"
  canon ask --index man.idx --k 4 --candidate \"-C\" --candidate \"-x\" \"which tar option changes directory?\"
  canon ask --index man.idx --k 3 --rag sequence-thorough \"which tar option changes directory?\"
  canon ask --index man.idx --graph local \"which files does useradd read?\"
  canon ask --index man.idx --graph global \"what do these manuals say about compression?\"

The answer cites passages as [n]; the sources printed below it name page, section, file and
lines. --json prints {question, answer, citations, chunks, timings}.")
)]
pub struct AskArgs {
    /// The index folder (from `canon index build`).
    #[cfg_attr(feature = "cli", arg(long))]
    pub index: PathBuf,
    /// The question.
    pub question: String,
    /// Generating model: an alias (smollm2), a .gguf file or an HF-style folder.
    #[cfg_attr(feature = "cli", arg(long, default_value = "smollm2"))]
    pub model: String,
    /// Passages retrieved.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 5))]
    pub k: usize,
    /// Retrieval: hybrid, dense or bm25.
    #[cfg_attr(feature = "cli", arg(long, default_value = "hybrid"))]
    pub mode: String,
    /// Most answer tokens.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 200))]
    pub max_tokens: usize,
    /// Prompt budget in tokens (default: the model's context less --max-tokens, at most 2048).
    #[cfg_attr(feature = "cli", arg(long))]
    pub context: Option<usize>,
    /// Score these candidate answers under RAG-Sequence and RAG-Token over the top --k passages
    /// (p(z|x) = softmax of the passages' dense scores) instead of generating (repeatable).
    #[cfg_attr(
        feature = "cli",
        arg(long = "candidate", value_name = "TEXT", allow_hyphen_values = true)
    )]
    pub candidates: Vec<String>,
    /// Generate with paper 9's decoders over the top --k passages instead of one prompt of
    /// numbered passages: token (RAG-Token, beam search on the per-step marginal), sequence-thorough
    /// or sequence-fast (RAG-Sequence: a beam search per passage, its hypotheses rescored).
    #[cfg_attr(feature = "cli", arg(long))]
    pub rag: Option<String>,
    /// Beam width of the --rag decoders (1 = greedy).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 1))]
    pub beams: usize,
    /// GraphRAG query over the index's graph (`canon graph build`): global or local.
    #[cfg_attr(feature = "cli", arg(long))]
    pub graph: Option<String>,
    /// With --graph global: map over every level-0 community report (GraphRAG's way, one model
    /// call per batch of reports) instead of the 2×k best by BM25.
    #[cfg_attr(feature = "cli", arg(long))]
    pub all_reports: bool,
    /// With --graph local: match the question to entities by the embedding of their
    /// descriptions (GraphRAG's way; needs a graph built with them) or by BM25.
    #[cfg_attr(
        feature = "cli",
        arg(long, default_value = "embedding", value_name = "embedding|bm25")
    )]
    pub entity_match: String,
    /// A query encoder folder to embed the question with instead of the index's model (one
    /// trained by `canon finetune --method rag`, whose retrieval prior scale it carries).
    #[cfg_attr(feature = "cli", arg(long, value_name = "DIR"))]
    pub query_encoder: Option<PathBuf>,
    /// Print one JSON object.
    #[cfg_attr(feature = "cli", arg(long))]
    pub json: bool,
}

#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[cfg_attr(
    feature = "cli",
    command(after_help = "Examples:
  canon eval rag --index man.idx --questions goldens/rag/man-devset.jsonl
  canon eval rag --index man.idx --questions q.jsonl --methods hybrid,bm25 --answer --model smollm2 --limit 40 --out runs/rag-eval.jsonl

Questions are JSON lines {id, question, answer, aliases?, page, section?, kind?}; `page` names
the source page as the index does (tar(1)). Retrieval metrics are computed for every method,
answers only with --answer. Methods: hybrid, dense, bm25, graph-local (entities matched by
description embedding), graph-local-bm25 (by BM25), graph-global (the graph methods need `canon
graph build` on the index; with --answer, local search answers from its context and global
search maps the top 2 × --answer-k community reports with the model and reduces them).")
)]
pub struct EvalRagArgs {
    /// The index folder.
    #[cfg_attr(feature = "cli", arg(long))]
    pub index: PathBuf,
    /// Question file (JSON lines).
    #[cfg_attr(feature = "cli", arg(long, value_name = "FILE.jsonl"))]
    pub questions: PathBuf,
    /// Methods, comma-separated.
    #[cfg_attr(
        feature = "cli",
        arg(long, value_delimiter = ',', default_value = "hybrid,dense,bm25")
    )]
    pub methods: Vec<String>,
    /// Retrieval depth scored (recall@1/5/10 and MRR need 10).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 10))]
    pub k: usize,
    /// Also generate answers (with --model) from the top --answer-k passages.
    #[cfg_attr(feature = "cli", arg(long))]
    pub answer: bool,
    /// Generating model for --answer.
    #[cfg_attr(feature = "cli", arg(long, default_value = "smollm2"))]
    pub model: String,
    /// Passages in the answer prompt.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 3))]
    pub answer_k: usize,
    /// Most answer tokens.
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 48))]
    pub max_tokens: usize,
    /// Also score the reference answer against N distractors (other questions' answers of the
    /// same kind) under RAG-Sequence, RAG-Token and without retrieval, over the top --answer-k
    /// passages: accuracy of each and how often retrieval raises the answer's log-probability.
    #[cfg_attr(feature = "cli", arg(long, value_name = "N"))]
    pub score_options: Option<usize>,
    /// Only the first N questions.
    #[cfg_attr(feature = "cli", arg(long))]
    pub limit: Option<usize>,
    /// Write one JSON line per question and method.
    #[cfg_attr(feature = "cli", arg(long))]
    pub out: Option<PathBuf>,
    /// A query encoder folder instead of the index's model (e.g. from `canon finetune --method rag`).
    #[cfg_attr(feature = "cli", arg(long, value_name = "DIR"))]
    pub query_encoder: Option<PathBuf>,
    /// Print the summaries as JSON lines instead of a table.
    #[cfg_attr(feature = "cli", arg(long))]
    pub json: bool,
}

fn invalid<T>(msg: String) -> Result<T> {
    Err(RagError::Invalid(msg))
}

impl BuildArgs {
    /// The chunking settings, checked (`0 <= overlap < max_tokens`).
    pub fn chunk_config(&self) -> Result<crate::chunk::ChunkConfig> {
        if self.max_tokens == 0 || self.overlap >= self.max_tokens {
            return invalid(format!(
                "expected 0 <= --overlap < --max-tokens, found overlap {} and max tokens {}",
                self.overlap, self.max_tokens
            ));
        }
        Ok(crate::chunk::ChunkConfig {
            max_tokens: self.max_tokens,
            overlap: self.overlap,
        })
    }
}

/// A non-empty query and `k` of at least 1.
fn check_query(what: &str, text: &str, k: usize) -> Result<()> {
    if text.trim().is_empty() {
        return invalid(format!("expected a non-empty {what}, found an empty one"));
    }
    if k == 0 {
        return invalid("expected --k of at least 1, found 0".to_string());
    }
    Ok(())
}

impl SearchArgs {
    /// The retrieval mode, with the query and `--k` checked.
    pub fn check(&self) -> Result<Mode> {
        let mode: Mode = self.mode.parse()?;
        check_query("query", &self.query, self.k)?;
        Ok(mode)
    }
}

/// How `canon ask` answers: one of its mutually exclusive ways.
#[derive(Debug, Clone, PartialEq)]
pub enum AskWay {
    /// One prompt of numbered passages.
    Prompt,
    /// GraphRAG over the index's graph (`global` or `local`).
    Graph(String),
    /// RAG-Sequence / RAG-Token scores of the `--candidate` answers.
    Candidates,
    /// Paper 9's decoders (`token`, `sequence-thorough`, `sequence-fast`).
    Rag(String),
}

impl AskArgs {
    /// The retrieval mode and the way of answering, with the settings checked.
    pub fn check(&self) -> Result<(Mode, AskWay)> {
        check_query("question", &self.question, self.k)?;
        let mode: Mode = self.mode.parse()?;
        let chosen = [
            self.graph.is_some(),
            !self.candidates.is_empty(),
            self.rag.is_some(),
        ];
        if chosen.iter().filter(|&&x| x).count() > 1 {
            return invalid(
                "expected at most one of --graph, --candidate and --rag, found several".to_string(),
            );
        }
        self.entity_match.parse::<crate::graph::EntityMatch>()?;
        if self.all_reports && self.graph.as_deref() != Some("global") {
            return invalid("expected --all-reports with --graph global, found it without".into());
        }
        let way = match (&self.graph, &self.rag) {
            (Some(g), _) => AskWay::Graph(g.clone()),
            (_, Some(r)) => AskWay::Rag(r.clone()),
            _ if !self.candidates.is_empty() => AskWay::Candidates,
            _ => AskWay::Prompt,
        };
        if way == AskWay::Candidates && self.candidates.iter().any(|c| c.trim().is_empty()) {
            return invalid("expected non-empty --candidate answers, found an empty one".into());
        }
        if matches!(way, AskWay::Rag(_)) && (self.beams == 0 || self.beams > 64) {
            return invalid(format!(
                "expected --beams between 1 and 64, found {}",
                self.beams
            ));
        }
        Ok((mode, way))
    }
}

impl EvalRagArgs {
    /// The methods named by `--methods`, with the depths checked.
    pub fn check(&self) -> Result<Vec<crate::eval_answer::Method>> {
        if self.k == 0 || self.answer_k == 0 {
            return invalid("expected --k and --answer-k of at least 1".to_string());
        }
        self.methods
            .iter()
            .map(|m| m.parse().map_err(|e| RagError::Invalid(format!("{e}"))))
            .collect()
    }
}

mod graph;

pub use graph::*;

#[cfg(test)]
mod tests;
