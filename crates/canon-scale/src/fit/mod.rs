//! Power-law fits for predictable scaling (OpenAI, "GPT-4 Technical Report", 2023, §3).
//!
//! The report predicts a large run's final loss from small runs trained with the same recipe by
//! fitting a power law with an irreducible term, and a capability metric by a pure power law:
//!
//! ```text
//! L(C) = a · C^b + c                  (loss; a > 0, b < 0, 0 ≤ c < min L)
//! −E_P[log pass_rate(C)] = α · C^(−k) (capability; α, k > 0)
//! ```
//!
//! Both are fitted by bounded non-linear least squares: Levenberg–Marquardt on unconstrained
//! coordinates (`a = e^u`, `b = −e^v`, `c = min(L) · σ(w)`), which keeps every iterate inside the
//! bounds. Compute is normalised by the smallest fitted compute before fitting (`x = C / C_min`),
//! so the design matrix is well conditioned whatever the units; `a` is reported in the caller's
//! units. Several starting values of `c` are tried (each gives `a`, `b` by a log-log line) and the
//! best least-squares solution is kept.
//!
//! Uncertainty, two ways: the Jacobian covariance `s² (JᵀJ)⁻¹` with `s² = SSR / (n − p)` (the
//! delta method gives the prediction's standard error; the interval uses Student's t with n − p
//! degrees of freedom), and a bootstrap that resamples the runs with replacement, refits and reads
//! the 2.5 % and 97.5 % quantiles of the predictions.
//!
//! Guard: [`predict_from_smaller`] refuses runs whose compute exceeds a configured fraction of the
//! target, so "predicted from smaller runs" is enforced, not assumed.

use canon_nn::SplitMix64;
use serde::{Deserialize, Serialize};

use crate::{Result, ScaleError};

/// Which law to fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Law {
    /// `a · C^b + c`, the loss law.
    PowerPlusConstant,
    /// `a · C^b` (c = 0), the capability law `α · C^(−k)` with `α = a`, `k = −b`.
    Power,
}

/// A fitted law in the caller's compute units.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PowerLaw {
    pub a: f64,
    pub b: f64,
    pub c: f64,
}

impl PowerLaw {
    pub fn eval(&self, compute: f64) -> f64 {
        self.a * compute.powf(self.b) + self.c
    }
}

/// The least-squares fit and its uncertainty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fit {
    pub law: Law,
    pub params: PowerLaw,
    /// Standard errors of (a, b, c) from the Jacobian covariance (c: 0 for [`Law::Power`]);
    /// `None` when there are no spare degrees of freedom (n ≤ p) or JᵀJ is singular.
    pub std_err: Option<[f64; 3]>,
    /// Sum of squared residuals.
    pub ssr: f64,
    pub points: usize,
    pub iterations: usize,
    /// The normalising compute `C_min` (the fit ran on `C / C_min`).
    pub c_min: f64,
    /// Covariance of the normalised parameters (a_norm, b, c), for the delta method.
    cov: Option<[[f64; 3]; 3]>,
    /// `a` of the normalised law (`L = a_norm · (C / C_min)^b + c`).
    a_norm: f64,
}

/// A prediction at one compute with a two-sided 95 % interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    pub compute: f64,
    pub value: f64,
    /// Delta-method interval from the Jacobian covariance (Student's t, n − p degrees of freedom).
    pub delta_interval: Option<(f64, f64)>,
    /// Bootstrap percentile interval (resampling the runs).
    pub bootstrap_interval: Option<(f64, f64)>,
    /// Bootstrap resamples that gave a fit.
    pub bootstrap_fits: usize,
}

fn n_params(law: Law) -> usize {
    match law {
        Law::PowerPlusConstant => 3,
        Law::Power => 2,
    }
}

fn sigmoid(w: f64) -> f64 {
    1.0 / (1.0 + (-w).exp())
}

/// The normalised model and its Jacobian w.r.t. the unconstrained coordinates θ = (u, v[, w]).
struct Model<'a> {
    x: &'a [f64],
    y: &'a [f64],
    law: Law,
    c_max: f64,
}

