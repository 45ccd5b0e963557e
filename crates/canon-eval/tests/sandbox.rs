//! Hostile programs against the sandbox: each attempt must fail, leave the machine as it was, and
//! the harness must go on (every test ends by running a normal program).
//!
//! These tests need `python3` and Linux; they use whatever isolation the machine grants and fail
//! when what they test is not contained (a missing facility is a failing test, not a skipped one).

use canon_eval::{Outcome, Sandbox, SandboxConfig};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `CANON_SANDBOX_DISABLE=landlock,seccomp` turns layers off, to see which test each one carries.
fn config(work_root: &Path) -> SandboxConfig {
    let disable = std::env::var("CANON_SANDBOX_DISABLE").unwrap_or_default();
    SandboxConfig {
        timeout: Duration::from_secs(1),
        memory_bytes: 512 << 20,
        max_processes: 8,
        work_root: Some(work_root.to_path_buf()),
        disable: disable
            .split(',')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
        ..SandboxConfig::default()
    }
}

fn sandbox() -> (Sandbox, tempfile::TempDir) {
    let root = tempfile::tempdir().unwrap();
    let sb = Sandbox::new(config(root.path())).unwrap();
    (sb, root)
}

/// The harness still works after an attack.
fn still_works(sb: &Sandbox) {
    assert_eq!(
        sb.run("assert [1, 2][::-1] == [2, 1]").unwrap(),
        Outcome::Passed
    );
}

fn failed(o: &Outcome) -> &str {
    match o {
        Outcome::Failed(r) => r,
        other => panic!("expected a failure, found {other:?}"),
    }
}

/// Python string literal for a path.
fn lit(p: &Path) -> String {
    format!("{:?}", p.to_str().unwrap())
}

#[test]
fn verdicts_match_human_eval() {
    let (sb, _root) = sandbox();
    assert_eq!(sb.run("x = 1\nassert x == 1").unwrap(), Outcome::Passed);
    assert_eq!(
        sb.run("assert 1 == 2").unwrap(),
        Outcome::Failed("AssertionError".into())
    );
    assert_eq!(
        failed(&sb.run("undefined_name").unwrap()),
        "NameError: name 'undefined_name' is not defined"
    );
    // Exiting early is not passing (as in the reference harness, where SystemExit is caught).
    assert!(
        failed(&sb.run("import sys\nsys.exit(0)\nassert False").unwrap()).starts_with("SystemExit")
    );
    assert!(failed(&sb.run("import os\nos._exit(0)").unwrap()).contains("before reporting"));
    assert!(failed(&sb.run("def f(:\n  pass").unwrap()).starts_with("SyntaxError"));
    // `if __name__ == "__main__"` blocks do not run (exec in fresh globals, as the reference does).
    assert_eq!(
        sb.run("if __name__ == '__main__':\n    raise ValueError")
            .unwrap(),
        Outcome::Passed
    );
    still_works(&sb);
}

#[test]
fn infinite_loop_times_out() {
    let (sb, _root) = sandbox();
    let t = Instant::now();
    assert_eq!(sb.run("while True:\n    pass").unwrap(), Outcome::TimedOut);
    let took = t.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_millis(2500),
        "took {took:?}"
    );
    // Sleeping (no CPU) is caught by the wall clock too.
    assert_eq!(
        sb.run("import time\ntime.sleep(30)").unwrap(),
        Outcome::TimedOut
    );
    still_works(&sb);
}

/// Processes whose working directory lies under `root` (every sample's cwd does).
fn processes_under(root: &Path) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cwd) = std::fs::read_link(e.path().join("cwd"))
            && cwd.starts_with(root)
        {
            out.push(pid);
        }
    }
    out
}

