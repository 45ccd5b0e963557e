//! Axis ranges, tick positions and tick labels.
//!
//! Linear axes use "nice" steps (1, 2 or 5 times a power of ten) placed at integer multiples of
//! the step, so labels never carry rounding noise. Log axes put major ticks on decades (every
//! n-th decade when there are many) with minor ticks at 2..9; a range narrower than two decades
//! takes its majors from 1, 2 and 5 within each decade instead.

/// The ticks of one axis: the padded range it shows and its labelled / unlabelled tick values.
#[derive(Debug, Clone, PartialEq)]
pub struct Ticks {
    /// Lowest value the axis shows (data minimum less a margin).
    pub lo: f64,
    /// Highest value the axis shows.
    pub hi: f64,
    /// Labelled ticks, ascending.
    pub major: Vec<(f64, String)>,
    /// Unlabelled ticks (log axes: 2..9 within each decade), ascending.
    pub minor: Vec<f64>,
}

impl Ticks {
    /// The labels alone, in order (convenient in tests and for layout).
    pub fn labels(&self) -> Vec<&str> {
        self.major.iter().map(|(_, s)| s.as_str()).collect()
    }
    /// The labelled tick values alone.
    pub fn values(&self) -> Vec<f64> {
        self.major.iter().map(|(v, _)| *v).collect()
    }
}

/// Margin added on each side of the data range, as a fraction of the range.
const PAD: f64 = 0.04;

/// Ticks for a linear axis showing `lo..=hi` (data extremes; they may be equal) with at most
/// `max_ticks` labelled ticks (at least 2 are asked for). The shown range is padded by 4 % on
/// each side; a zero-width range is widened by 10 % of the value (or by 1 around zero).
pub fn linear(lo: f64, hi: f64, max_ticks: usize) -> Ticks {
    let (lo, hi) = padded_linear(lo, hi);
    linear_exact(lo, hi, max_ticks)
}

/// Ticks for a linear axis showing exactly `lo..=hi` (no padding); `lo < hi` is expected, other
/// inputs are widened as [`linear`] does.
pub fn linear_exact(lo: f64, hi: f64, max_ticks: usize) -> Ticks {
    let (lo, hi) = if lo.is_finite() && hi.is_finite() && lo < hi {
        (lo, hi)
    } else {
        padded_linear(lo, hi)
    };
    let max_ticks = max_ticks.max(2);
    let (m, k) = nice_step(lo, hi, max_ticks);
    let step = m as f64 * 10f64.powi(k);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    // i·m·10^k parsed from decimal text is the double nearest the exact tick (no 0.0045000001).
    let values: Vec<f64> = (first..=last)
        .map(|i| decimal(i * m, k))
        .filter(|v| *v >= lo && *v <= hi)
        .collect();
    let labels = linear_labels(&values, step);
    Ticks {
        lo,
        hi,
        major: values.into_iter().zip(labels).collect(),
        minor: Vec::new(),
    }
}

fn padded_linear(lo: f64, hi: f64) -> (f64, f64) {
    let (lo, hi) = match (lo.is_finite(), hi.is_finite()) {
        (true, true) => (lo.min(hi), lo.max(hi)),
        (true, false) => (lo, lo),
        (false, true) => (hi, hi),
        (false, false) => (0.0, 1.0),
    };
    let span = hi - lo;
    if span > 0.0 {
        (lo - PAD * span, hi + PAD * span)
    } else if lo == 0.0 {
        (-1.0, 1.0)
    } else {
        let d = lo.abs() * 0.1;
        (lo - d, hi + d)
    }
}

/// The smallest step m·10^k, m in {1, 2, 5}, giving at most `max_ticks` multiples in range.
fn nice_step(lo: f64, hi: f64, max_ticks: usize) -> (i64, i32) {
    let span = hi - lo;
    let mut k = (span / max_ticks as f64).log10().floor() as i32 - 1;
    loop {
        for m in [1, 2, 5] {
            let step = m as f64 * 10f64.powi(k);
            let n = (hi / step).floor() - (lo / step).ceil() + 1.0;
            if n <= max_ticks as f64 {
                return (m, k);
            }
        }
        k += 1;
    }
}

/// The double nearest to `mantissa`·10^`exp`.
fn decimal(mantissa: i64, exp: i32) -> f64 {
    let v: f64 = format!("{mantissa}e{exp}")
        .parse()
        .unwrap_or(mantissa as f64 * 10f64.powi(exp));
    if v == 0.0 { 0.0 } else { v }
}

