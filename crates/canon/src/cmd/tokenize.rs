//! `canon tokenize`: ids and pieces of a text under a model's tokenizer
//! (`canon_runs::model_opts`).

use anyhow::Context;
pub use canon_runs::model_opts::TokenizeArgs;

use crate::Ctx;

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
    let (ids, pieces) = a.tokenize(&text, ctx.progress())?;
    print!("{}", a.text(&ids, &pieces));
    if !a.json {
        eprintln!("{} tokens", ids.len());
    }
    Ok(())
}
