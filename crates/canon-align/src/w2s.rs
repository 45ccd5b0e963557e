//! Weak-to-strong generalisation (Burns et al., 2023, paper 30) in miniature, on text from the
//! gettext catalogs of this machine (`/usr/share/locale/*/LC_MESSAGES/*.mo`), three binary tasks:
//!
//! - `lang`: is a message English (a `msgid`) or German (its `msgstr` in a `de` catalog)?
//! - `question`: is an English message a question? (label: it ended with `?`, which is removed)
//! - `error`: does an English message report a failure? (label: it contains one of `error`,
//!   `fail`, `cannot`, `can't`, `unable`, `invalid`, `denied`, `not found`; the text is kept)
//!
//! Models. Weak supervisor: logistic regression on 16 hashed character-trigram buckets (a small
//! model). Strong student: logistic regression on frozen all-MiniLM-L6-v2 sentence embeddings (a
//! pretrained model, trained as a linear probe — the paper fine-tunes the whole model; here only the
//! head is trained, which is a deviation). Protocol per task and seed: the weak model trains on
//! gold labels of the first half of the training texts; it labels the second half (soft labels);
//! the strong student trains on those weak labels with plain cross-entropy and with the auxiliary
//! confidence loss (`logconf`, aux 0.5, warm-up 0.1 as in the reference), and the strong ceiling
//! on the gold labels of the second half. PGR = (w2s − weak)/(ceiling − weak) on the test texts.

use std::path::Path;

use canon_nn::SplitMix64;
use serde::{Deserialize, Serialize};

use crate::losses::{logconf_coef, logconf_targets, pgr};
use crate::{Result, data_err};

/// One task's texts and gold labels (1 = positive).
#[derive(Debug, Clone)]
pub struct Task {
    pub name: String,
    pub texts: Vec<String>,
    pub labels: Vec<u8>,
}

const ERROR_WORDS: [&str; 8] = [
    "error",
    "fail",
    "cannot",
    "can't",
    "unable",
    "invalid",
    "denied",
    "not found",
];

/// The experiment's sizes: at least 20 texts per class (each split needs both weak and strong
/// training texts and a test set) and at least one seed.
pub fn check(per_class: usize, seeds: u64) -> std::result::Result<(), String> {
    if per_class < 20 || seeds == 0 {
        return Err("--per-class must be at least 20 and --seeds at least 1".into());
    }
    Ok(())
}

/// Builds the three tasks from the catalogs under `locale_dir`, at most `per_class` texts per
/// class each, balanced, shuffled by `seed`.
pub fn gettext_tasks(locale_dir: &Path, per_class: usize, seed: u64) -> Result<Vec<Task>> {
    let de = locale_dir.join("de/LC_MESSAGES");
    let rd = std::fs::read_dir(&de).map_err(|e| {
        data_err(format!(
            "{}: {e} (expected gettext catalogs, e.g. from the `gettext` or any translated package)",
            de.display()
        ))
    })?;
    let mut files: Vec<_> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "mo"))
        .collect();
    files.sort();
    let mut pairs = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for f in files {
        let Ok(bytes) = std::fs::read(&f) else {
            continue;
        };
        let Ok(ps) = canon_train::translation::catalog_pairs(&bytes, &f.display().to_string())
        else {
            continue;
        };
        for (en, g) in ps {
            let words = en.split_whitespace().count();
            if (3..=30).contains(&words) && seen.insert(en.clone()) {
                pairs.push((en, g));
            }
        }
    }
    if pairs.len() < 100 {
        return Err(data_err(format!(
            "found {} usable English/German message pairs under {} (need at least 100)",
            pairs.len(),
            de.display()
        )));
    }
    let mut rng = SplitMix64::new(seed ^ 0x3235);
    for i in (1..pairs.len()).rev() {
        pairs.swap(i, rng.below(i + 1));
    }
    let balanced = |name: &str, pos: Vec<String>, neg: Vec<String>, rng: &mut SplitMix64| {
        let k = per_class.min(pos.len()).min(neg.len());
        let mut items: Vec<(String, u8)> = pos
            .into_iter()
            .take(k)
            .map(|t| (t, 1))
            .chain(neg.into_iter().take(k).map(|t| (t, 0)))
            .collect();
        for i in (1..items.len()).rev() {
            items.swap(i, rng.below(i + 1));
        }
        Task {
            name: name.into(),
            texts: items.iter().map(|x| x.0.clone()).collect(),
            labels: items.iter().map(|x| x.1).collect(),
        }
    };
    let half = pairs.len() / 2;
    let lang = balanced(
        "lang",
        pairs[..half].iter().map(|p| p.0.clone()).collect(),
        pairs[half..].iter().map(|p| p.1.clone()).collect(),
        &mut rng,
    );
    let strip = |s: &str| s.trim_end_matches(['?', '.', '!', ':', ' ']).to_string();
    let (q, nq): (Vec<_>, Vec<_>) = pairs.iter().map(|p| &p.0).partition(|t| t.ends_with('?'));
    let question = balanced(
        "question",
        q.iter().map(|t| strip(t)).collect(),
        nq.iter().map(|t| strip(t)).collect(),
        &mut rng,
    );
    let is_err = |t: &str| {
        let l = t.to_lowercase();
        ERROR_WORDS.iter().any(|w| l.contains(w))
    };
    let (e, ne): (Vec<_>, Vec<_>) = pairs.iter().map(|p| p.0.clone()).partition(|t| is_err(t));
    let error = balanced("error", e, ne, &mut rng);
    let tasks = vec![lang, question, error];
    for t in &tasks {
        if t.texts.len() < 40 {
            return Err(data_err(format!(
                "task '{}' has only {} texts (need at least 40)",
                t.name,
                t.texts.len()
            )));
        }
    }
    Ok(tasks)
}