impl Model<'_> {
    fn natural(&self, th: &[f64]) -> (f64, f64, f64) {
        let a = th[0].exp();
        let b = -th[1].exp();
        let c = match self.law {
            Law::PowerPlusConstant => self.c_max * sigmoid(th[2]),
            Law::Power => 0.0,
        };
        (a, b, c)
    }

    fn ssr(&self, th: &[f64]) -> f64 {
        let (a, b, c) = self.natural(th);
        self.x
            .iter()
            .zip(self.y)
            .map(|(&x, &y)| (a * x.powf(b) + c - y).powi(2))
            .sum()
    }

    /// Residuals r and Jacobian J (rows: points; columns: θ).
    fn residuals(&self, th: &[f64]) -> (Vec<f64>, Vec<Vec<f64>>) {
        let (a, b, c) = self.natural(th);
        let p = n_params(self.law);
        let mut r = Vec::with_capacity(self.x.len());
        let mut j = Vec::with_capacity(self.x.len());
        for (&x, &y) in self.x.iter().zip(self.y) {
            let xb = x.powf(b);
            r.push(a * xb + c - y);
            // ∂f/∂u = a·x^b; ∂f/∂v = a·x^b·ln x · b (since ∂b/∂v = b); ∂f/∂w = c_max·σ(1−σ).
            let mut row = vec![a * xb, a * xb * x.ln() * b];
            if p == 3 {
                let s = sigmoid(th[2]);
                row.push(self.c_max * s * (1.0 - s));
            }
            j.push(row);
        }
        (r, j)
    }
}

/// Solves the small dense system `m · z = rhs` by Gaussian elimination with partial pivoting.
fn solve(mut m: Vec<Vec<f64>>, mut rhs: Vec<f64>) -> Option<Vec<f64>> {
    let n = rhs.len();
    for col in 0..n {
        let piv = (col..n).max_by(|&i, &k| m[i][col].abs().total_cmp(&m[k][col].abs()))?;
        if m[piv][col].abs() < 1e-300 || !m[piv][col].is_finite() {
            return None;
        }
        m.swap(col, piv);
        rhs.swap(col, piv);
        for row in col + 1..n {
            let f = m[row][col] / m[col][col];
            let pivot_row = m[col].clone();
            for (v, p) in m[row][col..].iter_mut().zip(&pivot_row[col..]) {
                *v -= f * p;
            }
            rhs[row] -= f * rhs[col];
        }
    }
    let mut z = vec![0.0; n];
    for row in (0..n).rev() {
        let s: f64 = (row + 1..n).map(|k| m[row][k] * z[k]).sum();
        z[row] = (rhs[row] - s) / m[row][row];
    }
    z.iter().all(|v| v.is_finite()).then_some(z)
}

fn invert(m: &[Vec<f64>]) -> Option<Vec<Vec<f64>>> {
    let n = m.len();
    let mut cols = Vec::with_capacity(n);
    for i in 0..n {
        let mut e = vec![0.0; n];
        e[i] = 1.0;
        cols.push(solve(m.to_vec(), e)?);
    }
    Some(
        (0..n)
            .map(|r| (0..n).map(|c| cols[c][r]).collect())
            .collect(),
    )
}

fn gram(j: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let p = j.first().map_or(0, Vec::len);
    let mut g = vec![vec![0.0; p]; p];
    for row in j {
        for a in 0..p {
            for b in 0..p {
                g[a][b] += row[a] * row[b];
            }
        }
    }
    g
}

/// Levenberg–Marquardt from `th`; returns (θ, SSR, iterations).
fn levenberg_marquardt(model: &Model, mut th: Vec<f64>) -> (Vec<f64>, f64, usize) {
    let mut lambda = 1e-3;
    let mut cost = model.ssr(&th);
    let mut it = 0;
    while it < 1000 {
        it += 1;
        let (r, j) = model.residuals(&th);
        let jtj = gram(&j);
        let p = th.len();
        let jtr: Vec<f64> = (0..p)
            .map(|k| j.iter().zip(&r).map(|(row, ri)| row[k] * ri).sum())
            .collect();
        let mut improved = false;
        while lambda < 1e12 {
            let mut m = jtj.clone();
            for (k, row) in m.iter_mut().enumerate() {
                row[k] += lambda * jtj[k][k].max(1e-12);
            }
            let step = solve(m, jtr.iter().map(|v| -v).collect());
            if let Some(d) = step {
                let cand: Vec<f64> = th.iter().zip(&d).map(|(t, s)| t + s).collect();
                let c2 = model.ssr(&cand);
                if c2.is_finite() && c2 <= cost {
                    let rel = (cost - c2) / cost.max(1e-300);
                    let small_step = d
                        .iter()
                        .zip(&th)
                        .all(|(s, t)| s.abs() <= 1e-12 * (1.0 + t.abs()));
                    th = cand;
                    cost = c2;
                    lambda = (lambda / 10.0).max(1e-15);
                    improved = true;
                    if cost < 1e-30 || small_step || ((0.0..1e-15).contains(&rel) && it > 5) {
                        return (th, cost, it);
                    }
                    break;
                }
            }
            lambda *= 10.0;
        }
        if !improved {
            break;
        }
    }
    (th, cost, it)
}

