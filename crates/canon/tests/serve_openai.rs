//! Tier 2: the official `openai` Python client against `canon serve` on SmolLM2 and MiniLM, on a
//! free loopback port. The client comes from the interpreter in `CANON_TEST_PYTHON` (`.ci/run`
//! makes a venv with `openai` and sets it); without one the test says so and checks nothing else.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn the_openai_client_drives_canon_serve() {
    let Ok(python) = std::env::var("CANON_TEST_PYTHON") else {
        eprintln!("skipped: set CANON_TEST_PYTHON to a Python with the `openai` package");
        return;
    };
    let exe = env!("CARGO_BIN_EXE_canon");
    let dir = tempfile::tempdir().unwrap();
    let texts = ["A man is eating food.", "Crème brûlée", "", "fn main() {}"];
    let mut args = vec!["-q", "embed", "--model", "minilm"];
    for t in &texts {
        args.extend_from_slice(&["--text", t]);
    }
    let out = Command::new(exe).args(&args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reference = dir.path().join("embeddings.jsonl");
    std::fs::write(&reference, &out.stdout).unwrap();

    let mut server = Command::new(exe)
        .args([
            "serve",
            "--model",
            "smollm2",
            "--embedding-model",
            "minilm",
            "--port",
            "0",
            "--parallel",
            "4",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();
    // Ready once /health answers 200.
    let addr = url.trim_start_matches("http://").to_string();
    let t0 = Instant::now();
    loop {
        let ok = std::net::TcpStream::connect(&addr).is_ok_and(|mut s| {
            use std::io::{Read, Write};
            let _ = write!(s, "GET /health HTTP/1.0\r\n\r\n");
            let mut b = String::new();
            let _ = s.read_to_string(&mut b);
            b.starts_with("HTTP/1.0 200") || b.starts_with("HTTP/1.1 200")
        });
        if ok {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "server not ready");
        std::thread::sleep(Duration::from_millis(200));
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openai_client.py");
    let r = Command::new(&python)
        .args([script, &format!("{url}/v1"), reference.to_str().unwrap()])
        .output()
        .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        r.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&r.stdout),
        String::from_utf8_lossy(&r.stderr)
    );
}
