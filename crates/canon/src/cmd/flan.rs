//! `canon flan build`: a FLAN instruction mixture (paper 15) from data on this machine — Python
//! standard-library docstrings, manual pages in several languages, glibc's calendar names — in four
//! task clusters, one of which is held out: the training mixture (`{"prompt", "completion"}` lines
//! for `canon finetune`) and the held-out cluster's classification examples with their options (for
//! `canon eval zero-shot`). The settings and the build are `canon_runs::flan_opts`.

pub use canon_runs::flan_opts::{FlanArgs, FlanCommand};

use crate::Ctx;

pub fn run(a: FlanArgs, ctx: &Ctx) -> anyhow::Result<()> {
    match a.command {
        FlanCommand::Build(b) => {
            let say = |s: String| eprintln!("canon: {s}");
            println!(
                "{}",
                b.build((!ctx.quiet).then_some(&say as &dyn Fn(String)))?
            );
            Ok(())
        }
    }
}