/// The weak model's features: counts of character trigrams hashed into `buckets`, L2-normalised.
pub fn hashed_trigrams(text: &str, buckets: usize) -> Vec<f32> {
    let mut v = vec![0f32; buckets];
    let chars: Vec<char> = format!("  {}  ", text.to_lowercase()).chars().collect();
    for w in chars.windows(3) {
        let s: String = w.iter().collect();
        let h = canon_train::translation::fnv1a64(s.as_bytes());
        v[(h % buckets as u64) as usize] += 1.0;
    }
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
    v.iter_mut().for_each(|x| *x /= n);
    v
}

/// Binary logistic regression `p = σ(w·x + b)`, trained with Adam on minibatches.
#[derive(Debug, Clone)]
pub struct LogReg {
    pub w: Vec<f64>,
    pub b: f64,
}

/// How the student's target is formed from the labels it is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    /// Cross-entropy on the (soft) labels.
    Xent,
    /// The reference `logconf` loss (aux 0.5, warm-up 0.1).
    Logconf,
}

impl LogReg {
    pub fn p(&self, x: &[f32]) -> f64 {
        let z: f64 = self.b
            + self
                .w
                .iter()
                .zip(x)
                .map(|(w, &x)| w * x as f64)
                .sum::<f64>();
        1.0 / (1.0 + (-z).exp())
    }

    /// Trains on `targets` (probability of class 1) for `epochs`, batch 32, Adam (lr `lr`).
    pub fn train(
        xs: &[Vec<f32>],
        targets: &[f64],
        loss: Loss,
        epochs: usize,
        lr: f64,
        seed: u64,
    ) -> Result<Self> {
        let d = xs.first().map_or(0, Vec::len);
        if d == 0 || xs.len() != targets.len() {
            return Err(data_err("logistic regression: empty or mismatched data"));
        }
        let mut m = LogReg {
            w: vec![0.0; d],
            b: 0.0,
        };
        let (mut mw, mut vw) = (vec![0.0; d + 1], vec![0.0; d + 1]);
        let mut rng = SplitMix64::new(seed);
        let mut order: Vec<usize> = (0..xs.len()).collect();
        let total = (epochs * xs.len().div_ceil(32)) as f64;
        let mut step = 0usize;
        for _ in 0..epochs {
            for i in (1..order.len()).rev() {
                order.swap(i, rng.below(i + 1));
            }
            for batch in order.chunks(32) {
                let ps: Vec<f64> = batch.iter().map(|&i| m.p(&xs[i])).collect();
                let tg: Vec<f64> = match loss {
                    Loss::Xent => batch.iter().map(|&i| targets[i]).collect(),
                    Loss::Logconf => {
                        let coef = logconf_coef(step as f64 / total, 0.5, 0.1);
                        let p0: Vec<f64> = ps.iter().map(|p| 1.0 - p).collect();
                        let weak: Vec<[f64; 2]> = batch
                            .iter()
                            .map(|&i| [1.0 - targets[i], targets[i]])
                            .collect();
                        logconf_targets(&p0, &weak, coef)?
                            .iter()
                            .map(|t| t[1])
                            .collect()
                    }
                };
                let mut g = vec![0.0; d + 1];
                for (k, &i) in batch.iter().enumerate() {
                    let e = (ps[k] - tg[k]) / batch.len() as f64;
                    for (j, &x) in xs[i].iter().enumerate() {
                        g[j] += e * x as f64;
                    }
                    g[d] += e;
                }
                step += 1;
                let t = step as i32;
                for j in 0..=d {
                    mw[j] = 0.9 * mw[j] + 0.1 * g[j];
                    vw[j] = 0.999 * vw[j] + 0.001 * g[j] * g[j];
                    let upd = lr * (mw[j] / (1.0 - 0.9f64.powi(t)))
                        / ((vw[j] / (1.0 - 0.999f64.powi(t))).sqrt() + 1e-8);
                    if j < d {
                        m.w[j] -= upd;
                    } else {
                        m.b -= upd;
                    }
                }
            }
        }
        Ok(m)
    }

