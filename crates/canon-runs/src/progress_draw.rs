//! The plain progress lines drawn through indicatif (with the `cli` feature): a style that renders
//! a bar as [`progress_line`](crate::progress_line)'s line when one is due, and a draw target that
//! hands the due lines to a sink (the binary prints them on standard error). Nothing here prints.

use std::cell::Cell;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{ProgressDrawTarget, ProgressState, ProgressStyle, TermLike};

use crate::progress_line::{Gate, counts, plain_template};

/// Seconds between two plain lines unless set otherwise.
pub const EVERY_SECS: u64 = 30;

/// The least time between two plain lines: `value` (whole seconds, from `CANON_PROGRESS_SECS`)
/// or [`EVERY_SECS`].
pub fn interval(value: Option<&str>) -> Duration {
    let secs = value.and_then(|s| s.trim().parse::<u64>().ok());
    Duration::from_secs(secs.unwrap_or(EVERY_SECS))
}

thread_local! {
    /// Set by the plain style's counter when this render is due; the draw target takes it. indicatif
    /// renders a bar and hands the lines to its target in one call on one thread.
    static DUE: Cell<bool> = const { Cell::new(false) };
}

/// The plain-line draw target: hands a rendered line to `sink` when the style marked it due, and
/// ignores cursor movement and padding.
#[derive(Debug)]
struct PlainLines {
    sink: fn(&str),
}

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
            (self.sink)(s.trim_end());
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

/// The draw target of plain lines: each due line goes to `sink`.
pub fn plain_target(sink: fn(&str)) -> ProgressDrawTarget {
    ProgressDrawTarget::term_like(Box::new(PlainLines { sink }))
}

/// The plain-line style of the subcommand `command`'s bar `template`: at most one line per
/// `every` (and per 10 % of the work).
pub fn plain_style(command: &str, template: &str, every: Duration) -> ProgressStyle {
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
    fn the_plain_template_is_a_valid_style_and_the_interval_defaults() {
        let t = plain_template("eval rag", "bm25 {bar:30} {pos}");
        assert!(ProgressStyle::with_template(&t).is_ok());
        assert_eq!(interval(None), Duration::from_secs(30));
        assert_eq!(interval(Some(" 5")), Duration::from_secs(5));
        assert_eq!(interval(Some("x")), Duration::from_secs(30));
    }
}
