//! `canon toolformer`: the Toolformer pipeline (paper 24), one rerunnable stage per subcommand over
//! a work folder.

use std::path::Path;

use canon_agent::opts::toolformer::{
    CompareArgs, EvalArgs, SampleArgs, compare_json, compare_table, eval_json,
};
pub use canon_agent::opts::toolformer::{Stage, ToolformerArgs};
use canon_agent::toolformer_work as work;

use crate::{Ctx, model_gen};

pub fn run(a: ToolformerArgs, ctx: &Ctx) -> anyhow::Result<()> {
    match a.stage {
        Stage::Data(d) => data(&d.work, &d.status, d.n, d.calendar, d.seed),
        Stage::Sample(s) => sample(&s, ctx),
        Stage::Execute(w) => execute(&w.work),
        Stage::Filter(f) => filter(&f.work, &f.model, f.tau_f, ctx),
        Stage::Eval(e) => eval(&e, ctx),
        Stage::Compare(c) => compare(&c, ctx),
        Stage::Run(r) => {
            data(&r.sample.work, &r.status, r.n, r.calendar, r.sample.seed)?;
            sample(&r.sample, ctx)?;
            execute(&r.sample.work)?;
            filter(&r.sample.work, &r.sample.model, r.tau_f, ctx)
        }
    }
}

fn data(work: &Path, status: &Path, n: usize, calendar: usize, seed: u64) -> anyhow::Result<()> {
    let (n, test) = work::write_texts(work, status, n, calendar, seed)?;
    eprintln!(
        "canon: {n} texts ({} train, {test} test) in {}",
        n - test,
        work.join("texts.jsonl").display()
    );
    Ok(())
}

/// A progress bar driven by `(done, total)` reports.
fn steps<'a>(ctx: &'a Ctx, what: &'a str) -> impl FnMut(usize, usize) + 'a {
    let mut pb: Option<indicatif::ProgressBar> = None;
    move |done, total| {
        let b = pb.get_or_insert_with(|| crate::progress::items(ctx.quiet, total, what));
        b.set_position(done as u64);
        if done == total {
            b.finish_and_clear();
        }
    }
}

fn sample(a: &SampleArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let lm = model_gen::load_lm(&a.model, ctx)?;
    let (mut texts, mut calls) = (steps(ctx, "positions"), steps(ctx, "calls"));
    let counts = work::sample_stage(&a.work, lm, &a.opts(), &mut texts, &mut calls)?;
    eprintln!(
        "canon: {} texts, {} positions, {} distinct sampled calls, {} parsed",
        counts.texts, counts.positions, counts.sampled, counts.parsed
    );
    Ok(())
}

fn execute(work: &Path) -> anyhow::Result<()> {
    let (executed, calls) = work::execute_calls(work)?;
    eprintln!("canon: {executed} of {calls} calls executed");
    Ok(())
}

fn filter(work: &Path, model: &str, tau_f: f64, ctx: &Ctx) -> anyhow::Result<()> {
    let texts = work::load_texts(work)?;
    let cands = work::load_cands(work)?;
    work::check_candidates(&texts, &cands)?;
    let lm = model_gen::load_lm(model, ctx)?;
    let summary = work::filter_calls(work, &texts, cands, &lm, tau_f)?;
    println!("{summary}");
    Ok(())
}

fn eval(a: &EvalArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let lm = model_gen::load_lm(&a.model, ctx)?;
    let (rule, out) = a.rule();
    let mut on = steps(ctx, "eval");
    let s = work::eval_stage(&a.work, &lm, a.limit, rule, a.max_tokens, out, &mut on)?;
    println!("{}", eval_json(&lm.name, ctx.lora.as_deref(), rule, &s));
    Ok(())
}

fn compare(a: &CompareArgs, ctx: &Ctx) -> anyhow::Result<()> {
    let mut base_loader = ctx.loader();
    base_loader.lora = None;
    let base = base_loader.lm(&a.model)?;
    let mut tuned_loader = ctx.loader();
    tuned_loader.lora = Some(a.adapter.clone());
    let tuned = tuned_loader.lm(&a.model)?;
    let mut table = Vec::new();
    for (name, adapter, rule, out) in a.rows() {
        let lm = if adapter { &tuned } else { &base };
        let mut on = steps(ctx, name);
        let s = work::eval_stage(&a.work, lm, a.limit, rule, a.max_tokens, out, &mut on)?;
        table.push((name, s));
    }
    print!("{}", compare_table(&table));
    let path = a.work.join("compare.json");
    canon_fs::write_atomic(&path, compare_json(&table).as_bytes())?;
    eprintln!("canon: rows in {}", path.display());
    Ok(())
}
