//! The sweep's plots: the loss ladder with its fit and prediction (`scaling.png`), and the
//! capability ladder (`capability.png`).

use canon_plot::{Figure, Rgb, Series};

use super::*;

/// The capability plot: the ladder's `−E[log pass rate]`, the fitted law with its interval, the
/// predicted point and the measured one.
pub fn plot_capability(r: &SweepReport, path: &Path) -> Result<()> {
    let (Some(cr), Some(cp)) = (&r.capability, &r.prediction.capability) else {
        return Err(ScaleError::Data(
            "the sweep measured no capability (no [scale.capability])".into(),
        ));
    };
    let ladder: Vec<(f64, f64)> = r
        .rungs
        .iter()
        .filter_map(|x| {
            x.capability
                .as_ref()
                .map(|c| (x.compute, c.neg_mean_log_pass_rate))
        })
        .collect();
    let c_lo = ladder.first().map_or(1.0, |x| x.0) / 2.0;
    let c_hi = r.target.compute * 2.0;
    let n = 60;
    let curve: Vec<(f64, f64)> = (0..=n)
        .map(|i| {
            let c = c_lo * (c_hi / c_lo).powf(i as f64 / n as f64);
            (c, cp.law.predict(c))
        })
        .collect();
    let band: Vec<(f64, f64, f64)> = curve
        .iter()
        .filter_map(|&(c, _)| {
            cp.law
                .delta_interval(c)
                .map(|(lo, hi)| (c, lo.max(1e-6), hi))
        })
        .collect();
    let pc = cp.prediction.compute;
    let mut fig = Figure::new("Capability law: −E[log pass rate] on held-out additions vs compute")
        .x_title("training compute C = 6·N·D (FLOPs)")
        .y_title("−E[log pass rate] (nats)")
        .log_x()
        .log_y();
    if !band.is_empty() {
        fig = fig.series(
            Series::band("95% interval of the fit (Jacobian)", band).color(Rgb(31, 119, 180)),
        );
    }
    fig = fig
        .series(
            Series::line(
                &format!(
                    "fit α·C^(−k): α = {:.3e}, k = {:.3}",
                    cp.law.params.a, -cp.law.params.b
                ),
                curve,
            )
            .color(Rgb(31, 119, 180)),
        )
        .series(Series::scatter("ladder runs (fitted)", ladder).color(Rgb(44, 160, 44)));
    if let Some((lo, hi)) = cp
        .prediction
        .bootstrap_interval
        .or(cp.prediction.delta_interval)
    {
        fig = fig.series(
            Series::line_points(
                "prediction interval (95%)",
                vec![(pc, lo.max(1e-6)), (pc, hi)],
            )
            .color(Rgb(255, 127, 14)),
        );
    }
    fig = fig
        .series(
            Series::scatter(
                &format!("predicted before training: {:.4}", cp.prediction.value),
                vec![(pc, cp.prediction.value)],
            )
            .color(Rgb(255, 127, 14)),
        )
        .series(
            Series::scatter(
                &format!(
                    "measured: {:.4} (error {:.2}%)",
                    cr.measured,
                    100.0 * cr.relative_error
                ),
                vec![(r.target.compute, cr.measured)],
            )
            .color(Rgb(214, 39, 40)),
        )
        .footnote(&format!(
            "{} ladder runs trained on answer-only additions; pass rate = exact P(answer) at temperature 1; target = {:.1}× the largest fitted compute",
            r.rungs.len(),
            r.prediction.compute_ratio
        ));
    fig.save(path)?;
    Ok(())
}

/// The ladder, the fit, the predicted point with its interval and the measured point.
pub fn plot(r: &SweepReport, path: &Path) -> Result<()> {
    let p = &r.prediction;
    let ladder: Vec<(f64, f64)> = r.rungs.iter().map(|x| (x.compute, x.final_loss)).collect();
    let c_lo = ladder.first().map_or(1.0, |x| x.0) / 2.0;
    let c_hi = r.target.compute * 2.0;
    let n = 60;
    let curve: Vec<(f64, f64)> = (0..=n)
        .map(|i| {
            let c = c_lo * (c_hi / c_lo).powf(i as f64 / n as f64);
            (c, p.law.predict(c))
        })
        .collect();
    let band: Vec<(f64, f64, f64)> = curve
        .iter()
        .filter_map(|&(c, _)| p.law.delta_interval(c).map(|(lo, hi)| (c, lo, hi)))
        .collect();
    let pc = p.prediction.compute;
    let mut fig = Figure::new("Predictable scaling: final held-out loss vs training compute")
        .x_title("training compute C = 6·N·D (FLOPs)")
        .y_title("held-out loss (nats/token)")
        .log_x()
        .log_y();
    if !band.is_empty() {
        fig = fig.series(
            Series::band("95% interval of the fit (Jacobian)", band).color(Rgb(31, 119, 180)),
        );
    }
    fig = fig
        .series(
            Series::line(
                &format!(
                    "fit L(C) = {:.3}·(C/{:.1e})^{:.3} + {:.3}",
                    p.law.predict(p.law.c_min) - p.law.params.c,
                    p.law.c_min,
                    p.law.params.b,
                    p.law.params.c
                ),
                curve,
            )
            .color(Rgb(31, 119, 180)),
        )
        .series(Series::scatter("ladder runs (fitted)", ladder).color(Rgb(44, 160, 44)));
    if let Some((lo, hi)) = p
        .prediction
        .bootstrap_interval
        .or(p.prediction.delta_interval)
    {
        fig = fig.series(
            Series::line_points("prediction interval (95%)", vec![(pc, lo), (pc, hi)])
                .color(Rgb(255, 127, 14)),
        );
    }
    fig = fig
        .series(
            Series::scatter(
                &format!("predicted before training: {:.4}", p.prediction.value),
                vec![(pc, p.prediction.value)],
            )
            .color(Rgb(255, 127, 14)),
        )
        .series(
            Series::scatter(
                &format!(
                    "measured: {:.4} (error {:.2}%)",
                    r.target.final_loss,
                    100.0 * r.relative_error
                ),
                vec![(r.target.compute, r.target.final_loss)],
            )
            .color(Rgb(214, 39, 40)),
        )
        .footnote(&format!(
            "{} ladder runs, one recipe, {:.0} tokens/parameter; target = {:.1}× the largest fitted compute; interval at the target: bootstrap over runs",
            r.rungs.len(),
            r.target.tokens as f64 / r.target.params as f64,
            p.compute_ratio
        ));
    fig.save(path)?;
    Ok(())
}
