//! Crash safety, tested by killing: the real `canon` commands are stopped by SIGKILL at several
//! moments (timed kills early, in the middle and late) and aborted at the two instants a timer
//! rarely hits (half of the output written; the output complete but not yet renamed, through
//! `CANON_CRASH_AT`, see `canon-fs`). Afterwards the disk must hold either the earlier output,
//! untouched, or the new one, complete; a killed training run resumes from its last complete
//! checkpoint and ends bit-exact with a run that was never interrupted.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use canon_models::peft::{Adapter, write_adapter};
use canon_testkit::randn;
use canon_testkit::tiny_gguf::{TinyLlama, write_tiny_llama};

fn cmd(args: &[&str], home: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_canon"));
    c.args(args)
        .env("CANON_HOME", home)
        .env("CANON_PYTHON", "/nonexistent/python-for-tests")
        .env_remove("CANON_CRASH_AT");
    c
}

fn run(args: &[&str], home: &Path) -> Output {
    cmd(args, home).output().expect("run canon")
}

fn ok(o: &Output) {
    assert!(
        o.status.success(),
        "canon failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Runs with `CANON_CRASH_AT=spec`; the process must die by that abort (not finish, not fail
/// with an error).
fn run_crashing(args: &[&str], home: &Path, spec: &str) {
    let o = cmd(args, home)
        .env("CANON_CRASH_AT", spec)
        .output()
        .expect("run canon");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("as a crash test asked"),
        "CANON_CRASH_AT={spec} did not stop `canon {}`: {}\n{err}",
        args.join(" "),
        o.status
    );
}

/// Starts the command, sends SIGKILL after `after`, and reports whether it had already finished.
fn run_killed(args: &[&str], home: &Path, after: Duration) -> bool {
    let mut child = cmd(args, home)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn canon");
    let start = Instant::now();
    while start.elapsed() < after {
        if child.try_wait().expect("wait").is_some() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    // `Child::kill` sends SIGKILL on Unix.
    let _ = child.kill();
    let status = child.wait().expect("wait");
    status.success()
}

fn timed(args: &[&str], home: &Path) -> Duration {
    let t = Instant::now();
    ok(&run(args, home));
    t.elapsed()
}

/// Files in `dir` other than the listed ones (temporaries a crash left, torn outputs).
fn others(dir: &Path, expected: &[&Path]) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| !expected.contains(&p.as_path()))
        .map(|p| p.display().to_string())
        .collect()
}

/// Kills and crashes `args` (which writes `out`, where `earlier` already lies) at every point; the
/// file at `out` is always `earlier` or `new`, and a final clean run leaves no temporary behind.
fn check_single_file_output(args: &[&str], home: &Path, out: &Path, earlier: &[u8], new: &[u8]) {
    assert_ne!(earlier, new, "the test needs two different outputs");
    let check = |when: &str| {
        let now = std::fs::read(out).unwrap_or_else(|e| panic!("{when}: output gone: {e}"));
        assert!(
            now == earlier || now == new,
            "{when}: {} is neither the earlier output nor the new one ({} bytes)",
            out.display(),
            now.len()
        );
    };
    let name = out.file_name().unwrap().to_str().unwrap();
    for point in ["mid-write", "before-rename"] {
        std::fs::write(out, earlier).unwrap();
        run_crashing(args, home, &format!("{point}:{name}"));
        assert_eq!(
            std::fs::read(out).unwrap(),
            earlier,
            "a crash at {point} changed the earlier output"
        );
    }
    std::fs::write(out, earlier).unwrap();
    let full = timed(args, home);
    assert_eq!(std::fs::read(out).unwrap(), new);
    for frac in [0.05, 0.25, 0.5, 0.75, 0.95] {
        std::fs::write(out, earlier).unwrap();
        run_killed(args, home, full.mul_f64(frac));
        check(&format!("SIGKILL at {:.0} % of the run", frac * 100.0));
    }
    ok(&run(args, home));
    assert_eq!(std::fs::read(out).unwrap(), new);
    let leftovers = others(out.parent().unwrap(), &[out]);
    assert!(
        leftovers.iter().all(|p| !p.contains(name)),
        "temporaries of {name} left after a clean run: {leftovers:?}"
    );
}