#[test]
fn fork_bomb_is_contained_and_leaves_nothing() {
    let root = tempfile::tempdir().unwrap();
    let root_path = root.path().canonicalize().unwrap();
    let sb = Sandbox::new(config(&root_path)).unwrap();
    // Without a process-count limit the bomb would exhaust the machine's pids: fail without it.
    let limit = sb
        .facilities()
        .into_iter()
        .find(|f| f.name == "process-count limit")
        .unwrap();
    assert!(
        limit.available,
        "no process-count limit, not running the fork bomb: {}",
        limit.detail
    );
    let bomb = "import os, time\n\
                while True:\n\
                \x20   try:\n\
                \x20       if os.fork() == 0:\n\
                \x20           try:\n\
                \x20               os.setsid()\n\
                \x20           except OSError:\n\
                \x20               pass\n\
                \x20   except OSError:\n\
                \x20       time.sleep(0.001)\n";
    let done = std::sync::atomic::AtomicBool::new(false);
    let (outcome, max_seen) = std::thread::scope(|s| {
        let watcher = s.spawn(|| {
            let mut max_seen = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                max_seen = max_seen.max(processes_under(&root_path).len());
                std::thread::sleep(Duration::from_millis(20));
            }
            max_seen
        });
        let o = sb.run(bomb).unwrap();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        (o, watcher.join().unwrap())
    });
    assert!(!outcome.passed(), "{outcome:?}");
    assert!(
        max_seen > 1,
        "the bomb never forked (saw {max_seen} processes)"
    );
    // max_processes = 8 sample processes, plus the supervisor (its cwd is the sample directory too).
    assert!(max_seen <= 9, "saw {max_seen} processes with a limit of 8");
    let left = processes_under(&root_path);
    assert!(left.is_empty(), "processes outlived the run: {left:?}");
    still_works(&sb);
}

#[test]
fn detached_daemon_does_not_outlive_the_run() {
    let root = tempfile::tempdir().unwrap();
    let root_path = root.path().canonicalize().unwrap();
    let sb = Sandbox::new(config(&root_path)).unwrap();
    // Double fork + new session: the classic way to leave a process tree. The sample itself passes.
    let daemon = "import os, time\n\
                  if os.fork() == 0:\n\
                  \x20   try:\n\
                  \x20       os.setsid()\n\
                  \x20   except OSError:\n\
                  \x20       pass\n\
                  \x20   if os.fork() == 0:\n\
                  \x20       time.sleep(60)\n\
                  \x20   os._exit(0)\n\
                  os.wait()\n\
                  time.sleep(0.2)\n";
    assert_eq!(sb.run(daemon).unwrap(), Outcome::Passed);
    let left = processes_under(&root_path);
    assert!(left.is_empty(), "processes outlived the run: {left:?}");
    still_works(&sb);
}

#[test]
fn memory_bomb_fails_inside_its_limit() {
    let root = tempfile::tempdir().unwrap();
    let cfg = SandboxConfig {
        memory_bytes: 256 << 20,
        timeout: Duration::from_secs(3),
        ..config(root.path())
    };
    let sb = Sandbox::new(cfg).unwrap();
    let t = Instant::now();
    // 4 GiB at once: the machine could give it, the 256 MiB address-space limit does not.
    assert!(failed(&sb.run("x = bytearray(4 << 30)").unwrap()).starts_with("MemoryError"));
    // Growing until refused.
    let grow = "chunks = []\nwhile True:\n    chunks.append(bytearray(16 << 20))";
    assert!(failed(&sb.run(grow).unwrap()).starts_with("MemoryError"));
    // Refused long before the 2 x 3 s the two timeouts would allow.
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t.elapsed()
    );
    still_works(&sb);
}