/// Labels for values that are multiples of `step`: fixed decimals for ordinary magnitudes, a
/// k/M/G/T suffix from 10 000 upwards, and scientific notation below 0.001.
fn linear_labels(values: &[f64], step: f64) -> Vec<String> {
    let max_abs = values.iter().fold(0f64, |m, v| m.max(v.abs()));
    let step_exp = step.log10().floor() as i32;
    if max_abs >= 1e4 {
        let (unit, suffix) = si_unit(max_abs);
        let d = (-(step / unit).log10().floor() as i32).max(0) as usize;
        values
            .iter()
            .map(|&v| {
                if v == 0.0 {
                    "0".to_string()
                } else {
                    format!("{:.*}{suffix}", d, v / unit)
                }
            })
            .collect()
    } else if max_abs > 0.0 && max_abs < 1e-3 {
        let e = max_abs.log10().floor() as i32;
        let d = (e - step_exp).max(0) as usize;
        values
            .iter()
            .map(|&v| {
                if v == 0.0 {
                    "0".to_string()
                } else {
                    format!("{:.*}e{e}", d, v / 10f64.powi(e))
                }
            })
            .collect()
    } else {
        let d = (-step_exp).max(0) as usize;
        values.iter().map(|&v| format!("{v:.d$}")).collect()
    }
}

fn si_unit(max_abs: f64) -> (f64, &'static str) {
    if max_abs >= 1e12 {
        (1e12, "T")
    } else if max_abs >= 1e9 {
        (1e9, "G")
    } else if max_abs >= 1e6 {
        (1e6, "M")
    } else {
        (1e3, "k")
    }
}

/// Ticks for a log axis over positive data `lo..=hi`; padded by 4 % of the log range on each
/// side (half a decade each side for a single value). Non-positive or non-finite bounds fall
/// back to 1..10.
pub fn log(lo: f64, hi: f64, max_ticks: usize) -> Ticks {
    let (lo, hi) = if lo > 0.0 && hi > 0.0 && lo.is_finite() && hi.is_finite() {
        (lo.min(hi), lo.max(hi))
    } else {
        (1.0, 10.0)
    };
    let (a, b) = (lo.log10(), hi.log10());
    let (a, b) = if b > a {
        let p = PAD * (b - a);
        (a - p, b + p)
    } else {
        (a - 0.5, b + 0.5)
    };
    log_exact(10f64.powf(a), 10f64.powf(b), max_ticks)
}

/// Ticks for a log axis showing exactly `lo..=hi` (both > 0, `lo < hi`).
pub fn log_exact(lo: f64, hi: f64, max_ticks: usize) -> Ticks {
    let max_ticks = max_ticks.max(2);
    let (a, b) = (lo.log10(), hi.log10());
    // A small tolerance keeps an exact decade at the edge (1e6 computed as 10^5.99999…).
    let eps = 1e-9;
    let d0 = (a - eps).ceil() as i32;
    let d1 = (b + eps).floor() as i32;
    let in_range = |v: f64| v >= lo * (1.0 - 1e-9) && v <= hi * (1.0 + 1e-9);
    let decades = (d1 - d0 + 1).max(0) as usize;
    let mut major = Vec::new();
    let mut minor = Vec::new();
    if decades >= 2 {
        let every = decades.div_ceil(max_ticks).max(1) as i32;
        for k in d0..=d1 {
            let v = pow10(k);
            if (k - d0) % every == 0 {
                major.push(v);
            } else {
                minor.push(v);
            }
        }
        if every == 1 {
            for k in (d0 - 1)..=d1 {
                for m in 2..=9 {
                    let v = decimal(m, k);
                    if in_range(v) {
                        minor.push(v);
                    }
                }
            }
        }
    } else {
        for mantissas in [&[1i64, 2, 5][..], &[1, 2, 3, 4, 5, 6, 7, 8, 9]] {
            major.clear();
            minor.clear();
            for k in (a.floor() as i32)..=(b.ceil() as i32) {
                for m in 1..=9i64 {
                    let v = decimal(m, k);
                    if !in_range(v) {
                        continue;
                    }
                    if mantissas.contains(&m) {
                        major.push(v);
                    } else {
                        minor.push(v);
                    }
                }
            }
            if major.len() >= 2 {
                break;
            }
        }
        if major.len() > max_ticks {
            major.retain(|v| is_decade(*v));
        }
    }
    minor.sort_by(f64::total_cmp);
    Ticks {
        lo,
        hi,
        major: major.into_iter().map(|v| (v, log_label(v))).collect(),
        minor,
    }
}

fn pow10(k: i32) -> f64 {
    decimal(1, k)
}

fn is_decade(v: f64) -> bool {
    let l = v.log10();
    (l - l.round()).abs() < 1e-9
}