    pub fn accuracy(&self, xs: &[Vec<f32>], labels: &[u8]) -> f64 {
        let predicted: Vec<bool> = xs.iter().map(|x| self.p(x) > 0.5).collect();
        let gold: Vec<bool> = labels.iter().take(xs.len()).map(|&y| y == 1).collect();
        canon_nn::ops::accuracy(&predicted, &gold)
    }
}

/// One task's result (means over seeds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct W2sResult {
    pub task: String,
    pub texts: usize,
    pub weak: f64,
    pub w2s_xent: f64,
    pub w2s_logconf: f64,
    pub ceiling: f64,
    pub pgr_xent: Option<f64>,
    pub pgr_logconf: Option<f64>,
    /// Bootstrapping: the student on the second half of its data only, taught directly by the weak
    /// model (the fair baseline), and taught by an intermediate model (see [`run_task`]).
    pub w2s_logconf_half: f64,
    pub w2s_bootstrap: f64,
    pub pgr_logconf_half: Option<f64>,
    pub pgr_bootstrap: Option<f64>,
}

/// The results as a text table (one row per task).
pub fn table(res: &[W2sResult]) -> String {
    let mut t = format!(
        "  {:<10} {:>6} {:>7} {:>9} {:>12} {:>8} {:>9} {:>12} {:>10} {:>10}\n",
        "task",
        "texts",
        "weak",
        "w2s xent",
        "w2s logconf",
        "ceiling",
        "PGR xent",
        "PGR logconf",
        "PGR half",
        "PGR boot"
    );
    let f = |x: Option<f64>| x.map_or("n/a".to_string(), |v| format!("{v:.3}"));
    for r in res {
        t.push_str(&format!(
            "  {:<10} {:>6} {:>7.3} {:>9.3} {:>12.3} {:>8.3} {:>9} {:>12} {:>10} {:>10}\n",
            r.task,
            r.texts,
            r.weak,
            r.w2s_xent,
            r.w2s_logconf,
            r.ceiling,
            f(r.pgr_xent),
            f(r.pgr_logconf),
            f(r.pgr_logconf_half),
            f(r.pgr_bootstrap)
        ));
    }
    t
}

/// Split `s` of `n` texts: a shuffled index list whose first 40 % trains the weak model, the next
/// 40 % the strong student, and the last 20 % is the test set (shared by every student).
pub fn split(n: usize, s: u64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    let mut rng = SplitMix64::new(0x5EED + s);
    for i in (1..n).rev() {
        idx.swap(i, rng.below(i + 1));
    }
    idx
}

