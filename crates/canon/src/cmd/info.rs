//! `canon info --model M`: what a model file or folder holds, read from its headers (no weights
//! are loaded): architecture and shape, parameter count, weight formats, tokenizer.

use anyhow::{Context, bail};
use canon_models::{ModelSpec, inspect};
use clap::Args;
use serde_json::{Value, json};

use crate::Ctx;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  canon info --model smollm2
  canon info --model minilm --json
  canon info --model ./my-model.gguf
  canon info --model runs/gpt2        # a training run folder")]
pub struct InfoArgs {
    /// An alias (smollm2, minilm), a .gguf file, an HF-style folder or a training run folder.
    #[arg(long)]
    pub model: String,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: InfoArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let spec = ModelSpec::parse(&a.model)?
        .resolve(ctx.progress())
        .with_context(|| format!("cannot find model '{}'", a.model))?;
    let info = match &spec {
        ModelSpec::Gguf(p) => inspect::gguf_info(p)?,
        ModelSpec::HfDir(d) => inspect::folder_info(d)?,
        ModelSpec::Alias(_) => bail!("internal: alias left unresolved"),
    };
    let tokenizer = match canon_models::load::load_tokenizer(&spec, ctx.progress()) {
        Ok((t, _)) => json!({"vocab_size": t.vocab_size()}),
        Err(e) => json!({"error": e.to_string()}),
    };
    let mut info = info;
    if let Some(obj) = info.as_object_mut() {
        let tok = obj.entry("tokenizer").or_insert_with(|| json!({}));
        if let (Some(t), Some(extra)) = (tok.as_object_mut(), tokenizer.as_object()) {
            for (k, v) in extra {
                t.entry(k.clone()).or_insert(v.clone());
            }
        }
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        print_table(&info, "");
    }
    Ok(())
}

fn print_table(v: &Value, indent: &str) {
    let Some(obj) = v.as_object() else {
        return;
    };
    for (k, v) in obj {
        match v {
            Value::Object(_) => {
                println!("{indent}{k}:");
                print_table(v, &format!("{indent}  "));
            }
            Value::String(s) => println!("{indent}{k}: {s}"),
            other => println!("{indent}{k}: {other}"),
        }
    }
}
