//! Plain progress lines, for output that is not a terminal: when a line is due (at least 10 %
//! more of the work and a least interval since the last one, or the end once) and how it reads
//! (`eval cot: 40/120 (33%) 2m13s elapsed, ~4m25s left`). The `canon` binary draws them; nothing
//! here prints.

use std::fmt::Write as _;
use std::time::Duration;

/// Percentage points of the work between two plain lines.
pub const EVERY_PCT: u64 = 10;

/// When the last plain line was printed.
#[derive(Debug, Default)]
pub struct Gate {
    /// Elapsed time at the last line.
    at: Duration,
    /// Percentage done at the last line.
    pct: u64,
    /// Whether the line for the completed work was printed.
    ended: bool,
}

impl Gate {
    /// Whether a line is due at `pos` of `len` (`None` or 0: unknown) after `elapsed`, with at
    /// least `every` between lines; records the line when it is.
    pub fn due(&mut self, pos: u64, len: Option<u64>, elapsed: Duration, every: Duration) -> bool {
        let len = len.filter(|&l| l > 0);
        if let Some(l) = len
            && pos >= l
        {
            let first = !self.ended;
            self.ended = true;
            return first;
        }
        if elapsed < self.at + every {
            return false;
        }
        if let Some(l) = len {
            let pct = pos * 100 / l;
            if pct < self.pct + EVERY_PCT {
                return false;
            }
            self.pct = pct;
        }
        self.at = elapsed;
        true
    }
}

/// `2m13s`, `45s`, `1h07m`.
pub fn hms(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s / 60 % 60),
    }
}

/// The counts part of a plain line: `40/120 (33%) 2m13s elapsed, ~4m25s left`, `40 done, 5s
/// elapsed` when the length is unknown.
pub fn counts(pos: u64, len: Option<u64>, elapsed: Duration, eta: Duration) -> String {
    let mut s = String::new();
    match len.filter(|&l| l > 0) {
        Some(l) => {
            let _ = write!(s, "{pos}/{l} ({}%) {} elapsed", pos * 100 / l, hms(elapsed));
            if pos < l && !eta.is_zero() {
                let _ = write!(s, ", ~{} left", hms(eta));
            }
        }
        None => {
            let _ = write!(s, "{pos} done, {} elapsed", hms(elapsed));
        }
    }
    s
}

/// The plain line's template built from a bar `template` of the subcommand `command`: the
/// command and the text before the bar (or before `{pos}`) as the label, then `{canon_counts}`,
/// then any `{msg}` or `{prefix}` the label lacks.
pub fn plain_template(command: &str, template: &str) -> String {
    let cut = ["{bar", "{wide_bar", "{spinner", "{pos"]
        .iter()
        .filter_map(|k| template.find(k))
        .min()
        .unwrap_or(template.len());
    let own = unpad(template[..cut].trim_end().trim_end_matches('[').trim());
    let label = [command, own.as_str()]
        .iter()
        .filter(|s| !s.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(" ");
    let mut t = if label.is_empty() {
        "{canon_counts}".to_string()
    } else {
        format!("{label}: {{canon_counts}}")
    };
    for key in ["msg", "prefix"] {
        let open = format!("{{{key}");
        if template[cut..].contains(&open) && !label.contains(&open) {
            let _ = write!(t, " {{{key}}}");
        }
    }
    t
}

/// `{msg:>12}` → `{msg}`: a plain line needs no padding.
pub fn unpad(label: &str) -> String {
    let mut out = String::new();
    let mut rest = label;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let Some(j) = rest[i..].find('}') else {
            break;
        };
        let inner = &rest[i + 1..i + j];
        let key = inner.split(':').next().unwrap_or(inner);
        let _ = write!(out, "{{{key}}}");
        rest = &rest[i + j + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_line_needs_both_ten_percent_and_the_interval_and_the_end_prints_once() {
        let mut g = Gate::default();
        let e = 30 * S;
        assert!(!g.due(5, Some(100), 40 * S, e), "5 % is not enough");
        assert!(!g.due(15, Some(100), 20 * S, e), "20 s is not enough");
        assert!(g.due(15, Some(100), 31 * S, e));
        assert!(
            !g.due(24, Some(100), 90 * S, e),
            "9 points since the last line"
        );
        assert!(!g.due(40, Some(100), 50 * S, e), "19 s since the last line");
        assert!(g.due(40, Some(100), 61 * S, e));
        assert!(g.due(100, Some(100), 62 * S, e), "the end prints at once");
        assert!(!g.due(100, Some(100), 200 * S, e), "and once");
    }

    #[test]
    fn unknown_length_prints_on_time_alone() {
        let mut g = Gate::default();
        assert!(!g.due(3, None, 10 * S, 30 * S));
        assert!(g.due(3, Some(0), 30 * S, 30 * S));
        assert!(!g.due(9, None, 59 * S, 30 * S));
        assert!(g.due(9, None, 60 * S, 30 * S));
    }

    #[test]
    fn counts_and_durations_read_plainly() {
        assert_eq!(
            counts(40, Some(120), 133 * S, 265 * S),
            "40/120 (33%) 2m13s elapsed, ~4m25s left"
        );
        assert_eq!(
            counts(120, Some(120), 398 * S, S),
            "120/120 (100%) 6m38s elapsed"
        );
        assert_eq!(counts(7, None, 5 * S, S), "7 done, 5s elapsed");
        assert_eq!(hms(4020 * S), "1h07m");
    }

    #[test]
    fn the_plain_template_keeps_the_command_the_label_and_the_message() {
        let t = "{msg:>12} [{bar:40}] {pos}/{len} ({per_sec}, {eta} left) {prefix}";
        assert_eq!(
            plain_template("align rlhf", t),
            "align rlhf {msg}: {canon_counts} {prefix}"
        );
        let t = "{bar:30} {pos}/{len} problems, {elapsed} (eta {eta})";
        assert_eq!(plain_template("eval cot", t), "eval cot: {canon_counts}");
        let t = "{bar:30} {pos}/{len} {msg} [{elapsed} < {eta}]";
        assert_eq!(plain_template("", t), "{canon_counts} {msg}");
        let t = "{prefix} {bar:30} {pos}/{len} {msg} [{elapsed} < {eta}]";
        assert_eq!(
            plain_template("scale", t),
            "scale {prefix}: {canon_counts} {msg}"
        );
        let t = plain_template("eval rag", "bm25 {bar:30} {pos}");
        assert_eq!(t, "eval rag bm25: {canon_counts}");
    }
}
