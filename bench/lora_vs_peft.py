#!/usr/bin/env python3
"""LoRA fine-tuning speed and memory: Canon against Hugging Face PEFT, in the same run.

Both train rank-8, alpha-16 adapters on all seven projections of SmolLM2-135M-Instruct, batch 4,
AdamW (lr 5e-4, no weight decay), gradient clip 0.3, loss on the completion tokens (and EOS) of the
same prompt/completion records, with the same thread count. PEFT runs over the GGUF dequantized
to f32 by transformers (its usual setting on a CPU); Canon runs three ways: `--method lora` (base
kept in the file's Q4_1/Q8_0 blocks), `--f32 --method lora` (base dequantized to f32, PEFT's
arithmetic), and `--method qlora` (NF4 base).

Printed per system: seconds per step (one step's forward, backward, clip and AdamW, as PEFT's loop
times it; mean and median over all steps, the first included), Canon's wall-clock seconds per
step of its whole loop (evaluation and checkpoint writes in it), median real (non-padding)
tokens/s over the steps after the first two (batches differ in length), CPU seconds per step and
peak RSS of the whole process (/usr/bin/time). Then the ratios, and every step's loss.

    ~/.cache/canon-peers/venv/bin/python bench/lora_vs_peft.py --steps 12 --threads 2
    ~/.cache/canon-peers/venv/bin/python bench/lora_vs_peft.py --steps 20 --lora-only --bf16 \
        --timings --before OLD_CANON

The records default to `canon flan build --tasks docstring_to_name --n 40` (made by the script).
"""

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from cpuinfo import cpu_label

ROOT = Path(__file__).resolve().parent.parent
LOAD0 = None


def canon_bin():
    exe = ROOT / "target" / "release" / "canon"
    if not exe.exists():
        subprocess.run(["cargo", "build", "--release", "-p", "canon"], cwd=ROOT, check=True)
    return str(exe)


def child_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


LAST_CPU = [0.0]


def peak_rss_mib(cmd, env=None):
    """Runs cmd under /usr/bin/time and returns (stdout, stderr, peak RSS MiB); the process's CPU
    seconds (start-up included) go to LAST_CPU."""
    c0 = child_cpu()
    p = subprocess.run(["/usr/bin/time", "-f", "MAXRSS %M"] + cmd, capture_output=True,
                       text=True, env=env)
    if p.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} failed:\n{p.stderr[-3000:]}")
    LAST_CPU[0] = child_cpu() - c0
    m = re.findall(r"MAXRSS (\d+)", p.stderr)
    return p.stdout, p.stderr, int(m[-1]) / 1024 if m else float("nan")


def canon_run(exe, data, out, steps, threads, method, f32, extra=()):
    cmd = [exe, "--threads", str(threads)] + (["--f32"] if f32 else []) + [
        "finetune", "--method", method, "--data", str(data), "--out", str(out),
        "--targets", "all", "--rank", "8", "--alpha", "16", "--batch-size", "4",
        "--max-steps", str(steps), "--eval-every", str(steps), "--checkpoint-every", str(steps),
        "--lr", "5e-4", "--grad-clip", "0.3", "--val-fraction", "0.1",
    ] + list(extra)
    stdout, stderr, rss = peak_rss_mib(cmd)
    m = re.search(r"\(([\d.]+) s/step\)", stdout + stderr)
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if l.strip()]
    rows = [r for r in rows if "tokens_per_s" in r]
    # One step's time (forward, backward, clip, AdamW: what PEFT's loop times) from its tokens
    # and tokens/s; the evaluation and checkpoint writes of the run are not in it.
    step_s, prev = [], 0
    for r in rows:
        step_s.append((r["tokens"] - prev) / r["tokens_per_s"])
        prev = r["tokens"]
    return {"tokens_per_s": statistics.median(r["tokens_per_s"] for r in rows[2:]),
            "s_per_step": statistics.mean(step_s),
            "median_s_per_step": statistics.median(step_s),
            "wall_s_per_step": float(m.group(1)) if m else float("nan"),
            "cpu_s_per_step": LAST_CPU[0] / steps,
            "peak_rss_mib": rss, "losses": [r["loss"] for r in rows],
            "timings": stdout[stdout.find("time per training step"):] if "--timings" in extra else ""}


