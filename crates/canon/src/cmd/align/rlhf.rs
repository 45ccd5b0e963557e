//! `canon align sft`, `rm`, `dpo` and `ppo`: the RLHF stages (`canon_align::pipeline`).

use anyhow::Context;
use canon_align::opts::{DpoArgs, PpoArgs, RmArgs, SftArgs};
use canon_align::pipeline;
use indicatif::ProgressBar;

use super::step_cb;

pub(super) fn sft(a: SftArgs, pb: &ProgressBar) -> anyhow::Result<()> {
    let (o, c) = (&a.opts, &a.common);
    o.check().map_err(anyhow::Error::msg)?;
    let r =
        pipeline::sft(&c.dir, c.seed, o, &mut step_cb(pb, "sft", o.steps)).context("SFT failed")?;
    pb.finish_and_clear();
    print!("{r}");
    Ok(())
}

pub(super) fn rm(a: RmArgs, pb: &ProgressBar) -> anyhow::Result<()> {
    let (o, c) = (&a.opts, &a.common);
    o.check().map_err(anyhow::Error::msg)?;
    let r = pipeline::rm(&c.dir, c.seed, o, &mut step_cb(pb, "rm", 0))
        .context("reward model failed")?;
    pb.finish_and_clear();
    print!("{r}");
    Ok(())
}

pub(super) fn dpo(a: DpoArgs, pb: &ProgressBar) -> anyhow::Result<()> {
    let (o, c) = (&a.opts, &a.common);
    o.check().map_err(anyhow::Error::msg)?;
    let r =
        pipeline::dpo(&c.dir, c.seed, o, &mut step_cb(pb, "dpo", o.steps)).context("DPO failed")?;
    pb.finish_and_clear();
    print!("{r}");
    Ok(())
}

pub(super) fn ppo(a: PpoArgs, pb: &ProgressBar) -> anyhow::Result<()> {
    let o = a.opts().map_err(anyhow::Error::msg)?;
    let steps = a.rollouts * o.cfg.steps_per_rollout();
    let c = &a.common;
    let r =
        pipeline::ppo(&c.dir, c.seed, &o, &mut step_cb(pb, "ppo", steps)).context("PPO failed")?;
    pb.finish_and_clear();
    print!("{r}");
    let run = c.dir.join(&a.name);
    println!("  plots: {}/ppo.png and ppo_stats.png", run.display());
    Ok(())
}
