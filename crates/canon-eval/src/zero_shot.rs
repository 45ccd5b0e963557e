//! Zero-shot rank classification as FLAN scores classification tasks (paper 15), the library half
//! of `canon eval zero-shot`: its settings (with the `cli` feature also its argument struct, the
//! doc comments being the `--help` text), the records `canon flan build --eval-out` writes, every
//! option's token log-probabilities after the prompt (the prompt runs once; each option continues
//! its KV cache), and the summary printed.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use canon_models::{Cache, CausalLm, Positions};
use canon_nn::ops::{log_softmax, log_softmax_last};
use serde_json::{Value, json};

use crate::{EvalError, Result};

#[derive(Debug, Clone)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[cfg_attr(
    feature = "cli",
    command(after_help = "Examples:
  canon flan build --out mix.jsonl --eval-out heldout.jsonl
  canon --f32 eval zero-shot --model smollm2 --data heldout.jsonl
  canon --f32 --lora runs/flan eval zero-shot --model smollm2 --data heldout.jsonl --json")
)]
pub struct ZeroShotArgs {
    /// Model: an alias (smollm2), a .gguf file, an HF-style folder or a `canon train` run folder (with --lora: plus adapter).
    #[cfg_attr(feature = "cli", arg(long, default_value = "smollm2"))]
    pub model: String,
    /// Records {"prompt", "options", "answer"}, one per line.
    #[cfg_attr(feature = "cli", arg(long, value_name = "FILE.jsonl"))]
    pub data: PathBuf,
    /// Only the first N records.
    #[cfg_attr(feature = "cli", arg(long))]
    pub limit: Option<usize>,
    /// Print one JSON object.
    #[cfg_attr(feature = "cli", arg(long))]
    pub json: bool,
}

/// One record: a prompt, its options and the index of the right one.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub prompt: String,
    pub options: Vec<String>,
    pub answer: usize,
}

/// Reads JSON lines `{"prompt", "options": [...], "answer"}` (the answer an option or its index);
/// a bad line is an error naming the file and the line.
pub fn read_records(path: &Path) -> Result<Vec<Record>> {
    let mut out = Vec::new();
    for item in canon_fs::lines::lines(path)? {
        let (n, line) = item?;
        if line.trim().is_empty() {
            continue;
        }
        let at = |m: &str| EvalError::Line {
            path: path.to_path_buf(),
            line: n,
            message: m.to_string(),
        };
        let v: Value =
            serde_json::from_str(&line).map_err(|e| at(&format!("malformed JSON: {e}")))?;
        let prompt = v["prompt"]
            .as_str()
            .ok_or_else(|| at("no string \"prompt\""))?
            .to_string();
        let options: Vec<String> = v["options"]
            .as_array()
            .ok_or_else(|| at("no \"options\" array"))?
            .iter()
            .map(|o| o.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or_else(|| at("\"options\" must hold strings"))?;
        if options.len() < 2 {
            return Err(at("\"options\" needs at least two entries"));
        }
        let answer = match &v["answer"] {
            Value::String(s) => options
                .iter()
                .position(|o| o == s)
                .ok_or_else(|| at(&format!("the answer '{s}' is not one of the options")))?,
            Value::Number(n) => {
                let k = n
                    .as_u64()
                    .ok_or_else(|| at("\"answer\" index must be ≥ 0"))?
                    as usize;
                if k >= options.len() {
                    return Err(at("\"answer\" index is beyond the options"));
                }
                k
            }
            _ => return Err(at("no \"answer\" (an option or its index)")),
        };
        out.push(Record {
            prompt,
            options,
            answer,
        });
    }
    if out.is_empty() {
        return Err(EvalError::Invalid(format!(
            "{}: no records",
            path.display()
        )));
    }
    Ok(out)
}

/// Per option, the log-probabilities of its tokens after `prompt`.
pub fn option_logprobs(
    model: &dyn CausalLm,
    prompt: &[u32],
    options: &[Vec<u32>],
) -> Result<Vec<Vec<f64>>> {
    let ids = |v: &[u32]| -> Result<Tensor> { Ok(Tensor::new(v, &Device::Cpu)?.unsqueeze(0)?) };
    let mut cache: Cache = model.new_cache();
    let last = model.forward(&ids(prompt)?, &mut cache, Positions::Last)?;
    let first = log_softmax(&last.flatten_all()?.to_vec1::<f32>()?);
    let n = prompt.len();
    let mut out = Vec::with_capacity(options.len());
    for o in options {
        if o.is_empty() {
            return Err(EvalError::Invalid(
                "an option tokenizes to no token".to_string(),
            ));
        }
        let mut lp = vec![first[o[0] as usize] as f64];
        if o.len() > 1 {
            let logits = model.forward(&ids(&o[..o.len() - 1])?, &mut cache, Positions::All)?;
            let rows = logits.squeeze(0)?; // [len − 1, V]
            let lsm = log_softmax_last(&rows)?.to_vec2::<f32>()?;
            for (k, &tok) in o[1..].iter().enumerate() {
                lp.push(lsm[k][tok as usize] as f64);
            }
            for l in cache.layers.iter_mut() {
                l.truncate(n)?;
            }
        }
        out.push(lp);
    }
    Ok(out)
}

/// Accuracy counts over the records scored.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Tally {
    pub records: usize,
    pub right: usize,
    /// Right by the length-normalized score.
    pub right_norm: usize,
    /// Sum over records of 1 / options.
    pub chance: f64,
}

impl Tally {
    /// The summary as `--json` prints it.
    pub fn to_json(&self, seconds: f64) -> Value {
        let n = self.records as f64;
        json!({
            "records": self.records,
            "accuracy": self.right as f64 / n,
            "accuracy_length_normalized": self.right_norm as f64 / n,
            "chance": self.chance / n,
            "seconds": seconds,
        })
    }

    /// The summary line.
    pub fn line(&self) -> String {
        let n = self.records as f64;
        format!(
            "zero-shot rank classification on {} records: accuracy {:.1} % (length-normalized {:.1} %), chance {:.1} %",
            self.records,
            100.0 * self.right as f64 / n,
            100.0 * self.right_norm as f64 / n,
            100.0 * self.chance / n
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_name_their_line_and_the_summary_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.jsonl");
        std::fs::write(
            &p,
            "{\"prompt\": \"p\", \"options\": [\"a\", \"b\"], \"answer\": \"b\"}\n\n{\"prompt\": \"q\", \"options\": [\"a\"], \"answer\": 0}\n",
        )
        .unwrap();
        let e = read_records(&p).unwrap_err().to_string();
        assert!(
            e.ends_with("r.jsonl:3: \"options\" needs at least two entries"),
            "{e}"
        );
        std::fs::write(
            &p,
            "{\"prompt\": \"p\", \"options\": [\"a\", \"b\"], \"answer\": 1}\n",
        )
        .unwrap();
        assert_eq!(read_records(&p).unwrap()[0].answer, 1);
        let t = Tally {
            records: 4,
            right: 2,
            right_norm: 3,
            chance: 2.0,
        };
        assert_eq!(
            t.line(),
            "zero-shot rank classification on 4 records: accuracy 50.0 % (length-normalized 75.0 %), chance 50.0 %"
        );
        assert_eq!(t.to_json(1.0)["accuracy_length_normalized"], 0.75);
    }
}
