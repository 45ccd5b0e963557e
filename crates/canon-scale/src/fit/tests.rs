use super::*;

fn logspace(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    (0..n)
        .map(|i| 10f64.powf(lo + (hi - lo) * i as f64 / (n - 1) as f64))
        .collect()
}

#[test]
fn recovers_noise_free_loss_law() {
    let truth = PowerLaw {
        a: 2.0,
        b: -0.3,
        c: 1.5,
    };
    let pts: Vec<(f64, f64)> = logspace(0.0, 4.0, 8)
        .into_iter()
        .map(|c| (c, truth.eval(c)))
        .collect();
    let f = fit(&pts, Law::PowerPlusConstant).unwrap();
    assert!((f.params.a - 2.0).abs() < 1e-6, "{:?}", f.params);
    assert!((f.params.b + 0.3).abs() < 1e-6, "{:?}", f.params);
    assert!((f.params.c - 1.5).abs() < 1e-6, "{:?}", f.params);
    // SciPy's curve_fit on the same points: L(1e6) = 1.5316979.
    assert!((f.predict(1e6) - 1.5316979).abs() < 1e-6);
}

#[test]
fn units_of_compute_do_not_change_the_law() {
    // The same law with compute in FLOPs (1e12 .. 1e16): a is rescaled, b and c are not.
    let truth = PowerLaw {
        a: 2.0 * 1e12f64.powf(0.3),
        b: -0.3,
        c: 1.5,
    };
    let pts: Vec<(f64, f64)> = logspace(12.0, 16.0, 8)
        .into_iter()
        .map(|c| (c, truth.eval(c)))
        .collect();
    let f = fit(&pts, Law::PowerPlusConstant).unwrap();
    assert!((f.params.b + 0.3).abs() < 1e-6);
    assert!((f.params.c - 1.5).abs() < 1e-6);
    assert!((f.predict(1e18) - 1.5316979).abs() < 1e-6);
}

#[test]
fn one_percent_noise_extrapolates_within_five_percent() {
    let truth = PowerLaw {
        a: 2.0,
        b: -0.3,
        c: 1.5,
    };
    let target = truth.eval(1e6);
    for seed in 0..20u64 {
        let mut rng = SplitMix64::new(1000 + seed);
        let pts: Vec<(f64, f64)> = logspace(0.0, 4.0, 8)
            .into_iter()
            .map(|c| (c, truth.eval(c) * (1.0 + 0.01 * rng.normal())))
            .collect();
        let f = fit(&pts, Law::PowerPlusConstant).unwrap();
        let err = (f.predict(1e6) - target).abs() / target;
        assert!(err < 0.05, "seed {seed}: relative error {err}");
        assert!(f.params.a > 0.0 && f.params.b < 0.0 && f.params.c >= 0.0);
        let (lo, hi) = f.delta_interval(1e6).unwrap();
        assert!(lo < f.predict(1e6) && f.predict(1e6) < hi);
    }
}

#[test]
fn noisy_fit_intervals_cover_the_truth_usually() {
    // With 1 % noise the 95 % delta interval should hold the true extrapolation in most seeds;
    // a broken covariance (too narrow by 10×) would fail this.
    let truth = PowerLaw {
        a: 2.0,
        b: -0.3,
        c: 1.5,
    };
    let target = truth.eval(1e6);
    let mut covered = 0;
    for seed in 0..40u64 {
        let mut rng = SplitMix64::new(77 + seed);
        let pts: Vec<(f64, f64)> = logspace(0.0, 4.0, 8)
            .into_iter()
            .map(|c| (c, truth.eval(c) * (1.0 + 0.01 * rng.normal())))
            .collect();
        let f = fit(&pts, Law::PowerPlusConstant).unwrap();
        let (lo, hi) = f.delta_interval(1e6).unwrap();
        if lo <= target && target <= hi {
            covered += 1;
        }
    }
    assert!(covered >= 30, "covered {covered} of 40");
}

#[test]
fn recovers_pass_rate_law() {
    // −E[log pass] = α · C^(−k), α = 3, k = 0.25.
    let pts: Vec<(f64, f64)> = logspace(0.0, 3.0, 6)
        .into_iter()
        .map(|c| (c, 3.0 * c.powf(-0.25)))
        .collect();
    let f = fit(&pts, Law::Power).unwrap();
    assert!((f.params.a - 3.0).abs() < 1e-6, "{:?}", f.params);
    assert!((f.params.b + 0.25).abs() < 1e-6, "{:?}", f.params);
    assert_eq!(f.params.c, 0.0);
}

#[test]
fn guard_refuses_runs_close_to_the_target() {
    let pts: Vec<(f64, f64)> = logspace(0.0, 4.0, 8)
        .into_iter()
        .map(|c| (c, 2.0 * c.powf(-0.3) + 1.5))
        .collect();
    let e = predict_from_smaller(&pts, Law::PowerPlusConstant, 1e4, 0.1, 0, 1).unwrap_err();
    assert!(e.to_string().contains("smaller runs"), "{e}");
    let (_, p) = predict_from_smaller(&pts, Law::PowerPlusConstant, 1e6, 0.01, 50, 1).unwrap();
    assert!((p.value - 1.5316979).abs() < 1e-6);
    let (lo, hi) = p.bootstrap_interval.unwrap();
    assert!(lo <= p.value + 1e-9 && p.value - 1e-9 <= hi);
}

#[test]
fn rejects_bad_points() {
    assert!(
        fit(
            &[(1.0, 2.0), (1.0, 2.0), (1.0, 2.0)],
            Law::PowerPlusConstant
        )
        .is_err()
    );
    assert!(
        fit(
            &[(0.0, 2.0), (1.0, 2.0), (2.0, 2.0)],
            Law::PowerPlusConstant
        )
        .is_err()
    );
    assert!(
        fit(
            &[(1.0, f64::NAN), (2.0, 2.0), (3.0, 2.0)],
            Law::PowerPlusConstant
        )
        .is_err()
    );
}

#[test]
fn mean_log_pass_rate_handles_zero_as_configured() {
    assert!(neg_mean_log_pass_rate(&[0.5, 0.0], false).is_err());
    let (v, skipped) = neg_mean_log_pass_rate(&[0.5, 0.0, 0.25], true).unwrap();
    assert_eq!(skipped, 1);
    assert!((v - (2f64.ln() + 4f64.ln()) / 2.0).abs() < 1e-12);
    assert!(neg_mean_log_pass_rate(&[1.5], true).is_err());
}