/// Runs the protocol on one task with the three feature sets given (`weak_x`, the intermediate
/// model's `mid_x`, `strong_x`), averaging accuracies over `seeds` random splits (weak half /
/// strong half / test = 40 / 40 / 20 %).
///
/// Bootstrapping (the paper's §4.3.1, one intermediate step): the strong half is cut in two; an
/// intermediate model (logistic regression on `mid_x`) learns from the weak model's labels of the
/// first quarter, and the student learns from the intermediate's labels of the second quarter;
/// both steps with the confidence loss. Its baseline is the student taught directly by the weak
/// model on that same second quarter.
pub fn run_task(
    name: &str,
    weak_x: &[Vec<f32>],
    mid_x: &[Vec<f32>],
    strong_x: &[Vec<f32>],
    labels: &[u8],
    seeds: u64,
) -> Result<W2sResult> {
    let n = labels.len();
    if weak_x.len() != n || mid_x.len() != n || strong_x.len() != n {
        return Err(data_err(format!(
            "weak-to-strong: {n} labels but {} / {} / {} feature rows",
            weak_x.len(),
            mid_x.len(),
            strong_x.len()
        )));
    }
    let (mut weak, mut wx, mut wl, mut ceil) = (0.0, 0.0, 0.0, 0.0);
    let (mut half, mut boot) = (0.0, 0.0);
    for s in 0..seeds {
        let idx = split(n, s);
        let (a, rest) = idx.split_at(n * 2 / 5);
        let (b, test) = rest.split_at(n * 2 / 5);
        let pick = |xs: &[Vec<f32>], ii: &[usize]| -> Vec<Vec<f32>> {
            ii.iter().map(|&i| xs[i].clone()).collect()
        };
        let gold = |ii: &[usize]| -> Vec<f64> { ii.iter().map(|&i| labels[i] as f64).collect() };
        let test_l: Vec<u8> = test.iter().map(|&i| labels[i]).collect();
        let wm = LogReg::train(&pick(weak_x, a), &gold(a), Loss::Xent, 20, 0.05, s)?;
        weak += wm.accuracy(&pick(weak_x, test), &test_l);
        let soft: Vec<f64> = b.iter().map(|&i| wm.p(&weak_x[i])).collect();
        let sb = pick(strong_x, b);
        let st = pick(strong_x, test);
        wx += LogReg::train(&sb, &soft, Loss::Xent, 20, 0.01, s)?.accuracy(&st, &test_l);
        wl += LogReg::train(&sb, &soft, Loss::Logconf, 20, 0.01, s)?.accuracy(&st, &test_l);
        ceil += LogReg::train(&sb, &gold(b), Loss::Xent, 20, 0.01, s)?.accuracy(&st, &test_l);
        let (b1, b2) = b.split_at(b.len() / 2);
        let weak_b1: Vec<f64> = b1.iter().map(|&i| wm.p(&weak_x[i])).collect();
        let mid = LogReg::train(&pick(mid_x, b1), &weak_b1, Loss::Logconf, 20, 0.05, s)?;
        let mid_b2: Vec<f64> = b2.iter().map(|&i| mid.p(&mid_x[i])).collect();
        let weak_b2: Vec<f64> = b2.iter().map(|&i| wm.p(&weak_x[i])).collect();
        let sb2 = pick(strong_x, b2);
        boot += LogReg::train(&sb2, &mid_b2, Loss::Logconf, 20, 0.01, s)?.accuracy(&st, &test_l);
        half += LogReg::train(&sb2, &weak_b2, Loss::Logconf, 20, 0.01, s)?.accuracy(&st, &test_l);
    }
    let k = seeds.max(1) as f64;
    let (weak, wx, wl, ceil) = (weak / k, wx / k, wl / k, ceil / k);
    let (half, boot) = (half / k, boot / k);
    Ok(W2sResult {
        task: name.into(),
        texts: n,
        weak,
        w2s_xent: wx,
        w2s_logconf: wl,
        ceiling: ceil,
        pgr_xent: pgr(weak, wx, ceil),
        pgr_logconf: pgr(weak, wl, ceil),
        w2s_logconf_half: half,
        w2s_bootstrap: boot,
        pgr_logconf_half: pgr(weak, half, ceil),
        pgr_bootstrap: pgr(weak, boot, ceil),
    })
}

/// Sentence embeddings of a batch of texts (the strong model's features).
pub type EmbedFn<'a> = dyn FnMut(&[String]) -> Result<Vec<Vec<f32>>> + 'a;

/// The whole experiment: weak features, strong features from `embed`, every task, then
/// `w2s.json` and `w2s.png` (PGR per task with and without the confidence loss) in `out`.
pub fn run(tasks: &[Task], embed: &mut EmbedFn, seeds: u64, out: &Path) -> Result<Vec<W2sResult>> {
    let mut results = Vec::new();
    for t in tasks {
        let weak_x: Vec<Vec<f32>> = t.texts.iter().map(|s| hashed_trigrams(s, 16)).collect();
        let mid_x: Vec<Vec<f32>> = t.texts.iter().map(|s| hashed_trigrams(s, 256)).collect();
        let strong_x = embed(&t.texts)?;
        results.push(run_task(
            &t.name, &weak_x, &mid_x, &strong_x, &t.labels, seeds,
        )?);
    }
    write_report(
        &results,
        out,
        "Weak-to-strong: performance gap recovered (PGR)",
        &format!(
            "weak: logistic regression on 16 hashed char-trigram buckets; intermediate: on 256; strong: linear probe on MiniLM embeddings; mean of {seeds} splits"
        ),
        true,
    )?;
    Ok(results)
}