#[test]
fn quantize_and_merge_outputs_are_whole_or_untouched() {
    let d = tempfile::tempdir().unwrap();
    let h = d.path();
    let work = h.join("work");
    std::fs::create_dir(&work).unwrap();
    let base = work.join("base.gguf");
    write_tiny_llama(&base, &TinyLlama::default()).unwrap();
    let b = base.to_str().unwrap();

    // Two different complete outputs of `canon quantize`.
    let earlier_path = work.join("earlier.gguf");
    ok(&run(
        &[
            "-q",
            "quantize",
            "--model",
            b,
            "--method",
            "q8_0",
            "--out",
            earlier_path.to_str().unwrap(),
        ],
        h,
    ));
    let earlier = std::fs::read(&earlier_path).unwrap();
    std::fs::remove_file(&earlier_path).unwrap();
    let out_dir = h.join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("model.gguf");
    let o = out.to_str().unwrap();
    let args = [
        "-q", "quantize", "--model", b, "--method", "nf4", "--out", o,
    ];
    ok(&run(&args, h));
    let new = std::fs::read(&out).unwrap();
    check_single_file_output(&args, h, &out, &earlier, &new);

    // `canon merge` writes through the same path; check it on its own output.
    let lora = work.join("adapter");
    let mut modules = BTreeMap::new();
    for layer in 0..2 {
        modules.insert(
            format!("model.layers.{layer}.self_attn.q_proj"),
            (
                randn(&[4, 16], layer),
                (randn(&[16, 4], layer + 100) * 0.5).unwrap(),
            ),
        );
    }
    let adapter = Adapter {
        rank: 4,
        alpha: 16.0,
        scale: 4.0,
        modules,
        dropout: 0.0,
    };
    write_adapter(&lora, &adapter, "tiny").unwrap();
    let args = [
        "-q",
        "merge",
        "--model",
        b,
        "--lora",
        lora.to_str().unwrap(),
        "--out",
        o,
    ];
    std::fs::remove_file(&out).unwrap();
    ok(&run(&args, h));
    let merged = std::fs::read(&out).unwrap();
    check_single_file_output(&args, h, &out, &new, &merged);
}

const TRAIN_CONFIG: &str = r#"
[model]
family = "gpt"
n_layer = 2
n_head = 2
d_model = 32
d_ff = 64
max_seq_len = 32
block = "pre_ln"
norm = "layer_norm"
positions = "learned"
ffn = "mlp"
activation = "gelu"
bias = true
tie_embeddings = true
final_norm = true

[data]
corpus = "CORPUS"
tokenizer = "char"
max_bytes = 200_000

[train]
batch_size = 4
block_size = 32
max_steps = 60
lr = 3e-3
grad_clip = 1.0
eval_every = 1000
log_every = 1
checkpoint_every = 6

[train.schedule]
kind = "cosine"
warmup = 5
min_lr_ratio = 0.1

[train.optimizer]
kind = "adamw"
beta1 = 0.9
beta2 = 0.95
weight_decay = 0.1
"#;

fn as_refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn losses(run_dir: &Path) -> BTreeMap<u64, String> {
    let text = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
    let mut m = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if let (Some(step), Some(loss)) = (v["step"].as_u64(), v.get("loss"))
            && !loss.is_null()
        {
            m.insert(step, loss.to_string());
        }
    }
    m
}

/// The tensors of a checkpoint (weights and optimizer state), by name.
fn tensors(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, v)| (n, v.data().to_vec()))
        .collect()
}

/// Resumes `dir` to the end; a run killed before its first checkpoint is started again.
fn finish(dir: &Path, config: &Path, home: &Path) {
    let steps = "60";
    if dir.join("checkpoint.safetensors").is_file() {
        ok(&run(
            &[
                "-q",
                "--threads",
                "1",
                "train",
                "--resume",
                dir.to_str().unwrap(),
                "--max-steps",
                steps,
            ],
            home,
        ));
    } else {
        // No complete checkpoint: the resume says so in one line, and a new run replaces the folder.
        let o = run(&["-q", "train", "--resume", dir.to_str().unwrap()], home);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.starts_with("error:"), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        std::fs::remove_dir_all(dir).unwrap();
        ok(&run(
            &[
                "-q",
                "--threads",
                "1",
                "train",
                "--config",
                config.to_str().unwrap(),
                "--out",
                dir.to_str().unwrap(),
            ],
            home,
        ));
    }
}

