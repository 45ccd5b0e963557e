//! Decoding: sampling (GPT-2/3 style temperature, top-k, nucleus, min-p, repetition penalty), the
//! generation loop over any `CausalLm`, and the `TextGenerator` seam that RAG, agents and evaluation
//! are written against.

pub mod constrained;
pub mod engine;
pub mod generate;
pub mod generator;
pub mod opts;
pub mod sampling;
pub mod seq2seq;
pub mod structured;

pub use constrained::{Allowed, TokenConstraint};
pub use engine::{
    Completion, Engine, EngineConfig, EngineError, EngineStats, Event, Request, RequestHandle,
    StepTimings,
};
pub use generate::{LmGenerator, Session, generate_ids};
pub use generator::{FinishReason, GenerateRequest, Generation, TextGenerator, TokenLogprob};
pub use sampling::{Sampler, SamplingConfig};
pub use structured::{Grammar, GrammarCompiler, GrammarConstraint, GrammarError};

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
    // Boxed: model and tensor errors are large, and this error travels through every caller.
    #[error(transparent)]
    Model(Box<canon_models::ModelError>),
    #[error(transparent)]
    Text(#[from] canon_text::TextError),
    #[error("tensor computation failed: {0}")]
    Candle(Box<candle_core::Error>),
}

impl From<canon_models::ModelError> for InferError {
    fn from(e: canon_models::ModelError) -> Self {
        InferError::Model(Box::new(e))
    }
}

impl From<candle_core::Error> for InferError {
    fn from(e: candle_core::Error) -> Self {
        InferError::Candle(Box::new(e))
    }
}

pub type Result<T> = std::result::Result<T, InferError>;
