//! Progress bars on standard error: one constructor, one style helper and one draw target for
//! every command.
//!
//! On a terminal a bar is drawn by indicatif. indicatif draws nothing when standard error is not a
//! terminal, so there each bar prints a plain line instead, such as
//! `eval cot: 40/120 (33%) 2m13s elapsed, ~4m25s left`: when at least 10 % more of the work is
//! done and at least 30 s have passed since the last line (whichever comes later; a bar of unknown
//! length prints on time alone), and once when the work is complete. `CANON_PROGRESS_SECS` sets
//! the 30 s. A line starts with the subcommand's words (`set_command`). `--quiet` hides a bar in
//! both cases. When a line is due and how it reads is `canon_runs::progress_line`, the plain
//! style and draw target `canon_runs::progress_draw`.

use std::io::IsTerminal;
use std::sync::OnceLock;

use canon_runs::progress_draw::{interval, plain_style, plain_target};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The subcommand's words (`eval cot`), which start every plain line.
static COMMAND: OnceLock<String> = OnceLock::new();

/// Names the running subcommand (`eval cot`) for the plain lines; the first call wins.
pub fn set_command(words: String) {
    let _ = COMMAND.set(words);
}

/// Whether bars print plain lines (standard error is not a terminal).
fn plain() -> bool {
    !std::io::stderr().is_terminal()
}

/// Where a bar draws: standard error on a terminal, plain lines on standard error otherwise.
pub fn target() -> ProgressDrawTarget {
    if plain() {
        plain_target(|line| eprintln!("{line}"))
    } else {
        ProgressDrawTarget::stderr()
    }
}

/// `template` in indicatif's syntax; a bar in brackets (`[{bar`) fills with `=>`. Off a terminal
/// the plain-line style built from the template's label (see the module docs).
pub fn style(template: &str) -> ProgressStyle {
    if plain() {
        let every = interval(std::env::var("CANON_PROGRESS_SECS").ok().as_deref());
        return plain_style(COMMAND.get().map_or("", String::as_str), template, every);
    }
    match ProgressStyle::with_template(template) {
        Ok(s) if template.contains("[{bar") => s.progress_chars("=> "),
        Ok(s) => s,
        Err(_) => ProgressStyle::default_bar(),
    }
}

/// A bar of `len` steps drawn with `template`, hidden when `quiet`.
pub fn bar(quiet: bool, len: u64, template: &str) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::with_draw_target(Some(len), target());
    pb.set_style(style(template));
    pb
}

/// The retrieval commands' bar: `{what} {bar:30} {pos}/{len} {per_sec} eta {eta}`.
pub fn rate(quiet: bool, len: usize, what: &str) -> ProgressBar {
    let t = format!("{what} {{bar:30}} {{pos}}/{{len}} {{per_sec}} eta {{eta}}");
    bar(quiet, len as u64, &t)
}

/// The agent and evaluation commands' bar: `{what} [{bar:40}] {pos}/{len} ({eta} left)`.
pub fn items(quiet: bool, len: usize, what: &str) -> ProgressBar {
    let t = format!("{what} [{{bar:40}}] {{pos}}/{{len}} ({{eta}} left)");
    bar(quiet, len as u64, &t)
}

/// One [`rate`] bar per stage of a library run, replaced when the stage changes and cleared when
/// the stage's work is done or this value is dropped.
pub struct Stages {
    quiet: bool,
    cur: Option<(&'static str, ProgressBar)>,
}

impl Stages {
    pub fn new(quiet: bool) -> Stages {
        Stages { quiet, cur: None }
    }

    /// `done` of `total` in the stage `label` names.
    pub fn on(&mut self, label: &'static str, done: usize, total: usize) {
        if self.cur.as_ref().is_none_or(|(l, _)| *l != label) {
            if let Some((_, b)) = self.cur.take() {
                b.finish_and_clear();
            }
            self.cur = Some((label, rate(self.quiet, total, label)));
        }
        if let Some((_, b)) = &self.cur {
            b.set_length(total as u64);
            b.set_position(done as u64);
            if done == total {
                b.finish_and_clear();
            }
        }
    }
}

impl Drop for Stages {
    fn drop(&mut self) {
        if let Some((_, b)) = self.cur.take() {
            b.finish_and_clear();
        }
    }
}
