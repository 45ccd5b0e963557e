//! `canon eval`'s command table (with the `cli` feature it derives clap's `Subcommand`, the doc
//! comments being the `--help` text): one variant per evaluation, each holding the settings of
//! the library that runs it.

#[derive(Debug)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct EvalArgs {
    #[cfg_attr(feature = "cli", command(subcommand))]
    pub command: EvalCommand,
}

#[derive(Debug)]
#[cfg_attr(feature = "cli", derive(clap::Subcommand))]
pub enum EvalCommand {
    /// HumanEval: functional correctness of generated code, pass@k with the unbiased estimator.
    Humaneval(canon_eval::opts::HumanevalArgs),
    /// Perplexity of a model on a text file, with a sliding window over long texts.
    Perplexity(canon_eval::opts::PerplexityArgs),
    /// Zero-shot rank classification over options (FLAN), e.g. on `canon flan build --eval-out`.
    ZeroShot(canon_eval::zero_shot::ZeroShotArgs),
    /// In-context learning as GPT-3 measured it: K demonstrations, then the test item (paper 10).
    Fewshot(canon_agent::opts::fewshot::FewShotArgs),
    /// Retrieval and answers over a question file: recall@k, MRR, exact match, citations (RAG).
    Rag(canon_rag::opts::EvalRagArgs),
    /// Chain-of-thought prompting and self-consistency (majority vote over sampled rationales).
    Cot(canon_agent::opts::cot::CotArgs),
}
