//! Phi-1's data pipeline (Gunasekar et al., 2023, "Textbooks Are All You Need", §2) at CPU scale.
//!
//! The paper filters deduplicated Python code with a classifier trained on a sample that GPT-4
//! labelled for "educational value for a student whose goal is to learn basic coding concepts"
//! (a random forest on embeddings from a pretrained code model), adds synthetic textbook passages
//! and exercises, and decontaminates against HumanEval. Here:
//!
//! - `corpus`: every `.py` file of the Python standard library and site-packages, deduplicated by
//!   SHA-256 of the content, each file's distribution and licence kept in a manifest (from the
//!   `*.dist-info` `RECORD` and `METADATA` files); files are cut into snippets at top-level
//!   definitions.
//! - `quality`: the labels. Documented heuristics stand in for the GPT-4 judge (the rules are in
//!   that module's header); each label records how it was made.
//! - `judge`: an LLM judge instead (any generating model), the label read from the next-token
//!   probabilities of `Yes`/`No`, saved with the judge's name and prompt hash.
//! - `forest`: the paper's random forest (CART trees with Gini, bootstrap samples, √d features
//!   per split), on MiniLM sentence embeddings (deviation: the paper used a code model's).
//! - `classify`: logistic regression on the same embeddings, the choice between the two, held-out
//!   accuracy and ROC-AUC, and the threshold filter that keeps items in order.
//! - `dedup`: exact (normalised-text hash) and near-duplicate (shared 13-gram, or Jaccard of
//!   5-gram shingles) detection against evaluation problems.
//! - `synth`: synthetic textbook passages and exercises from a generating model on rotating
//!   topics (the batched engine), decontaminated and deduplicated; exercises are kept only when
//!   their own asserts pass in the sandbox and fail a do-nothing body (`synth::verify`).
//! - `pipeline`: the stages of `canon data filter` (sample, decontaminate, label, classify, keep)
//!   and the inputs of `canon data compare`.
//! - `exercises`: a held-out exercise set with unit tests: functions of the held-out files whose
//!   docstrings carry doctest examples, in HumanEval's format, kept only when their tests decide.
//! - `experiment`: the same model and token budget trained on unfiltered, filtered and filtered +
//!   synthetic data, compared by held-out loss.

pub mod classify;
pub mod corpus;
pub mod dedup;
pub mod exercises;
pub mod experiment;
pub mod forest;
pub mod judge;
pub mod opts;
pub mod pipeline;
pub mod quality;
pub mod synth;
