//! The argument structs of the `canon` commands this crate runs (with the `cli` feature they
//! derive clap's `Args`, their doc comments being the `--help` text), with their checks and the
//! text printed from their results.

pub mod cot;
pub mod fewshot;
pub mod toolformer;