/// Writes `w2s.json` (every task's result) and `w2s.png` into `out`: PGR bars per task with and
/// without the confidence loss and, when `extras`, the half-data and bootstrapped ones.
pub(crate) fn write_report(
    results: &[W2sResult],
    out: &Path,
    title: &str,
    footnote: &str,
    extras: bool,
) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| data_err(format!("{}: {e}", out.display())))?;
    crate::pipeline::save_json(&out.join("w2s.json"), &results)?;
    let names: Vec<String> = results.iter().map(|r| r.task.clone()).collect();
    let bars = |f: &dyn Fn(&W2sResult) -> Option<f64>| -> Vec<(f64, f64)> {
        results
            .iter()
            .enumerate()
            .map(|(i, r)| (i as f64, f(r).unwrap_or(f64::NAN)))
            .collect()
    };
    let png = out.join("w2s.png");
    let mut fig = canon_plot::Figure::new(title)
        .x_categories(&names)
        .y_title("PGR")
        .series(canon_plot::Series::bars(
            "cross-entropy on weak labels",
            bars(&|r| r.pgr_xent),
        ))
        .series(canon_plot::Series::bars(
            "+ auxiliary confidence loss",
            bars(&|r| r.pgr_logconf),
        ));
    if extras {
        fig = fig
            .series(canon_plot::Series::bars(
                "confidence loss, half the data",
                bars(&|r| r.pgr_logconf_half),
            ))
            .series(canon_plot::Series::bars(
                "bootstrapped via 256-bucket trigrams, half the data",
                bars(&|r| r.pgr_bootstrap),
            ));
    }
    fig.footnote(footnote)
        .save(&png)
        .map_err(|e| data_err(format!("{}: {e}", png.display())))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_wants_twenty_texts_per_class_and_a_seed() {
        assert!(check(20, 1).is_ok());
        for (per_class, seeds) in [(19, 1), (20, 0)] {
            let e = check(per_class, seeds).unwrap_err();
            assert!(e.contains("--per-class") && e.contains("--seeds"), "{e}");
        }
    }

    #[test]
    fn logreg_learns_a_separable_set_and_trigrams_are_normalised() {
        let xs: Vec<Vec<f32>> = (0..200)
            .map(|i| vec![if i % 2 == 0 { 1.0 } else { -1.0 }, (i % 7) as f32 / 7.0])
            .collect();
        let y: Vec<u8> = (0..200).map(|i| (i % 2 == 0) as u8).collect();
        let t: Vec<f64> = y.iter().map(|&v| v as f64).collect();
        for loss in [Loss::Xent, Loss::Logconf] {
            let m = LogReg::train(&xs, &t, loss, 10, 0.1, 1).unwrap();
            assert_eq!(m.accuracy(&xs, &y), 1.0);
        }
        let h = hashed_trigrams("Cannot open file", 16);
        assert!((h.iter().map(|x| x * x).sum::<f32>() - 1.0).abs() < 1e-5);
        assert!(LogReg::train(&[], &[], Loss::Xent, 1, 0.1, 1).is_err());
    }

    #[test]
    fn run_task_reports_the_bootstrapped_student_and_rejects_mismatched_features() {
        // Class = sign of the first coordinate. Weak features see it through noise, the
        // intermediate more clearly, the strong exactly.
        let n = 400;
        let mut rng = SplitMix64::new(5);
        let y: Vec<u8> = (0..n).map(|i| (i % 2) as u8).collect();
        let feat = |noise: f64, rng: &mut SplitMix64| -> Vec<Vec<f32>> {
            y.iter()
                .map(|&c| {
                    let s = if c == 1 { 1.0 } else { -1.0 };
                    let u = rng.next_u64() as f64 / u64::MAX as f64 - 0.5;
                    vec![(s + noise * u) as f32, 1.0]
                })
                .collect()
        };
        let (w, m, st) = (
            feat(4.0, &mut rng),
            feat(2.5, &mut rng),
            feat(0.0, &mut rng),
        );
        let r = run_task("toy", &w, &m, &st, &y, 2).unwrap();
        assert!(r.ceiling > 0.95, "{r:?}");
        assert!(r.weak < r.ceiling);
        for v in [r.w2s_bootstrap, r.w2s_logconf_half] {
            assert!((0.0..=1.0).contains(&v), "{r:?}");
        }
        assert!(r.pgr_bootstrap.is_some() && r.pgr_logconf_half.is_some());
        let e = run_task("toy", &w, &m[..10], &st, &y, 1).unwrap_err();
        assert!(e.to_string().contains("feature rows"), "{e}");
    }
}
