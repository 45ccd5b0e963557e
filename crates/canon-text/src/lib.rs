//! Text: tokenizers (through the HF `tokenizers` crate) loaded from `tokenizer.json` or built from a
//! GGUF file's `tokenizer.ggml.*` metadata, streaming detokenisation, and chat templates rendered with
//! a real Jinja engine (minijinja). No tensor dependency.

pub mod chat;
pub mod gguf_vocab;
mod spm;
pub mod stream;
pub mod tokenizer;

pub use chat::{ChatTemplate, Message, chat_prompt};
pub use gguf_vocab::GgufVocab;
pub use stream::TokenStream;
pub use tokenizer::Tokenizer;

#[derive(Debug, thiserror::Error)]
pub enum TextError {
    #[error("cannot load the tokenizer from {path}: {message}")]
    Load { path: String, message: String },
    #[error("unsupported GGUF tokenizer: {0}")]
    Unsupported(String),
    #[error("invalid GGUF tokenizer metadata: {0}")]
    BadVocab(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
}

pub type Result<T> = std::result::Result<T, TextError>;
