//! `canon eval zero-shot`: rank classification as FLAN scores classification tasks (paper 15):
//! every option is scored by the log-likelihood of its tokens after the prompt, and the best one is
//! the prediction. Records are JSON lines `{"prompt", "options": [...], "answer"}` (what `canon flan
//! build --eval-out` writes). The prompt runs once; each option continues its KV cache.

use canon_nn::ops::{log_softmax, log_softmax_last};
use std::path::PathBuf;

use anyhow::bail;
use candle_core::{Device, Tensor};
use canon_models::{Cache, CausalLm, Positions};
use canon_train::instruct::rank_classify;
use clap::Args;
use serde_json::{Value, json};

use crate::{Ctx, model_gen};

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  canon flan build --out mix.jsonl --eval-out heldout.jsonl
  canon --f32 eval zero-shot --model smollm2 --data heldout.jsonl
  canon --f32 --lora runs/flan eval zero-shot --model smollm2 --data heldout.jsonl --json")]
pub struct ZeroShotArgs {
    /// Model: an alias (smollm2), a .gguf file or an HF-style folder (with --lora: plus adapter).
    #[arg(long, default_value = "smollm2")]
    pub model: String,
    /// Records {"prompt", "options", "answer"}, one per line.
    #[arg(long, value_name = "FILE.jsonl")]
    pub data: PathBuf,
    /// Only the first N records.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

struct EvalRec {
    prompt: String,
    options: Vec<String>,
    answer: usize,
}

fn read(path: &std::path::Path) -> anyhow::Result<Vec<EvalRec>> {
    let mut out = Vec::new();
    for item in canon_fs::lines::lines(path)? {
        let (n, line) = item?;
        if line.trim().is_empty() {
            continue;
        }
        let at = |m: &str| anyhow::anyhow!("{}:{n}: {m}", path.display());
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
        out.push(EvalRec {
            prompt,
            options,
            answer,
        });
    }
    if out.is_empty() {
        bail!("{}: no records", path.display());
    }
    Ok(out)
}

/// Per option, the log-probabilities of its tokens after `prompt`.
pub fn option_logprobs(
    model: &dyn CausalLm,
    prompt: &[u32],
    options: &[Vec<u32>],
) -> anyhow::Result<Vec<Vec<f64>>> {
    let ids =
        |v: &[u32]| -> anyhow::Result<Tensor> { Ok(Tensor::new(v, &Device::Cpu)?.unsqueeze(0)?) };
    let mut cache: Cache = model.new_cache();
    let last = model.forward(&ids(prompt)?, &mut cache, Positions::Last)?;
    let first = log_softmax(&last.flatten_all()?.to_vec1::<f32>()?);
    let n = prompt.len();
    let mut out = Vec::with_capacity(options.len());
    for o in options {
        if o.is_empty() {
            bail!("an option tokenizes to no token");
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

pub fn run(a: ZeroShotArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let mut recs = read(&a.data)?;
    if let Some(l) = a.limit {
        recs.truncate(l);
    }
    let lm = model_gen::load_lm(&a.model, ctx)?;
    let tok = &lm.tokenizer;
    let plain = |s: &str| -> anyhow::Result<Vec<u32>> {
        let mut v = tok.encode(s, false)?;
        if tok.add_bos && tok.bos_id.is_some() && v.first() == tok.bos_id.as_ref() {
            v.remove(0);
        }
        Ok(v)
    };
    let (mut right, mut right_norm, mut chance) = (0usize, 0usize, 0.0);
    let start = std::time::Instant::now();
    for (i, r) in recs.iter().enumerate() {
        let p = tok.encode(&r.prompt, false)?;
        let opts: Vec<Vec<u32>> = r
            .options
            .iter()
            .map(|o| plain(o))
            .collect::<anyhow::Result<_>>()?;
        if p.len() + opts.iter().map(Vec::len).max().unwrap_or(0) > lm.model.max_seq_len() {
            bail!(
                "{}: record {} is longer than the model's context",
                a.data.display(),
                i + 1
            );
        }
        let lps = option_logprobs(lm.model.as_ref(), &p, &opts)?;
        right += usize::from(rank_classify(&lps, false) == r.answer);
        right_norm += usize::from(rank_classify(&lps, true) == r.answer);
        chance += 1.0 / r.options.len() as f64;
        if !ctx.quiet && (i + 1) % 25 == 0 {
            eprintln!(
                "canon: {}/{} records, accuracy so far {:.1} %",
                i + 1,
                recs.len(),
                100.0 * right as f64 / (i + 1) as f64
            );
        }
    }
    let n = recs.len() as f64;
    let v = json!({
        "records": recs.len(),
        "accuracy": right as f64 / n,
        "accuracy_length_normalized": right_norm as f64 / n,
        "chance": chance / n,
        "seconds": start.elapsed().as_secs_f64(),
    });
    if a.json {
        println!("{v}");
    } else {
        println!(
            "zero-shot rank classification on {} records: accuracy {:.1} % (length-normalized {:.1} %), chance {:.1} %",
            recs.len(),
            100.0 * right as f64 / n,
            100.0 * right_norm as f64 / n,
            100.0 * chance / n
        );
    }
    Ok(())
}