/// A label for one log tick value: plain below 10 000 (down to 0.001), k/M/G/T above, `2e-5`
/// style below 0.001.
pub fn log_label(v: f64) -> String {
    if v >= 1e4 {
        let (unit, suffix) = si_unit(v);
        trim(format!("{:.3}", v / unit)) + suffix
    } else if v >= 1e-3 {
        trim(format!("{v:.4}"))
    } else {
        let e = v.log10().floor() as i32;
        let m = v / 10f64.powi(e);
        format!("{}e{e}", trim(format!("{m:.2}")))
    }
}

/// Removes trailing zeros (and a trailing point) from a fixed-point number.
fn trim(s: String) -> String {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn narrow_small_range_gets_four_decimals() {
        let t = linear(0.0031, 0.0047, 8);
        assert!(t.lo < 0.0031 && t.hi > 0.0047);
        // Step 0.0002 from 0.0030 to 0.0048 (range 0.003036..0.004764).
        assert_eq!(
            t.labels(),
            [
                "0.0032", "0.0034", "0.0036", "0.0038", "0.0040", "0.0042", "0.0044", "0.0046"
            ]
        );
        // Fewer ticks: step 0.0005.
        let t = linear(0.0031, 0.0047, 5);
        assert_eq!(t.labels(), ["0.0035", "0.0040", "0.0045"]);
        assert_eq!(t.values(), [0.0035, 0.004, 0.0045]);
    }

    #[test]
    fn ordinary_and_large_ranges() {
        let t = linear(0.0, 10.0, 6);
        assert_eq!(t.labels(), ["0", "2", "4", "6", "8", "10"]);
        let t = linear(2.1, 3.9, 6);
        assert_eq!(t.labels(), ["2.5", "3.0", "3.5"]);
        let t = linear(0.0, 1_200_000.0, 7);
        assert_eq!(
            t.labels(),
            ["0", "0.2M", "0.4M", "0.6M", "0.8M", "1.0M", "1.2M"]
        );
        let t = linear(0.0, 50_000.0, 6);
        assert_eq!(t.labels(), ["0", "10k", "20k", "30k", "40k", "50k"]);
        let t = linear(-1.0, 1.0, 5);
        assert_eq!(t.labels(), ["-1.0", "-0.5", "0.0", "0.5", "1.0"]);
    }

    #[test]
    fn tiny_values_use_exponents() {
        let t = linear(0.0, 4e-5, 5);
        assert_eq!(t.labels(), ["0", "1e-5", "2e-5", "3e-5", "4e-5"]);
    }

    #[test]
    fn log_axis_one_to_a_million_has_a_tick_per_decade() {
        let t = log(1.0, 1e6, 8);
        assert_eq!(t.labels(), ["1", "10", "100", "1000", "10k", "100k", "1M"]);
        assert_eq!(t.values(), [1.0, 10.0, 100.0, 1000.0, 1e4, 1e5, 1e6]);
        assert!(t.minor.contains(&2.0) && t.minor.contains(&900_000.0));
        assert!(t.lo < 1.0 && t.hi > 1e6);
        // Few ticks allowed: every second decade, the others become minor ticks.
        let t = log(1.0, 1e6, 4);
        assert_eq!(t.labels(), ["1", "100", "10k", "1M"]);
        assert!(t.minor.contains(&10.0));
    }

    #[test]
    fn log_axis_within_a_decade_uses_1_2_5() {
        let t = log(1.5, 8.0, 8);
        assert_eq!(t.labels(), ["2", "5"]);
        let t = log(0.02, 0.3, 8);
        assert_eq!(t.labels(), ["0.02", "0.05", "0.1", "0.2"]);
        let t = log(3e-5, 2e-4, 8);
        assert_eq!(t.labels(), ["5e-5", "1e-4", "2e-4"]);
    }

    #[test]
    fn single_point_and_constant_series() {
        let t = linear(5.0, 5.0, 6);
        assert!(t.lo < 5.0 && t.hi > 5.0);
        assert!(t.values().contains(&5.0), "{t:?}");
        assert!(t.major.len() >= 2);
        let t = linear(0.0, 0.0, 6);
        assert_eq!((t.lo, t.hi), (-1.0, 1.0));
        assert!(t.labels().contains(&"0.0"), "{t:?}");
        let t = log(100.0, 100.0, 6);
        assert!(t.labels().contains(&"100"), "{t:?}");
        assert!(t.lo < 100.0 && t.hi > 100.0);
    }

    #[test]
    fn bad_bounds_fall_back() {
        let t = linear(f64::NAN, f64::INFINITY, 6);
        assert_eq!(t.labels(), ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]);
        let t = log(-1.0, 10.0, 6);
        assert!(t.values().contains(&1.0) && t.values().contains(&10.0));
    }
}