PEFT_WORKER = r'''
import json, os, statistics, sys, time, resource
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from peft import LoraConfig, get_peft_model
gguf, data, steps, threads, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(threads)
torch.manual_seed(seed)
d, f = os.path.split(gguf)
tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32)
cfg = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=[
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], task_type="CAUSAL_LM")
model = get_peft_model(model, cfg)
model.train()
recs = [json.loads(l) for l in open(data) if l.strip()]
eos = tok.eos_token_id
ex = []
for r in recs:
    p = tok(r["prompt"], add_special_tokens=False)["input_ids"]
    c = tok(r["completion"], add_special_tokens=False)["input_ids"] + [eos]
    ids = (p + c)[:256]
    lab = ([-100] * len(p) + c)[:256]
    ex.append((ids, lab))
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-4, weight_decay=0.0)
g = torch.Generator().manual_seed(seed)
out = []
for step in range(steps):
    idx = torch.randint(len(ex), (4,), generator=g).tolist()
    batch = [ex[i] for i in idx]
    t = max(len(b[0]) for b in batch)
    ids = torch.tensor([b[0] + [eos] * (t - len(b[0])) for b in batch])
    lab = torch.tensor([b[1] + [-100] * (t - len(b[1])) for b in batch])
    att = torch.tensor([[1] * len(b[0]) + [0] * (t - len(b[0])) for b in batch])
    real = int(att.sum())
    t0 = time.perf_counter()
    loss = model(input_ids=ids, attention_mask=att, labels=lab).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 0.3)
    opt.step(); opt.zero_grad(set_to_none=True)
    dt = time.perf_counter() - t0
    out.append({"step": step + 1, "loss": float(loss), "step_s": dt, "tokens_per_s": real / dt})
print(json.dumps(out))
'''


def peft_run(venv_python, gguf, data, steps, threads, seed):
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(PEFT_WORKER)
        worker = f.name
    try:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1")
        stdout, _, rss = peak_rss_mib(
            [venv_python, worker, str(gguf), str(data), str(steps), str(threads), str(seed)], env)
    finally:
        os.unlink(worker)
    rows = json.loads(stdout.strip().splitlines()[-1])
    return {"tokens_per_s": statistics.median(r["tokens_per_s"] for r in rows[2:]),
            "s_per_step": statistics.mean(r["step_s"] for r in rows),
            "median_s_per_step": statistics.median(r["step_s"] for r in rows),
            "wall_s_per_step": float("nan"),
            "cpu_s_per_step": LAST_CPU[0] / steps,
            "peak_rss_mib": rss, "losses": [r["loss"] for r in rows]}


