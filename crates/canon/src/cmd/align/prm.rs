//! `canon align prm` (process vs outcome reward models, best-of-N, `canon_align::prm`) and
//! `canon align prm-eval` (PRM800K's protocol over a scored-samples file).

use anyhow::Context;
use canon_align::opts::{PrmArgs, PrmEvalArgs, prm_eval_table};
use canon_align::prm_eval;
use canon_train::StepReport;
use indicatif::ProgressBar;

pub(super) fn run(a: PrmArgs, pb: &ProgressBar) -> anyhow::Result<()> {
    let o = &a.opts;
    o.check().map_err(anyhow::Error::msg)?;
    let mut cb = |stage: &str, r: &StepReport| {
        if pb.message() != stage {
            pb.set_message(stage.to_string());
            let gen_stage = stage == "generator";
            pb.set_length(if gen_stage {
                o.gen_steps
            } else {
                o.verifier_steps
            });
        }
        pb.set_position(r.step);
        pb.set_prefix(format!("loss {:.4}", r.loss));
    };
    let c = &a.common;
    let (r, _) =
        canon_align::prm::run(&c.dir, c.seed, o, &mut cb).context("PRM experiment failed")?;
    pb.finish_and_clear();
    print!("{r}");
    println!("  plot: {}", c.dir.join("best_of_n.png").display());
    Ok(())
}

/// `canon align prm-eval`: PRM800K's best-of-N evaluation over a scored-samples file
/// (`canon_align::prm_eval`).
pub(super) fn eval(a: PrmEvalArgs) -> anyhow::Result<()> {
    let samples = prm_eval::read_jsonl(&a.samples)?;
    let p = a.protocol(&samples).map_err(anyhow::Error::msg)?;
    let methods = a.methods();
    let t = "{msg} [{bar:30}] {pos}/{len} trials ({eta})";
    let pb = crate::progress::bar(false, (a.trials * methods.len()) as u64, t);
    let mut curves = Vec::new();
    for (k, &m) in methods.iter().enumerate() {
        pb.set_message(m.key());
        let done = k * a.trials;
        let c = prm_eval::evaluate(&samples, m, &p, &mut |t| pb.set_position((done + t) as u64))?;
        curves.push(c);
    }
    pb.finish_and_clear();
    println!(
        "{} samples, {} problems, {} slots each, {} trials per N (seed {})",
        samples.len(),
        curves[0].problems,
        p.total,
        a.trials,
        a.seed
    );
    print!("{}", prm_eval_table(&p.ns, &curves));
    let png = a.out.with_extension("png");
    prm_eval::write_outputs(&curves, &a.out, &png)?;
    println!("curves: {}\nplot: {}", a.out.display(), png.display());
    Ok(())
}