#[test]
fn a_killed_training_run_resumes_bit_exact() {
    let d = tempfile::tempdir().unwrap();
    let h = d.path();
    let corpus = h.join("corpus.txt");
    let mut text = String::new();
    for i in 0..400 {
        text.push_str(&format!(
            "line {i}: the {} fox jumps over the {} dog.\n",
            ["quick", "slow", "red"][i % 3],
            ["lazy", "busy"][i % 2]
        ));
    }
    std::fs::write(&corpus, text).unwrap();
    let config = h.join("tiny.toml");
    std::fs::write(
        &config,
        TRAIN_CONFIG.replace("CORPUS", corpus.to_str().unwrap()),
    )
    .unwrap();
    let train = |out: &Path| -> Vec<String> {
        vec![
            "-q".into(),
            "--threads".into(),
            "1".into(),
            "train".into(),
            "--config".into(),
            config.to_str().unwrap().into(),
            "--out".into(),
            out.to_str().unwrap().into(),
        ]
    };

    let reference = h.join("reference");
    let full = timed(&as_refs(&train(&reference)), h);
    let ref_ck = tensors(&reference.join("checkpoint.safetensors"));
    let ref_losses = losses(&reference);
    assert_eq!(ref_losses.len(), 60, "one logged loss per step");

    let compare = |dir: &Path, when: &str| {
        assert_eq!(
            tensors(&dir.join("checkpoint.safetensors")),
            ref_ck,
            "{when}: the resumed run's weights or optimizer state differ"
        );
        assert_eq!(
            losses(dir),
            ref_losses,
            "{when}: the resumed run logged different losses"
        );
    };

    // Timed SIGKILLs, early to late.
    for (i, frac) in [0.1, 0.35, 0.6, 0.85].into_iter().enumerate() {
        let dir = h.join(format!("killed{i}"));
        run_killed(&as_refs(&train(&dir)), h, full.mul_f64(frac));
        finish(&dir, &config, h);
        compare(
            &dir,
            &format!("SIGKILL at {:.0} % of the run", frac * 100.0),
        );
    }
    // Crashes inside the third checkpoint write: half written, and complete but not renamed.
    for point in ["mid-write", "before-rename"] {
        let dir = h.join(format!("crash-{point}"));
        run_crashing(
            &as_refs(&train(&dir)),
            h,
            &format!("{point}:checkpoint.safetensors:3"),
        );
        let (_, header) = safetensors::SafeTensors::read_metadata(
            &std::fs::read(dir.join("checkpoint.safetensors")).unwrap(),
        )
        .unwrap();
        let step = &header.metadata().as_ref().unwrap()["step"];
        assert_eq!(
            step, "12",
            "{point}: the last complete checkpoint is step 12"
        );
        finish(&dir, &config, h);
        compare(&dir, &format!("crash at {point}"));
    }
}

