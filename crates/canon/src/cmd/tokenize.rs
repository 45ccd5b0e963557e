//! `canon tokenize`: ids and pieces of a text under a model's tokenizer.

use anyhow::Context;
use clap::Args;
use serde_json::json;

use crate::Ctx;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  canon tokenize --model smollm2 --text \"Hello, world!\"
  canon tokenize --model minilm --text \"Crème brûlée\" --json")]
pub struct TokenizeArgs {
    /// Model: an alias (smollm2, minilm), a .gguf file, or an HF-style folder.
    #[arg(long, default_value = "smollm2")]
    pub model: String,
    /// The text (read from standard input when omitted).
    #[arg(long)]
    pub text: Option<String>,
    /// Treat special-token texts such as <|im_start|> as plain text.
    #[arg(long)]
    pub no_parse_special: bool,
    /// Print one JSON object: {"ids": [...], "pieces": [...]}.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: TokenizeArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let text = match &a.text {
        Some(t) => t.clone(),
        None => {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                .context("cannot read standard input")?;
            s
        }
    };
    let spec = canon_models::ModelSpec::parse(&a.model)?;
    let (tok, encoder) = canon_models::load::load_tokenizer(&spec, ctx.progress())
        .with_context(|| format!("cannot load the tokenizer of '{}'", a.model))?;
    // Encoders (BERT folders) tokenize with [CLS]/[SEP]; causal LMs as for generation.
    let ids = if encoder {
        tok.encode_with_special(&text)?
    } else {
        tok.encode(&text, !a.no_parse_special)?
    };
    let pieces: Vec<String> = ids
        .iter()
        .map(|&i| tok.id_to_token(i).unwrap_or_default())
        .collect();
    if a.json {
        println!("{}", json!({"ids": ids, "pieces": pieces}));
    } else {
        for (i, p) in ids.iter().zip(&pieces) {
            println!("{i:>8}  {p:?}");
        }
        eprintln!("{} tokens", ids.len());
    }
    Ok(())
}
