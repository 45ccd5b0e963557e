//! `canon eval zero-shot`: rank classification as FLAN scores classification tasks (paper 15):
//! every option is scored by the log-likelihood of its tokens after the prompt, and the best one is
//! the prediction. The settings, the records and the scoring are `canon_eval::zero_shot`.

use anyhow::bail;
use canon_eval::zero_shot::{Tally, ZeroShotArgs, option_logprobs, read_records};
use canon_train::instruct::rank_classify;

use crate::{Ctx, model_gen};

pub fn run(a: ZeroShotArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let mut recs = read_records(&a.data)?;
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
    let mut t = Tally {
        records: recs.len(),
        ..Tally::default()
    };
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
        t.right += usize::from(rank_classify(&lps, false) == r.answer);
        t.right_norm += usize::from(rank_classify(&lps, true) == r.answer);
        t.chance += 1.0 / r.options.len() as f64;
        if !ctx.quiet && (i + 1) % 25 == 0 {
            eprintln!(
                "canon: {}/{} records, accuracy so far {:.1} %",
                i + 1,
                recs.len(),
                100.0 * t.right as f64 / (i + 1) as f64
            );
        }
    }
    if a.json {
        println!("{}", t.to_json(start.elapsed().as_secs_f64()));
    } else {
        println!("{}", t.line());
    }
    Ok(())
}