#[test]
fn a_killed_lora_finetune_resumes_to_the_same_adapter() {
    let d = tempfile::tempdir().unwrap();
    let h = d.path();
    let model = h.join("tiny.gguf");
    write_tiny_llama(&model, &TinyLlama::default()).unwrap();
    let data = h.join("d.jsonl");
    let lines: Vec<String> = ["ab", "cd", "ef", "gh", "ij", "kl", "mn", "op", "qr", "st"]
        .iter()
        .map(|p| {
            let rev: String = p.chars().rev().collect();
            serde_json::json!({"prompt": format!("rev {p}:"), "completion": rev}).to_string()
        })
        .collect();
    std::fs::write(&data, lines.join("\n")).unwrap();
    let common = [
        "--lr",
        "0.05",
        "--batch-size",
        "2",
        "--eval-every",
        "5",
        "--checkpoint-every",
        "4",
        "--max-steps",
        "40",
        "--val-fraction",
        "0.2",
    ];
    let start = |out: &Path| -> Vec<String> {
        let mut v: Vec<String> = [
            "-q",
            "--threads",
            "1",
            "finetune",
            "--model",
            model.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(common.iter().map(|s| s.to_string()));
        v
    };
    let finish = |out: &Path| {
        if out.join("checkpoint.safetensors").is_file() {
            let mut args = vec!["-q", "--threads", "1", "finetune", "--resume"];
            args.push(out.to_str().unwrap());
            args.extend(common);
            ok(&run(&args, h));
        } else {
            std::fs::remove_dir_all(out).unwrap();
            ok(&run(&as_refs(&start(out)), h));
        }
    };
    let adapter = |out: &Path| std::fs::read(out.join("adapter_model.safetensors")).unwrap();
    let reference = h.join("reference");
    let full = timed(&as_refs(&start(&reference)), h);
    let want = adapter(&reference);
    for (i, frac) in [0.2, 0.5, 0.8].into_iter().enumerate() {
        let dir = h.join(format!("killed{i}"));
        run_killed(&as_refs(&start(&dir)), h, full.mul_f64(frac));
        finish(&dir);
        assert_eq!(
            adapter(&dir),
            want,
            "SIGKILL at {:.0} %: the resumed adapter differs",
            frac * 100.0
        );
    }
    for point in ["mid-write", "before-rename"] {
        let dir = h.join(format!("crash-{point}"));
        run_crashing(
            &as_refs(&start(&dir)),
            h,
            &format!("{point}:checkpoint.safetensors:2"),
        );
        finish(&dir);
        assert_eq!(
            adapter(&dir),
            want,
            "crash at {point}: the resumed adapter differs"
        );
    }
}

/// The files an index folder's content is judged by (meta.json also holds read timings).
fn index_content(dir: &Path) -> Vec<(String, Vec<u8>)> {
    ["chunks.jsonl", "vectors.f32", "bm25.bin"]
        .iter()
        .map(|f| {
            let p = dir.join(f);
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (f.to_string(), bytes)
        })
        .collect()
}

/// Tier 2: the embedding model (MiniLM) is fetched on first use into the shared cache.
#[test]
fn a_killed_index_build_leaves_the_earlier_index_or_the_new_one() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let home = std::env::var("CANON_HOME")
        .unwrap_or_else(|_| format!("{}/.cache/canon", std::env::var("HOME").unwrap_or_default()));
    let (small, large) = (p.join("small"), p.join("large"));
    std::fs::create_dir_all(&small).unwrap();
    std::fs::create_dir_all(&large).unwrap();
    std::fs::write(
        small.join("a.md"),
        "# a\n\nthe first note about tar and gzip\n",
    )
    .unwrap();
    for i in 0..60 {
        std::fs::write(
            large.join(format!("n{i:02}.md")),
            format!(
                "# note {i}\n\n## Usage\n\nCommand {i} copies files, compresses archive {i} and \
                 lists the directory sorted by time; see also note {}.\n",
                (i + 1) % 60
            ),
        )
        .unwrap();
    }
    let build = |docs: &Path, out: &str| -> Vec<String> {
        ["-q", "--threads", "1", "index", "build", "--docs"]
            .iter()
            .map(|s| s.to_string())
            .chain([
                docs.to_str().unwrap().to_string(),
                "--out".into(),
                out.into(),
            ])
            .collect()
    };
    let in_dir = |args: &[String]| -> Command {
        let mut c = cmd(&as_refs(args), Path::new(&home));
        c.current_dir(p);
        c
    };
    let ok_in = |args: &[String]| ok(&in_dir(args).output().unwrap());
    ok_in(&build(&small, "earlier.idx"));
    let t = Instant::now();
    ok_in(&build(&large, "new.idx"));
    let full = t.elapsed();
    let (earlier, new) = (
        index_content(&p.join("earlier.idx")),
        index_content(&p.join("new.idx")),
    );
    assert_ne!(earlier, new);
    let target = p.join("d.idx");
    let reset = || {
        let _ = std::fs::remove_dir_all(&target);
        ok_in(&build(&small, "d.idx"));
        assert_eq!(index_content(&target), earlier);
    };
    let args = build(&large, "d.idx");

    reset();
    let o = in_dir(&args)
        .env("CANON_CRASH_AT", "before-rename:d.idx")
        .output()
        .unwrap();
    assert!(
        !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("crash test"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        index_content(&target),
        earlier,
        "a crash before the swap changed the index"
    );
    for frac in [0.1, 0.4, 0.7, 0.95] {
        reset();
        let mut child = in_dir(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(full.mul_f64(frac));
        let _ = child.kill();
        let _ = child.wait();
        if !target.exists() {
            // Killed between the swap's two renames: the earlier index lies moved aside (and the
            // next write to d.idx puts it back, see canon-fs).
            let aside = std::fs::read_dir(p)
                .unwrap()
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with(".d.idx.old."));
            assert!(
                aside,
                "SIGKILL at {:.0} %: the index vanished",
                frac * 100.0
            );
            continue;
        }
        let now = index_content(&target);
        assert!(
            now == earlier || now == new,
            "SIGKILL at {:.0} %: the index is neither the earlier one nor the new one",
            frac * 100.0
        );
    }
    ok_in(&args);
    assert_eq!(index_content(&target), new);
    let stray: Vec<String> = std::fs::read_dir(p)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".d.idx"))
        .collect();
    assert!(stray.is_empty(), "temporaries left: {stray:?}");
}