/// Fits `law` to `(compute, value)` points (compute > 0, values finite; for the loss law at
/// least 3 distinct computes, for the pure power law at least 2).
pub fn fit(points: &[(f64, f64)], law: Law) -> Result<Fit> {
    let p = n_params(law);
    if let Some(&(c, v)) = points
        .iter()
        .find(|(c, v)| !(c.is_finite() && *c > 0.0 && v.is_finite() && *v > 0.0))
    {
        return Err(ScaleError::Fit(format!(
            "every point needs compute > 0 and a finite value > 0; found ({c}, {v})"
        )));
    }
    let mut distinct: Vec<f64> = points.iter().map(|p| p.0).collect();
    distinct.sort_by(f64::total_cmp);
    distinct.dedup();
    if distinct.len() < p {
        return Err(ScaleError::Fit(format!(
            "need at least {p} distinct compute values to fit {p} parameters, found {}",
            distinct.len()
        )));
    }
    let c_min = distinct[0];
    let x: Vec<f64> = points.iter().map(|p| p.0 / c_min).collect();
    let y: Vec<f64> = points.iter().map(|p| p.1).collect();
    let y_min = y.iter().copied().fold(f64::INFINITY, f64::min);
    let model = Model {
        x: &x,
        y: &y,
        law,
        c_max: y_min,
    };
    let fracs: &[f64] = match law {
        Law::PowerPlusConstant => &[0.0, 0.3, 0.6, 0.8, 0.9, 0.95, 0.99],
        Law::Power => &[0.0],
    };
    let mut best: Option<(Vec<f64>, f64, usize)> = None;
    for &f in fracs {
        let c0 = f * y_min;
        // A log-log line through (x, y − c0) gives a and b.
        let (lx, ly): (Vec<f64>, Vec<f64>) = x
            .iter()
            .zip(&y)
            .map(|(&xi, &yi)| (xi.ln(), (yi - c0).max(1e-12).ln()))
            .unzip();
        let n = lx.len() as f64;
        let mx = lx.iter().sum::<f64>() / n;
        let my = ly.iter().sum::<f64>() / n;
        let sxx: f64 = lx.iter().map(|v| (v - mx).powi(2)).sum();
        let sxy: f64 = lx.iter().zip(&ly).map(|(a, b)| (a - mx) * (b - my)).sum();
        let slope = if sxx > 0.0 { sxy / sxx } else { -0.1 };
        let b0 = if slope < -1e-6 { slope } else { -0.1 };
        let a0 = (my - b0 * mx).exp().max(1e-12);
        let mut th = vec![a0.ln(), (-b0).ln()];
        if law == Law::PowerPlusConstant {
            let s = f.clamp(1e-4, 1.0 - 1e-4);
            th.push((s / (1.0 - s)).ln());
        }
        let r = levenberg_marquardt(&model, th);
        if best.as_ref().is_none_or(|b| r.1 < b.1) {
            best = Some(r);
        }
    }
    let Some((th, ssr, iterations)) = best else {
        return Err(ScaleError::Fit("no starting point".into()));
    };
    let (a_norm, b, c) = model.natural(&th);
    // Covariance in the natural normalised parameters (a_norm, b[, c]).
    let jn: Vec<Vec<f64>> = x
        .iter()
        .map(|&xi| {
            let xb = xi.powf(b);
            let mut row = vec![xb, a_norm * xb * xi.ln()];
            if p == 3 {
                row.push(1.0);
            }
            row
        })
        .collect();
    let n = points.len();
    let cov = if n > p {
        let s2 = ssr / (n - p) as f64;
        invert(&gram(&jn)).map(|inv| {
            let mut c3 = [[0.0; 3]; 3];
            for (i, row) in inv.iter().enumerate() {
                for (k, v) in row.iter().enumerate() {
                    c3[i][k] = v * s2;
                }
            }
            c3
        })
    } else {
        None
    };
    // a in the caller's units: a_norm · (C / C_min)^b = (a_norm · C_min^(−b)) · C^b.
    let scale = c_min.powf(-b);
    let a = a_norm * scale;
    let std_err = cov.map(|cv| {
        // Var(a) from Var(a_norm), Var(b) and their covariance (a = a_norm · C_min^(−b)).
        let da_dan = scale;
        let da_db = -a * c_min.ln();
        let var_a =
            da_dan * da_dan * cv[0][0] + da_db * da_db * cv[1][1] + 2.0 * da_dan * da_db * cv[0][1];
        [
            var_a.max(0.0).sqrt(),
            cv[1][1].max(0.0).sqrt(),
            cv[2][2].max(0.0).sqrt(),
        ]
    });
    Ok(Fit {
        law,
        params: PowerLaw { a, b, c },
        std_err,
        ssr,
        points: n,
        iterations,
        c_min,
        cov,
        a_norm,
    })
}

