//! Rendering known series: SVG text holds the labels, PNG decodes at the asked size.

use canon_plot::{Figure, PlotError, Rgb, Series};

fn known() -> Figure {
    let train: Vec<(f64, f64)> = (0..=10)
        .map(|i| (i as f64 * 100.0, 4.0 - 0.2 * i as f64))
        .collect();
    Figure::new("Known loss curve")
        .x_title("step")
        .y_title("loss (nats/token)")
        .y2_title("learning rate")
        .series(Series::line("train loss", train))
        .series(Series::scatter(
            "eval loss",
            vec![(500.0, 3.1), (1000.0, f64::NAN)],
        ))
        .series(Series::line("lr", vec![(0.0, 0.0), (100.0, 6e-4), (1000.0, 6e-5)]).on_right())
        .footnote("tokens seen: 1.2M")
}

fn svg_text(svg: &str) -> Vec<String> {
    // The contents of every <text> element.
    svg.split("<text")
        .skip(1)
        .filter_map(|t| {
            t.split_once('>')
                .and_then(|(_, rest)| rest.split_once("</text>"))
        })
        .map(|(s, _)| s.trim().to_string())
        .collect()
}

#[test]
fn svg_holds_title_axes_ticks_legend_and_footnotes() {
    let (svg, report) = known().to_svg().unwrap();
    assert_eq!(
        report.skipped, 1,
        "the NaN eval point is skipped and counted"
    );
    let texts = svg_text(&svg);
    for want in [
        "Known loss curve",
        "step",
        "loss (nats/token)",
        "learning rate",
        "train loss",
        "eval loss",
        "lr",
        "tokens seen: 1.2M",
        "1 point not drawn: NaN or infinite",
        // x ticks over 0..1000, y ticks over 2..4, right axis over 0..6e-4.
        "0",
        "1000",
        "2.0",
        "4.0",
        "6e-4",
    ] {
        assert!(
            texts.iter().any(|t| t == want),
            "no text {want:?} in {texts:?}"
        );
    }
}

#[test]
fn log_axes_and_bars_render() {
    let pts: Vec<(f64, f64)> = (0..=6).map(|k| (10f64.powi(k), k as f64 + 1.0)).collect();
    let (svg, _) = Figure::new("log x")
        .log_x()
        .log_y()
        .series(Series::line_points("p", pts))
        .to_svg()
        .unwrap();
    let texts = svg_text(&svg);
    for want in ["1", "10", "100", "1000", "10k", "100k", "1M"] {
        assert!(texts.iter().any(|t| t == want), "no {want:?} in {texts:?}");
    }
    let (svg, _) = Figure::new("PGR")
        .x_categories(&["small", "medium", "large"])
        .series(Series::bars(
            "weak",
            vec![(0.0, 0.2), (1.0, 0.4), (2.0, 0.5)],
        ))
        .series(
            Series::bars("strong", vec![(0.0, 0.3), (1.0, 0.6), (2.0, 0.8)]).color(Rgb(0, 0, 0)),
        )
        .series(Series::band("ci", vec![(0.0, 0.1, 0.3), (2.0, 0.4, 0.6)]))
        .to_svg()
        .unwrap();
    let texts = svg_text(&svg);
    for want in ["small", "medium", "large", "weak", "strong", "ci"] {
        assert!(texts.iter().any(|t| t == want), "no {want:?} in {texts:?}");
    }
}

#[test]
fn non_positive_values_on_a_log_axis_are_counted() {
    let (_, report) = Figure::new("")
        .log_y()
        .series(Series::line(
            "",
            vec![
                (0.0, 1.0),
                (1.0, 0.0),
                (2.0, -3.0),
                (3.0, f64::INFINITY),
                (4.0, 10.0),
            ],
        ))
        .to_svg()
        .unwrap();
    assert_eq!(report.skipped, 3);
    assert_eq!(report.non_positive_on_log, 2);
}

#[test]
fn empty_figure_says_so() {
    let (svg, report) = Figure::new("nothing").to_svg().unwrap();
    assert_eq!(report.skipped, 0);
    assert!(svg_text(&svg).iter().any(|t| t == "no data to plot"));
}

#[test]
fn png_decodes_with_the_asked_size_and_has_ink() {
    let (bytes, _) = known().size(640, 400).to_png().unwrap();
    let dec = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = dec.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (640, 400));
    let dark = buf.chunks(3).filter(|p| p.iter().all(|&c| c < 100)).count();
    assert!(
        dark > 500,
        "text and frame should leave dark pixels, found {dark}"
    );
    // The train line's blue is present.
    assert!(buf.chunks(3).any(|p| p == [31, 119, 180]));
}

#[test]
fn save_picks_the_format_and_rejects_other_extensions() {
    let dir = tempfile::tempdir().unwrap();
    let f = known();
    f.save(&dir.path().join("a.svg")).unwrap();
    f.save(&dir.path().join("a.PNG")).unwrap();
    assert!(
        std::fs::read_to_string(dir.path().join("a.svg"))
            .unwrap()
            .starts_with("<svg")
    );
    assert_eq!(
        &std::fs::read(dir.path().join("a.PNG")).unwrap()[1..4],
        b"PNG"
    );
    let e = f.save(&dir.path().join("a.jpg")).unwrap_err();
    assert!(matches!(e, PlotError::Extension { .. }));
    assert!(e.to_string().contains("expected a .png or .svg"), "{e}");
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "no temporary files left: {names:?}");
    let e = known().size(10, 10).to_png().unwrap_err();
    assert!(matches!(e, PlotError::Size(10, 10)));
}

#[test]
fn demo_png_for_eyes() {
    // Writes the known figure where a person can look at it (target dir), as a smoke test.
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("canon-plot-demo.png");
    known().save(&out).unwrap();
}
