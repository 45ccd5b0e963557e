#!/usr/bin/env python3
"""Batched generation throughput: `canon generate --n K` against one sequence at a time, same run.

For K in --ks (default 1, 4, 8, 16), Canon samples K completions of one prompt together (one forward
pass per step for all of them) and reports the aggregate generated tokens/s over the whole
generation (prefill included). The baseline is the single-sequence path (`--n 1`, the same prompt,
K different seeds run one after another), timed the same way (prefill + decode, model load excluded).
Medians over --repeat runs; the CPU is named in the header.

    python3 bench/batch_generate.py --threads 2 --max-tokens 64
"""

import argparse
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

from cpuinfo import cpu_label

ROOT = Path(__file__).resolve().parent.parent


def canon_bin():
    # CANON_BIN names another build (e.g. target/debug/canon).
    import os
    if os.environ.get("CANON_BIN"):
        return os.environ["CANON_BIN"]
    exe = ROOT / "target" / "release" / "canon"
    if not exe.exists():
        subprocess.run(["cargo", "build", "--release", "-p", "canon"], cwd=ROOT, check=True)
    return str(exe)


def cpu_name():
    return cpu_label()


def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} failed:\n{p.stderr[-2000:]}")
    return p


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--prompt", default="Write a short story about a lighthouse keeper.")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ks", default="1,4,8,16")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    exe = canon_bin()
    base = [exe, "--threads", str(args.threads), "generate", "--model", args.model, "--prompt",
            args.prompt, "--max-tokens", str(args.max_tokens), "--ignore-eos", "--temperature", "0.8"]
    # Single-sequence rate: prefill + decode of one completion, from --json timings.
    single = []
    for r in range(args.repeat):
        out = json.loads(run(base + ["--seed", str(r), "--json"]).stdout)
        t = out["timings"]
        single.append((t["decode_tokens"]) / ((t["prefill_ms"] + t["decode_ms"]) / 1e3))
    single_tps = statistics.median(single)
    print(f"# {cpu_name()}, {args.threads} threads, {args.max_tokens} tokens per completion, "
          f"medians of {args.repeat}")
    print(f"{'streams':>8} {'aggregate tok/s':>16} {'x single':>9}")
    print(f"{'1 (loop)':>8} {single_tps:>16.1f} {1.0:>9.2f}")
    for k in [int(x) for x in args.ks.split(",")]:
        rates = []
        for r in range(args.repeat):
            err = run(base + ["--seed", str(100 * r), "--n", str(k)]).stderr
            m = re.search(r"\(([\d.]+) tok/s aggregate\)", err)
            if k == 1:
                out = json.loads(run(base + ["--seed", str(100 * r), "--json"]).stdout)
                t = out["timings"]
                rates.append(t["decode_tokens"] / ((t["prefill_ms"] + t["decode_ms"]) / 1e3))
            elif m:
                rates.append(float(m.group(1)))
        med = statistics.median(rates)
        print(f"{k:>8} {med:>16.1f} {med / single_tps:>9.2f}")


if __name__ == "__main__":
    main()
