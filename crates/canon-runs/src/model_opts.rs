//! The model tools' settings (with the `cli` feature also their argument structs, the doc
//! comments being the `--help` text): `canon info`, `tokenize`, `embed` and `merge`, with what
//! they compute and the text they print.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use canon_assets::FetchProgress;
use canon_models::gguf_out::merge_adapter;
use canon_models::peft::read_adapter;
use canon_models::{ModelSpec, inspect};
use serde_json::{Value, json};

use crate::{Context, Result, bail, err};

#[derive(Debug)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[cfg_attr(
    feature = "cli",
    command(after_help = "Examples:
  canon info --model smollm2
  canon info --model minilm --json
  canon info --model ./my-model.gguf
  canon info --model runs/gpt2        # a training run folder")
)]
pub struct InfoArgs {
    /// An alias (smollm2, minilm), a .gguf file, an HF-style folder or a training run folder.
    #[cfg_attr(feature = "cli", arg(long))]
    pub model: String,
    /// Print one JSON object instead of the table.
    #[cfg_attr(feature = "cli", arg(long))]
    pub json: bool,
}

#[derive(Debug)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[cfg_attr(
    feature = "cli",
    command(after_help = "Examples:
  canon tokenize --model smollm2 --text \"Hello, world!\"
  canon tokenize --model minilm --text \"Crème brûlée\" --json")
)]
pub struct TokenizeArgs {
    /// Model: an alias (smollm2, minilm), a .gguf file, or an HF-style folder.
    #[cfg_attr(feature = "cli", arg(long, default_value = "smollm2"))]
    pub model: String,
    /// The text (read from standard input when omitted).
    #[cfg_attr(feature = "cli", arg(long))]
    pub text: Option<String>,
    /// Treat special-token texts such as <|im_start|> as plain text.
    #[cfg_attr(feature = "cli", arg(long))]
    pub no_parse_special: bool,
    /// Print one JSON object: {"ids": [...], "pieces": [...]}.
    #[cfg_attr(feature = "cli", arg(long))]
    pub json: bool,
}

#[derive(Debug)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[cfg_attr(
    feature = "cli",
    command(after_help = "Examples:
  canon embed --model minilm --text \"A man is eating food.\" --text \"A man is riding a horse.\"
  cat sentences.txt | canon embed --model minilm > embeddings.jsonl")
)]
pub struct EmbedArgs {
    /// Embedding model: an alias (minilm) or an HF-style BERT folder; append `:q8_0` (minilm:q8_0)
    /// to run its linear layers on 8-bit weights (faster; cosine to the f32 vectors about 0.998 or more).
    #[cfg_attr(feature = "cli", arg(long, default_value = "minilm"))]
    pub model: String,
    /// A text to embed (repeatable). Without it, each standard-input line is a text (an empty line too).
    #[cfg_attr(feature = "cli", arg(long = "text"))]
    pub text: Vec<String>,
    /// Texts per forward pass (sorted by length so a batch holds similar lengths).
    #[cfg_attr(feature = "cli", arg(long, default_value_t = 32))]
    pub batch_size: usize,
    /// Report the time spent embedding on standard error as one JSON line.
    #[cfg_attr(feature = "cli", arg(long))]
    pub timings: bool,
}

#[derive(Debug)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[cfg_attr(
    feature = "cli",
    command(after_help = "Examples:
  canon merge --model smollm2 --lora my-adapter/ --out smollm2-merged.gguf
  canon generate --model smollm2-merged.gguf --prompt 'Hello'    # same as --model smollm2 --lora my-adapter/")
)]
pub struct MergeArgs {
    /// Base model: an alias (smollm2) or a .gguf file (LLaMA family).
    #[cfg_attr(feature = "cli", arg(long))]
    pub model: String,
    /// Adapter folder in PEFT's layout (adapter_config.json + adapter_model.safetensors).
    #[cfg_attr(feature = "cli", arg(long, value_name = "DIR"))]
    pub lora: PathBuf,
    /// Output .gguf file (written to a temporary file, then renamed).
    #[cfg_attr(feature = "cli", arg(long))]
    pub out: PathBuf,
}

impl InfoArgs {
    /// What the model's headers say (architecture, shape, parameters, weight formats), with its
    /// tokenizer's vocabulary size (or the error loading it).
    pub fn info(&self, progress: &dyn FetchProgress) -> Result<Value> {
        let spec = ModelSpec::parse(&self.model)?
            .resolve(progress)
            .with_context(|| format!("cannot find model '{}'", self.model))?;
        let mut info = match &spec {
            ModelSpec::Gguf(p) => inspect::gguf_info(p)?,
            ModelSpec::HfDir(d) => inspect::folder_info(d)?,
            ModelSpec::Alias(_) => bail!("internal: alias left unresolved"),
        };
        let tokenizer = match canon_models::load::load_tokenizer(&spec, progress) {
            Ok((t, _)) => json!({"vocab_size": t.vocab_size()}),
            Err(e) => json!({"error": e.to_string()}),
        };
        if let Some(obj) = info.as_object_mut() {
            let tok = obj.entry("tokenizer").or_insert_with(|| json!({}));
            if let (Some(t), Some(extra)) = (tok.as_object_mut(), tokenizer.as_object()) {
                for (k, v) in extra {
                    t.entry(k.clone()).or_insert(v.clone());
                }
            }
        }
        Ok(info)
    }

