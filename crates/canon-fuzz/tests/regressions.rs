//! Inputs a fuzzer found that once crashed a target, kept as regression tests (their own test
//! binary: the check swaps the process-wide panic hook).

use std::path::Path;

use canon_fuzz::TARGETS;

/// Every input a fuzzer found that once crashed a target (`tests/regressions/<target>/`), kept as
/// a regression test. With libFuzzer's panic hook a caught panic is a crash too, so these must not
/// panic at all.
#[test]
fn past_crashes_stay_fixed() {
    let scratch = tempfile::tempdir().unwrap();
    canon_fuzz::set_scratch_root(scratch.path());
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/regressions");
    let mut n = 0;
    for (name, run) in TARGETS {
        let Ok(entries) = std::fs::read_dir(dir.join(name)) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            let data = std::fs::read(&p).unwrap();
            let hook = std::panic::take_hook();
            std::panic::set_hook(Box::new(|_| {}));
            let r = std::panic::catch_unwind(|| {
                // A panic caught inside the target still counts: detect it with a flag hook.
                let hit = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                let h = hit.clone();
                std::panic::set_hook(Box::new(move |_| {
                    h.store(true, std::sync::atomic::Ordering::SeqCst)
                }));
                run(&data);
                hit.load(std::sync::atomic::Ordering::SeqCst)
            });
            std::panic::set_hook(hook);
            assert_eq!(r.ok(), Some(false), "{name}: {} panics", p.display());
            n += 1;
        }
    }
    assert!(n >= 1, "no regression inputs found in {}", dir.display());
}