def cpu_name():
    return cpu_label()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", type=Path, help="prompt/completion JSONL (default: made here)")
    ap.add_argument("--gguf", type=Path, help="SmolLM2 GGUF (default: Canon's cached asset)")
    ap.add_argument("--skip-peft", action="store_true")
    ap.add_argument("--checkpointing", action="store_true",
                    help="also run Canon's lora and qlora with --checkpointing (per-block recomputation)")
    ap.add_argument("--bf16", action="store_true",
                    help="also run Canon's lora with --bf16 (bf16 products, f32 accumulation)")
    ap.add_argument("--lora-only", action="store_true",
                    help="Canon's --method lora over the file's blocks only (no --f32, no qlora rows)")
    ap.add_argument("--timings", action="store_true",
                    help="print Canon lora's step time by phase (canon finetune --timings)")
    ap.add_argument("--canon", type=Path, help="the canon binary (default: target/release/canon, built if missing)")
    ap.add_argument("--before", type=Path,
                    help="a second canon binary (e.g. the build before a change) run the same way, same run")
    args = ap.parse_args()
    if args.steps < 4:
        sys.exit("error: --steps must be at least 4 (the first two steps are warm-up)")
    exe = str(args.canon) if args.canon else canon_bin()
    global LOAD0
    LOAD0 = os.getloadavg()
    home = Path(os.environ.get("CANON_HOME", Path.home() / ".cache" / "canon"))
    gguf = args.gguf or next((home / "assets").glob("smollm2-*/SmolLM2-135M-Instruct.Q4_1.gguf"), None)
    if gguf is None or not gguf.exists():
        subprocess.run([exe, "assets", "fetch", "smollm2"], check=True)
        gguf = next((home / "assets").glob("smollm2-*/SmolLM2-135M-Instruct.Q4_1.gguf"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = args.data
        if data is None:
            data = tmp / "doc.jsonl"
            subprocess.run([exe, "-q", "flan", "build", "--tasks", "docstring_to_name", "--n", "40",
                            "--out", str(data)], check=True, capture_output=True)
        res = {}
        tm = ["--timings"] if args.timings else []
        res["canon lora (Q4_1 base)"] = canon_run(exe, data, tmp / "q", args.steps, args.threads, "lora", False, tm)
        if args.bf16:
            res["canon lora --bf16"] = canon_run(exe, data, tmp / "qb", args.steps, args.threads, "lora", False, ["--bf16"] + tm)
        if not args.lora_only:
            res["canon lora --f32"] = canon_run(exe, data, tmp / "f", args.steps, args.threads, "lora", True)
            res["canon qlora (NF4)"] = canon_run(exe, data, tmp / "n", args.steps, args.threads, "qlora", False)
        if args.checkpointing:
            ck = ["--checkpointing"]
            res["canon lora --checkpointing"] = canon_run(exe, data, tmp / "qc", args.steps, args.threads, "lora", False, ck)
            res["canon qlora --checkpointing"] = canon_run(exe, data, tmp / "nc", args.steps, args.threads, "qlora", False, ck)
        if args.before:
            b = str(args.before)
            res["canon-before lora (Q4_1)"] = canon_run(b, data, tmp / "bq", args.steps, args.threads, "lora", False)
            if not args.lora_only:
                res["canon-before lora --f32"] = canon_run(b, data, tmp / "bf", args.steps, args.threads, "lora", True)
                res["canon-before qlora (NF4)"] = canon_run(b, data, tmp / "bn", args.steps, args.threads, "qlora", False)
        if not args.skip_peft:
            res["peft lora (f32)"] = peft_run(sys.executable, gguf, data, args.steps, args.threads, 1)
    print(f"# {cpu_name()}, {args.threads} threads, {args.steps} steps (medians after 2 warm-up)")
    print(f"# load average before and after: {LOAD0} / {os.getloadavg()}")
    print("# s/step: one step's forward + backward + clip + AdamW (mean and median over the steps);")
    print("# wall s/step: Canon's whole training loop over the steps (evaluation and checkpoints in it);")
    print("# CPU s/step: the whole process's CPU seconds (start-up included) over the steps")
    print(f"{'system':<26} {'s/step':>8} {'median':>8} {'wall s/step':>12} {'tokens/s':>10} "
          f"{'CPU s/step':>11} {'peak RSS MiB':>13}")
    for k, r in res.items():
        print(f"{k:<26} {r['s_per_step']:>8.3f} {r['median_s_per_step']:>8.3f} {r['wall_s_per_step']:>12.3f} "
              f"{r['tokens_per_s']:>10.1f} {r['cpu_s_per_step']:>11.2f} {r['peak_rss_mib']:>13.0f}")
    if "peft lora (f32)" in res:
        p = res["peft lora (f32)"]
        for k in [k for k in res if k.startswith("canon")]:
            r = res[k]
            print(f"{k} / peft: steps/s {p['s_per_step'] / r['s_per_step']:.2f}x by the mean, "
                  f"{p['median_s_per_step'] / r['median_s_per_step']:.2f}x by the median; "
                  f"tokens/s {r['tokens_per_s'] / p['tokens_per_s']:.2f}x, "
                  f"peak RSS {r['peak_rss_mib'] / p['peak_rss_mib']:.2f}x")
    print("# losses per step:")
    for k, r in res.items():
        print(f"{k:<26} " + " ".join(f"{l:.4f}" for l in r["losses"]))
    for k, r in res.items():
        if r.get("timings"):
            print(f"# {k}: " + r["timings"])


if __name__ == "__main__":
    main()