/// Two-sided 97.5 % quantile of Student's t with `dof` degrees of freedom (normal beyond 30).
pub fn t975(dof: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match dof {
        0 => f64::INFINITY,
        d if d <= 30 => T[d - 1],
        _ => 1.96,
    }
}

impl Fit {
    /// The fitted value at `compute`.
    pub fn predict(&self, compute: f64) -> f64 {
        self.params.eval(compute)
    }

    /// Delta-method 95 % interval at `compute` from the Jacobian covariance.
    pub fn delta_interval(&self, compute: f64) -> Option<(f64, f64)> {
        let cov = self.cov?;
        let x = compute / self.c_min;
        let xb = x.powf(self.params.b);
        let g = [xb, self.a_norm * xb * x.ln(), 1.0];
        let p = n_params(self.law);
        let mut var = 0.0;
        for i in 0..p {
            for k in 0..p {
                var += g[i] * cov[i][k] * g[k];
            }
        }
        let half = t975(self.points - p) * var.max(0.0).sqrt();
        let v = self.predict(compute);
        Some((v - half, v + half))
    }
}

/// Bootstrap percentile interval of the prediction at `compute`: `resamples` refits on runs drawn
/// with replacement (seeded); draws with too few distinct computes are skipped.
pub fn bootstrap(
    points: &[(f64, f64)],
    law: Law,
    compute: f64,
    resamples: usize,
    seed: u64,
) -> (Option<(f64, f64)>, usize) {
    let mut rng = SplitMix64::new(seed);
    let mut preds = Vec::with_capacity(resamples);
    for _ in 0..resamples {
        let draw: Vec<(f64, f64)> = (0..points.len())
            .map(|_| points[rng.below(points.len())])
            .collect();
        if let Ok(f) = fit(&draw, law) {
            let v = f.predict(compute);
            if v.is_finite() {
                preds.push(v);
            }
        }
    }
    if preds.len() < 10 {
        return (None, preds.len());
    }
    preds.sort_by(f64::total_cmp);
    let q = |p: f64| preds[((preds.len() - 1) as f64 * p).round() as usize];
    (Some((q(0.025), q(0.975))), preds.len())
}

/// Fits on `points` and predicts `target_compute`, refusing any point above
/// `max_fraction · target_compute` (e.g. 0.1 for "at least 10× less compute").
pub fn predict_from_smaller(
    points: &[(f64, f64)],
    law: Law,
    target_compute: f64,
    max_fraction: f64,
    resamples: usize,
    seed: u64,
) -> Result<(Fit, Prediction)> {
    if let Some(&(c, _)) = points
        .iter()
        .find(|(c, _)| *c > max_fraction * target_compute)
    {
        return Err(ScaleError::Fit(format!(
            "a run with compute {c:.3e} exceeds {max_fraction} of the target {target_compute:.3e}; \
             predictions must come from smaller runs"
        )));
    }
    let f = fit(points, law)?;
    let (boot, fits) = bootstrap(points, law, target_compute, resamples, seed);
    let pred = Prediction {
        compute: target_compute,
        value: f.predict(target_compute),
        delta_interval: f.delta_interval(target_compute),
        bootstrap_interval: boot,
        bootstrap_fits: fits,
    };
    Ok((f, pred))
}

/// `−mean(log pass_rate)` over problems, the report's capability metric. It is undefined when a
/// problem never passes: with `skip_zero` such problems are left out (and counted in the second
/// value); without it, a zero pass rate is an error.
pub fn neg_mean_log_pass_rate(pass_rates: &[f64], skip_zero: bool) -> Result<(f64, usize)> {
    let mut sum = 0.0;
    let mut n = 0usize;
    let mut skipped = 0usize;
    for &p in pass_rates {
        if !(0.0..=1.0).contains(&p) {
            return Err(ScaleError::Fit(format!(
                "a pass rate must lie in [0, 1], found {p}"
            )));
        }
        if p == 0.0 {
            if skip_zero {
                skipped += 1;
                continue;
            }
            return Err(ScaleError::Fit(
                "a problem has pass rate 0, where log(pass rate) is undefined; skip such problems explicitly"
                    .into(),
            ));
        }
        sum += p.ln();
        n += 1;
    }
    if n == 0 {
        return Err(ScaleError::Fit(
            "no problem with a pass rate above 0".into(),
        ));
    }
    Ok((-sum / n as f64, skipped))
}

#[cfg(test)]
mod tests;
