//! Decoding: sampling (GPT-2/3 style temperature, top-k, nucleus, min-p, repetition penalty), the
//! generation loop over any `CausalLm`, and the `TextGenerator` seam that RAG, agents and evaluation
//! are written against.

pub mod generate;
pub mod generator;
pub mod sampling;

pub use generate::{LmGenerator, Session, generate_ids};
pub use generator::{FinishReason, GenerateRequest, Generation, TextGenerator, TokenLogprob};
pub use sampling::{Sampler, SamplingConfig};

#[derive(Debug, thiserror::Error)]
pub enum InferError {
    #[error("empty prompt: expected at least one token")]
    EmptyPrompt,
    #[error(
        "the prompt has {found} tokens, but the model's context holds {max} (at least {needed} more position needed to generate)"
    )]
    PromptTooLong {
        found: usize,
        max: usize,
        needed: usize,
    },
    #[error("invalid sampling setting: {0}")]
    Sampling(String),
    #[error(transparent)]
    Model(#[from] canon_models::ModelError),
    #[error(transparent)]
    Text(#[from] canon_text::TextError),
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, InferError>;
