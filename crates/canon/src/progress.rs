//! Progress bars on standard error: one constructor, one style helper and one draw target for
//! every command.
//!
//! On a terminal a bar is drawn by indicatif. indicatif draws nothing when standard error is not a
//! terminal, so there each bar prints a plain line instead, such as
//! `eval cot: 40/120 (33%) 2m13s elapsed, ~4m25s left`: when at least 10 % more of the work is
//! done and at least 30 s have passed since the last line (whichever comes later; a bar of unknown
//! length prints on time alone), and once when the work is complete. `CANON_PROGRESS_SECS` sets
//! the 30 s. A line starts with the subcommand's words (`set_command`). `--quiet` hides a bar in
//! both cases. When a line is due and how it reads is `canon_runs::progress_line`.

use std::cell::Cell;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use canon_runs::progress_line::{Gate, counts, plain_template};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle, TermLike};

/// Seconds between two plain lines unless `CANON_PROGRESS_SECS` says otherwise.
const EVERY_SECS: u64 = 30;

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

/// The least time between two plain lines: `CANON_PROGRESS_SECS` (whole seconds) or 30 s.
fn every() -> Duration {
    let secs = std::env::var("CANON_PROGRESS_SECS")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(EVERY_SECS);
    Duration::from_secs(secs)
}

/// Where a bar draws: standard error on a terminal, plain lines on standard error otherwise.
pub fn target() -> ProgressDrawTarget {
    if plain() {
        ProgressDrawTarget::term_like(Box::new(PlainLines))
    } else {
        ProgressDrawTarget::stderr()
    }
}

/// `template` in indicatif's syntax; a bar in brackets (`[{bar`) fills with `=>`. Off a terminal
/// the plain-line style built from the template's label (see the module docs).
pub fn style(template: &str) -> ProgressStyle {
    if plain() {
        return plain_style(template, every());
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

thread_local! {
    /// Set by the plain style's counter when this render is due; the draw target takes it. indicatif
    /// renders a bar and hands the lines to its target in one call on one thread.
    static DUE: Cell<bool> = const { Cell::new(false) };
}

/// The plain-line draw target: prints a rendered line when the style marked it due, and ignores
/// cursor movement and padding.
#[derive(Debug)]
struct PlainLines;

impl TermLike for PlainLines {
    fn width(&self) -> u16 {
        200
    }
    fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn write_line(&self, s: &str) -> std::io::Result<()> {
        self.write_str(s)
    }
    /// indicatif writes a bar's line, then spaces to the width; a carriage return before.
    fn write_str(&self, s: &str) -> std::io::Result<()> {
        if !s.trim().is_empty() && DUE.with(|d| d.replace(false)) {
            eprintln!("{}", s.trim_end());
        }
        Ok(())
    }
    fn clear_line(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The plain-line style for `template`, at most one line per `every` (and per 10 % of the work).
fn plain_style(template: &str, every: Duration) -> ProgressStyle {
    let gate = Arc::new(Mutex::new(Gate::default()));
    let counter = move |s: &ProgressState, w: &mut dyn std::fmt::Write| {
        let due = match gate.lock() {
            Ok(mut g) => g.due(s.pos(), s.len(), s.elapsed(), every),
            Err(_) => false,
        };
        if due {
            DUE.with(|d| d.set(true));
            let _ = w.write_str(&counts(s.pos(), s.len(), s.elapsed(), s.eta()));
        }
    };
    let command = COMMAND.get().map_or("", String::as_str);
    match ProgressStyle::with_template(&plain_template(command, template)) {
        Ok(s) => s.with_key("canon_counts", counter),
        Err(_) => ProgressStyle::with_template("{canon_counts}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .with_key("canon_counts", counter),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plain_template_is_a_valid_style() {
        let t = plain_template("eval rag", "bm25 {bar:30} {pos}");
        assert!(ProgressStyle::with_template(&t).is_ok());
    }
}