#[test]
fn files_outside_the_sandbox_are_untouched() {
    let (sb, _root) = sandbox();
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("victim.txt");
    std::fs::write(&victim, "original").unwrap();
    let mode = std::fs::metadata(&victim).unwrap().permissions();
    let v = lit(&victim);
    let d = lit(outside.path());
    let tmp_new = std::env::temp_dir().join(format!("canon-escape-{}", std::process::id()));
    let attacks = [
        format!("open({v}, 'w').write('pwned')"),
        format!("open({v}, 'a').write('pwned')"),
        format!("import os\nos.remove({v})"),
        format!("import os\nos.rename({v}, {v} + '.moved')"),
        format!("import os\nos.truncate({v}, 0)"),
        format!("import os\nos.chmod({v}, 0o777)"),
        format!("import os\nos.utime({v}, (0, 0))"),
        format!("import os\nos.link({v}, 'hard')\nopen('hard', 'w').write('pwned')"),
        format!("import os\nos.symlink({v}, 'soft')\nopen('soft', 'w').write('pwned')"),
        format!("import os\nopen(os.path.join({d}, 'new.txt'), 'w').write('x')"),
        format!("import os\nos.mkdir(os.path.join({d}, 'newdir'))"),
        format!("import shutil\nshutil.rmtree({d})"),
        format!("open({}, 'w').write('x')", lit(&tmp_new)),
    ];
    for a in &attacks {
        let o = sb.run(a).unwrap();
        assert!(!o.passed(), "attack succeeded: {a}");
    }
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "original");
    assert_eq!(std::fs::metadata(&victim).unwrap().permissions(), mode);
    let names: Vec<_> = std::fs::read_dir(outside.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("victim.txt")]);
    assert!(!tmp_new.exists());
    // Writing inside its own directory is allowed.
    assert_eq!(
        sb.run("open('scratch.txt', 'w').write('ok')\nassert open('scratch.txt').read() == 'ok'")
            .unwrap(),
        Outcome::Passed
    );
    still_works(&sb);
}

#[test]
fn secrets_in_home_cannot_be_read() {
    let (sb, _root) = sandbox();
    let home = PathBuf::from(std::env::var("HOME").expect("HOME is set"));
    let secret = home.join(format!(".canon-eval-secret-{}", std::process::id()));
    std::fs::write(&secret, "hunter2").unwrap();
    let s = lit(&secret);
    let read = sb.run(&format!("assert open({s}).read() == 'hunter2'"));
    let list = sb.run(&format!(
        "import os\nassert os.path.basename({s}) in os.listdir({})",
        lit(&home)
    ));
    let _ = std::fs::remove_file(&secret);
    let read = read.unwrap();
    assert!(failed(&read).starts_with("PermissionError"), "{read:?}");
    assert!(!list.unwrap().passed());
    still_works(&sb);
}

#[test]
fn network_connections_do_not_leave() {
    let (sb, _root) = sandbox();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let tcp = sb.run(&format!("import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=0.5)\ns.sendall(b'hi')"));
    let udp = sb.run(&format!("import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.sendto(b'hi', ('127.0.0.1', {port}))"));
    let unix = sb
        .run("import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect('/run/systemd/private')");
    for o in [&tcp, &udp, &unix] {
        assert!(!o.as_ref().unwrap().passed(), "{o:?}");
    }
    std::thread::sleep(Duration::from_millis(50));
    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the listener saw a connection: {other:?}"),
    }
    still_works(&sb);
}

#[test]
fn killing_the_parent_fails() {
    let (sb, _root) = sandbox();
    let me = std::process::id();
    let program = format!(
        "import os, signal\n\
         for pid in (os.getppid(), {me}):\n\
         \x20   if pid > 1:\n\
         \x20       try:\n\
         \x20           os.kill(pid, signal.SIGKILL)\n\
         \x20       except OSError:\n\
         \x20           pass\n\
         try:\n\
         \x20   os.killpg(os.getpgid({me}), signal.SIGKILL)\n\
         except OSError:\n\
         \x20   pass\n\
         os.kill({me}, signal.SIGTERM)\n"
    );
    let o = sb.run(&program).unwrap();
    // We are still here to check.
    assert!(!o.passed(), "{o:?}");
    still_works(&sb);
}
