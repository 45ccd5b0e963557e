use super::*;
use std::sync::atomic::AtomicBool;

fn res(name: &str, compute: f64, loss: f64) -> RungResult {
    RungResult {
        name: name.into(),
        params: 1000,
        steps: 10,
        tokens: 20_000,
        compute,
        final_loss: loss,
        last_train_loss: loss,
        seconds: 1.0,
        capability: None,
    }
}

#[test]
fn analysis_reports_errors_by_number_of_points() {
    let law = |c: f64| 2.0 * c.powf(-0.3) + 1.5;
    let rungs: Vec<RungResult> = (0..6)
        .map(|i| {
            let c = 10f64.powf(i as f64 * 0.4);
            res(&format!("rung-{i}"), c, law(c))
        })
        .collect();
    let pts: Vec<(f64, f64)> = rungs.iter().map(|r| (r.compute, r.final_loss)).collect();
    let tc = 1e4;
    let (f, pred) = predict_from_smaller(&pts, Law::PowerPlusConstant, tc, 0.1, 50, 1).unwrap();
    let saved = SavedPrediction {
        fitted_rungs: rungs.iter().map(|r| r.name.clone()).collect(),
        law: f,
        prediction: pred,
        compute_ratio: tc / pts[5].0,
        capability: None,
    };
    let target = res("target", tc, law(tc) * 1.01);
    let rep = analyse(rungs, target, saved).unwrap();
    assert!((rep.relative_error - 0.01 / 1.01).abs() < 1e-6);
    assert_eq!(rep.by_points.len(), 4);
    assert_eq!(rep.by_points[0].rungs, 3);
    // From the largest 3, 4, 5 runs: the same exact law, so the same 1 % error, and the ratio
    // to the largest run whatever the subset.
    assert_eq!(rep.by_largest.len(), 3);
    for (e, k) in rep.by_largest.iter().zip(3..) {
        assert_eq!(e.rungs, k);
        assert!((e.compute_ratio - tc / pts[5].0).abs() < 1e-9);
        assert!((e.relative_error - 0.01 / 1.01).abs() < 1e-4, "{e:?}");
    }
    let md = markdown(&rep);
    assert!(md.contains("| target |"));
    assert!(md.contains("| smallest 3 |") && md.contains("| largest 5 |"));
    // A report written before the largest-run predictions existed still reads.
    let mut v = serde_json::to_value(&rep).unwrap();
    v.as_object_mut().unwrap().remove("by_largest");
    let old: SweepReport = serde_json::from_value(v).unwrap();
    assert!(old.by_largest.is_empty());
    let dir = tempfile::tempdir().unwrap();
    plot(&rep, &dir.path().join("s.png")).unwrap();
    assert!(dir.path().join("s.png").is_file());
}

struct Quiet(usize);
impl Progress for Quiet {
    fn run_start(&mut self, _p: &RungPlan, _i: usize, _n: usize) {}
    fn step(&mut self, _r: &StepReport) {
        self.0 += 1;
    }
    fn run_done(&mut self, _r: &RungResult) {}
    fn note(&mut self, _l: &str) {}
}

