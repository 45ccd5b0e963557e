#!/usr/bin/env python3
"""Speed must not cost learning: the nanoGPT config's loss after 200 steps, over 3 seeds, for two
canon binaries (the build before a change and the build after it).

Each binary trains configs/nanogpt-bench.toml (its schedule unchanged: `--stop-at`, not
`--max-steps`) for --steps steps with each seed, evaluating the held-out loss at the last step. The
script prints, per binary, every seed's final training loss and eval loss, their mean ± sample sd,
and the difference of the means (after - before) next to the seed-to-seed sd. Runs are cached by
the binary's SHA-256, seed, steps and threads under runs/loss_check/, so a rerun after a new build
trains only the new binary.

    python3 bench/loss_check.py --before runs/canon-before --canon target/release/canon
"""

import argparse
import hashlib
import json
import os
import re
import statistics
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def sha(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def train(binary, cfg_text, steps, seed, threads, cache):
    key = cache / f"{sha(binary)}-s{seed}-n{steps}-t{threads}.json"
    if key.is_file():
        return json.loads(key.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        text = re.sub(r"(?m)^log_every\s*=.*$", "log_every = 1", cfg_text)
        text = re.sub(r"(?m)^eval_every\s*=.*$", f"eval_every = {steps}", text)
        text = re.sub(r"(?m)^checkpoint_every\s*=.*$", "checkpoint_every = 1000000", text)
        cfg = Path(tmp) / "check.toml"
        cfg.write_text(text)
        out = Path(tmp) / "run"
        cmd = [str(binary), "--threads", str(threads), "-q", "train", "--config", str(cfg),
               "--stop-at", str(steps), "--seed", str(seed), "--out", str(out)]
        subprocess.run(cmd, check=True)
        lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if l.strip()]
    train_loss = [l["loss"] for l in lines if "loss" in l and l.get("step") == steps]
    evals = [l for l in lines if any(k.startswith("eval") for k in l)]
    ev = None
    for l in evals:
        for k, v in l.items():
            if k.startswith("eval") and "loss" in k and isinstance(v, (int, float)):
                ev = v
    tps = [l["tokens_per_s"] for l in lines if "tokens_per_s" in l]
    res = {"loss": train_loss[-1] if train_loss else None, "eval_loss": ev,
           "tokens_per_s": statistics.median(tps) if tps else None,
           "losses": [l["loss"] for l in lines if "loss" in l and "step" in l]}
    cache.mkdir(parents=True, exist_ok=True)
    key.write_text(json.dumps(res))
    return res


def mean_sd(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return float("nan"), float("nan")
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "nanogpt-bench.toml")
    ap.add_argument("--canon", type=Path, default=ROOT / "target" / "release" / "canon")
    ap.add_argument("--before", type=Path, required=True, help="the canon binary before the change")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", type=Path, default=ROOT / "runs" / "loss_check")
    a = ap.parse_args()
    text = a.config.read_text()
    seeds = [int(s) for s in a.seeds.split(",")]
    load0 = os.getloadavg()
    table = {}
    for name, binary in (("before", a.before), ("after", a.canon)):
        rows = []
        for s in seeds:
            r = train(binary, text, a.steps, s, a.threads, a.cache)
            print(f"{name:6} seed {s}: loss {r['loss']:.4f}  eval {r['eval_loss'] if r['eval_loss'] is None else format(r['eval_loss'], '.4f')}"
                  f"  ({r['tokens_per_s']:.0f} tokens/s median)", flush=True)
            rows.append(r)
        table[name] = rows
    print(f"config {a.config.name}, {a.steps} steps, seeds {seeds}, {a.threads} threads")
    for key in ("loss", "eval_loss"):
        b = mean_sd([r[key] for r in table["before"]])
        c = mean_sd([r[key] for r in table["after"]])
        print(f"{key:9}: before {b[0]:.4f} ± {b[1]:.4f}, after {c[0]:.4f} ± {c[1]:.4f}, "
              f"difference {c[0] - b[0]:+.4f} (seed sd {max(b[1], c[1]):.4f})")
    same = sum(b.get("losses") == c.get("losses") and b.get("losses") is not None
               for b, c in zip(table["before"], table["after"]))
    print(f"seeds with the same loss at every step in both builds: {same} of {len(seeds)}")
    print(f"load average before and after: {load0} / {os.getloadavg()}")


if __name__ == "__main__":
    main()