    /// The printed text: pretty JSON with --json, else an indented `key: value` table.
    pub fn text(&self, info: &Value) -> String {
        if self.json {
            return format!(
                "{}\n",
                serde_json::to_string_pretty(info).unwrap_or_default()
            );
        }
        let mut s = String::new();
        table(&mut s, info, "");
        s
    }
}

fn table(s: &mut String, v: &Value, indent: &str) {
    let Some(obj) = v.as_object() else {
        return;
    };
    for (k, v) in obj {
        match v {
            Value::Object(_) => {
                let _ = writeln!(s, "{indent}{k}:");
                table(s, v, &format!("{indent}  "));
            }
            Value::String(x) => {
                let _ = writeln!(s, "{indent}{k}: {x}");
            }
            other => {
                let _ = writeln!(s, "{indent}{k}: {other}");
            }
        }
    }
}

impl TokenizeArgs {
    /// The ids and pieces of `text`: encoders (BERT folders) with [CLS]/[SEP], causal LMs as for
    /// generation.
    pub fn tokenize(
        &self,
        text: &str,
        progress: &dyn FetchProgress,
    ) -> Result<(Vec<u32>, Vec<String>)> {
        let spec = ModelSpec::parse(&self.model)?;
        let (tok, encoder) = canon_models::load::load_tokenizer(&spec, progress)
            .with_context(|| format!("cannot load the tokenizer of '{}'", self.model))?;
        let ids = if encoder {
            tok.encode_with_special(text)
        } else {
            tok.encode(text, !self.no_parse_special)
        }
        .map_err(|e| err!("{e}"))?;
        let pieces = ids
            .iter()
            .map(|&i| tok.id_to_token(i).unwrap_or_default())
            .collect();
        Ok((ids, pieces))
    }

    /// The printed text: `{"ids", "pieces"}` with --json, else one `id  "piece"` line each.
    pub fn text(&self, ids: &[u32], pieces: &[String]) -> String {
        if self.json {
            return format!("{}\n", json!({"ids": ids, "pieces": pieces}));
        }
        let mut s = String::new();
        for (i, p) in ids.iter().zip(pieces) {
            let _ = writeln!(s, "{i:>8}  {p:?}");
        }
        s
    }
}

impl EmbedArgs {
    /// Checks --batch-size.
    pub fn check(&self) -> Result<()> {
        if self.batch_size == 0 {
            bail!("--batch-size must be at least 1, found 0");
        }
        Ok(())
    }
}

impl MergeArgs {
    /// Folds the adapter into the base GGUF and writes --out; gives the line saying what was
    /// merged (modules, rank, scale, size, time).
    pub fn merge(&self, progress: &dyn FetchProgress) -> Result<String> {
        let dir = self
            .out
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if !dir.is_dir() || self.out.is_dir() {
            bail!(
                "--out {}: expected a file name in an existing folder",
                self.out.display()
            );
        }
        let path = match ModelSpec::parse(&self.model)?.resolve(progress)? {
            ModelSpec::Gguf(p) => p,
            other => bail!("--model: merge reads GGUF files, found {other:?}"),
        };
        let start = Instant::now();
        let adapter = read_adapter(&self.lora)?;
        merge_adapter(&path, &adapter, &self.lora, &self.out)?;
        let size = std::fs::metadata(&self.out)?.len();
        Ok(format!(
            "merged {} LoRA modules (rank {}, scale {}) into {}: {:.1} MB in {:.1} s",
            adapter.modules.len(),
            adapter.rank,
            adapter.scale,
            self.out.display(),
            size as f64 / 1e6,
            start.elapsed().as_secs_f64()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_table_and_tokens_read_plainly() {
        let a = InfoArgs {
            model: "m".into(),
            json: false,
        };
        // Keys in alphabetical order, which is also their order with serde_json's preserve_order.
        let v = json!({"arch": "llama", "shape": {"layers": 2}});
        assert_eq!(a.text(&v), "arch: llama\nshape:\n  layers: 2\n");
        let t = TokenizeArgs {
            model: "m".into(),
            text: None,
            no_parse_special: false,
            json: false,
        };
        assert_eq!(t.text(&[7], &["a b".into()]), "       7  \"a b\"\n");
    }
}