#[test]
fn an_interrupted_sweep_continues_where_it_stopped() {
    let cfg_text = r#"
[scale]
tokens_per_param = 0.5
bootstrap = 20
final_eval_batches = 2
rungs = [
  { d_model = 8, d_ff = 16 },
  { d_model = 12, d_ff = 24 },
  { d_model = 16, d_ff = 32 },
]
target = { d_model = 40, d_ff = 80 }

[model]
family = "gpt"
n_layer = 1
n_head = 2
d_model = 8
d_ff = 16
max_seq_len = 16
block = "pre_ln"
norm = "layer_norm"
positions = "learned"
ffn = "mlp"
bias = false
tie_embeddings = true
final_norm = true

[data]
corpus = "inline"
tokenizer = "char"

[train]
batch_size = 2
block_size = 16
max_steps = 1
lr = 1e-2
"#;
    let cfg = LadderConfig::parse(cfg_text, "test").unwrap();
    let docs: Vec<String> = (0..40)
        .map(|i| format!("def f{i}(x):\n    return x + {i}\n"))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    // Stopped before the first step: the first rung is left with a checkpoint at step 0.
    let stop = AtomicBool::new(true);
    let mut p = Quiet(0);
    let out = run_sweep(&cfg, &docs, dir.path(), &stop, &mut p).unwrap();
    assert!(matches!(out, SweepOutcome::Interrupted));
    assert!(dir.path().join("rung-0/checkpoint.safetensors").is_file());
    assert!(!dir.path().join("rung-0/result.json").exists());
    // Continued: every run finishes; the prediction precedes the target's folder.
    let stop = AtomicBool::new(false);
    let SweepOutcome::Done(r) = run_sweep(&cfg, &docs, dir.path(), &stop, &mut p).unwrap() else {
        panic!("expected a finished sweep")
    };
    let steps_first = p.0;
    assert!(steps_first > 0);
    assert_eq!(r.rungs.len(), 3);
    assert!(dir.path().join("prediction.json").is_file());
    assert!(dir.path().join("scaling.png").is_file());
    assert!(
        r.prediction.compute_ratio >= 10.0,
        "{}",
        r.prediction.compute_ratio
    );
    // Again: nothing is retrained, the same report comes back.
    let SweepOutcome::Done(r2) = run_sweep(&cfg, &docs, dir.path(), &stop, &mut p).unwrap() else {
        panic!("expected a finished sweep")
    };
    assert_eq!(p.0, steps_first);
    assert_eq!(r2.target.final_loss, r.target.final_loss);
}

#[test]
fn a_sweep_with_a_capability_task_predicts_it_before_the_target_and_plots_it() {
    let cfg_text = r#"
[scale]
tokens_per_param = 0.5
bootstrap = 20
final_eval_batches = 2
rungs = [
  { d_model = 8, d_ff = 16 },
  { d_model = 12, d_ff = 24 },
  { d_model = 16, d_ff = 32 },
]
target = { d_model = 40, d_ff = 80 }

[scale.capability]
task = "addition"
max_operand = 9
heldout = 10
context = 1
docs = 20
lines = 8

[model]
family = "gpt"
n_layer = 1
n_head = 2
d_model = 8
d_ff = 16
max_seq_len = 16
block = "pre_ln"
norm = "layer_norm"
positions = "learned"
ffn = "mlp"
bias = false
tie_embeddings = true
final_norm = true

[data]
corpus = "inline"
tokenizer = "char"

[train]
batch_size = 2
block_size = 16
max_steps = 1
lr = 1e-2
"#;
    let cfg = LadderConfig::parse(cfg_text, "test").unwrap();
    let task = cfg.scale.capability.as_ref().unwrap().task().unwrap();
    let docs = task.train_docs();
    let dir = tempfile::tempdir().unwrap();
    let stop = AtomicBool::new(false);
    let SweepOutcome::Done(r) = run_sweep(&cfg, &docs, dir.path(), &stop, &mut Quiet(0)).unwrap()
    else {
        panic!("expected a finished sweep")
    };
    for x in r.rungs.iter().chain(std::iter::once(&r.target)) {
        let c = x.capability.as_ref().expect("measured on every run");
        assert_eq!(c.problems, 10);
        assert!(c.neg_mean_log_pass_rate > 0.0 && c.mean_pass_rate > 0.0);
    }
    let cp = r.prediction.capability.as_ref().expect("predicted");
    assert_eq!(cp.law.law, Law::Power);
    let cr = r.capability.as_ref().expect("reported");
    assert_eq!(
        cr.measured,
        r.target.capability.as_ref().unwrap().neg_mean_log_pass_rate
    );
    assert_eq!(cr.by_points.len(), 1);
    assert!(markdown(&r).contains("−E[log pass rate]"));
    assert!(dir.path().join("capability.png").is_file());
    // The saved prediction carries the capability law (made before the target trained).
    let saved: SavedPrediction =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("prediction.json")).unwrap())
            .unwrap();
    let sc = saved.capability.as_ref().expect("saved");
    assert_eq!(sc.prediction.value, cp.prediction.value);
    assert_eq!(sc.law.params, cp.law.params);
}
