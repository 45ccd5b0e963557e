//! Progress bars on standard error: one constructor and one style helper for every command.
//! indicatif draws nothing when standard error is not a terminal, so only `--quiet` hides a bar
//! explicitly.

use indicatif::{ProgressBar, ProgressStyle};

/// `template` in indicatif's syntax; a bar in brackets (`[{bar`) fills with `=>`.
pub fn style(template: &str) -> ProgressStyle {
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
    let pb = ProgressBar::new(len);
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
