#!/usr/bin/env python3
"""Training throughput of Canon vs PyTorch on configs/nanogpt-bench.toml, in the same run.

Canon trains the config for --steps steps (every step logged); PyTorch trains an equivalent model
written here (nanoGPT's GPT shape: pre-LN blocks without biases, fused QKV, causal attention, 4x GELU
MLP, final LayerNorm, tied head, AdamW with weight decay on matrices, clip 1.0) on random tokens of
the same vocabulary, with the same batch, block and thread count. Both skip warm-up steps; the
script prints the median tokens/s of each and the ratio Canon / PyTorch.

    ~/.cache/canon-peers/venv/bin/python bench/nanogpt_vs_torch.py --steps 20 --threads 2
"""

import argparse
import json
import math
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cpuinfo import cpu_label

ROOT = Path(__file__).resolve().parent.parent


def read_config(path):
    text = path.read_text()
    try:
        import tomllib

        return text, tomllib.loads(text)
    except ImportError:  # Python < 3.11
        sys.exit("needs Python 3.11+ (tomllib)")


def child_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def canon_cpu_per_step(canon, cfg_text, steps, threads, warmup, extra=()):
    """CPU seconds per training step: two runs (warmup steps, then warmup + steps) differ by
    `steps` steps and share the start-up. Less sensitive to other processes than wall time."""
    c0 = child_cpu()
    run_canon(canon, cfg_text, warmup, threads, 0, extra)
    c1 = child_cpu()
    run_canon(canon, cfg_text, warmup + steps, threads, 0, extra)
    c2 = child_cpu()
    return ((c2 - c1) - (c1 - c0)) / steps


def proc_mem():
    """This process's resident memory and its peak so far, MiB (VmRSS, VmHWM)."""
    f = dict(l.split(":", 1) for l in Path("/proc/self/status").read_text().splitlines() if ":" in l)
    return tuple(int(f[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM"))


def run_canon(canon, cfg_text, steps, threads, warmup, extra=()):
    with tempfile.TemporaryDirectory() as tmp:
        # Log every step; evaluate only at the end (not timed as a training step).
        text = re.sub(r"(?m)^log_every\s*=.*$", "log_every = 1", cfg_text)
        text = re.sub(r"(?m)^eval_every\s*=.*$", "eval_every = 1000000", text)
        text = re.sub(r"(?m)^eval_batches\s*=.*$", "eval_batches = 1", text)
        text = re.sub(r"(?m)^checkpoint_every\s*=.*$", "checkpoint_every = 1000000", text)
        cfg = Path(tmp) / "bench.toml"
        cfg.write_text(text)
        out = Path(tmp) / "run"
        cmd = [str(canon), "--threads", str(threads), "-q", "train", "--config", str(cfg),
               "--stop-at", str(steps), "--out", str(out), *extra]
        proc = subprocess.Popen(cmd)
        # wait4: this child's own peak resident memory (KiB on Linux), not the largest so far.
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise subprocess.CalledProcessError(proc.returncode, cmd)
        lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if l.strip()]
        vocab = json.loads((out / "model.json").read_text())["vocab_size"]
    tps = [l["tokens_per_s"] for l in lines if l["step"] > warmup]
    losses = [l["loss"] for l in lines]
    run_canon.peak_rss_kib = usage.ru_maxrss
    return tps, losses, vocab


def run_torch(cfg, vocab, steps, threads, warmup, profile=False, mem=None):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    m, t = cfg["model"], cfg["train"]
    d, nh, nl, dff, T = m["d_model"], m["n_head"], m["n_layer"], m["d_ff"], m["max_seq_len"]
    B, block = t["batch_size"], t["block_size"]

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1 = nn.LayerNorm(d, bias=False)
            self.c_attn = nn.Linear(d, 3 * d, bias=False)
            self.attn_proj = nn.Linear(d, d, bias=False)
            self.ln_2 = nn.LayerNorm(d, bias=False)
            self.c_fc = nn.Linear(d, dff, bias=False)
            self.mlp_proj = nn.Linear(dff, d, bias=False)

        def forward(self, x):
            b, s, _ = x.shape
            q, k, v = self.c_attn(self.ln_1(x)).split(d, dim=2)
            q, k, v = (z.view(b, s, nh, d // nh).transpose(1, 2) for z in (q, k, v))
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.attn_proj(a.transpose(1, 2).reshape(b, s, d))
            return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(vocab, d)
            self.wpe = nn.Embedding(T, d)
            self.h = nn.ModuleList(Block() for _ in range(nl))
            self.ln_f = nn.LayerNorm(d, bias=False)
            for name, p in self.named_parameters():
                if p.dim() == 2:
                    std = 0.02 / math.sqrt(2 * nl) if name.endswith("proj.weight") else 0.02
                    nn.init.normal_(p, 0.0, std)

        def forward(self, idx, targets):
            x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
            for blk in self.h:
                x = blk(x)
            logits = self.ln_f(x) @ self.wte.weight.t()
            return F.cross_entropy(logits.view(-1, vocab), targets.view(-1))

    model = GPT()
    o = t.get("optimizer", {})
    decay = [p for p in model.parameters() if p.dim() >= 2 and p is not model.wte.weight]
    no_decay = [p for p in model.parameters() if p.dim() < 2 or p is model.wte.weight]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": o.get("weight_decay", 0.1)},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=t["lr"], betas=(o.get("beta1", 0.9), o.get("beta2", 0.95)), fused=False, foreach=True)
    tps, cpu = [], []
    for step in range(1, steps + 1):
        x = torch.randint(0, vocab, (B, block))
        y = torch.randint(0, vocab, (B, block))
        t0 = time.perf_counter()
        c0 = time.process_time()
        if mem is not None and step == 1:
            mem.append(("step start", proc_mem()))
        loss = model(x, y)
        if mem is not None and step == 1:
            mem.append(("forward done", proc_mem()))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if mem is not None and step == 1:
            mem.append(("backward done", proc_mem()))
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.get("grad_clip", 1.0))
        opt.step()
        if mem is not None and step == 1:
            mem.append(("update done", proc_mem()))
        dt = time.perf_counter() - t0
        if step > warmup:
            tps.append(B * block / dt)
            cpu.append(time.process_time() - c0)
    if profile:
        # PyTorch's own profiler over two more steps: the table to set beside train_profile's.
        from torch.profiler import ProfilerActivity, profile as tprofile

        with tprofile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(2):
                x = torch.randint(0, vocab, (B, block))
                y = torch.randint(0, vocab, (B, block))
                loss = model(x, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), t.get("grad_clip", 1.0))
                opt.step()
        print("PyTorch profiler, 2 steps, by self CPU time:")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))
    n_params = sum(p.numel() for p in model.parameters())
    return tps, n_params, torch.__version__, statistics.median(cpu)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "nanogpt-bench.toml")
    ap.add_argument("--canon", type=Path, default=ROOT / "target" / "release" / "canon")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cpu-time", action="store_true",
                    help="also measure CPU seconds per step (robust on a loaded machine; meaningful at 1 thread)")
    ap.add_argument("--before", type=Path,
                    help="a second canon binary (e.g. the build before a change), timed in the same run")
    ap.add_argument("--canon-args", default="",
                    help="extra arguments for the --canon binary's `canon train` only, e.g. "
                         "--canon-args=--bf16 (with --before the same binary: f32 against bf16)")
    ap.add_argument("--mem-trace", action="store_true",
                    help="memory by phase of the first step: Canon's CANON_MEM_TRACE lines (stderr) "
                         "and this process's resident memory / peak around PyTorch's first step")
    ap.add_argument("--torch-profile", action="store_true",
                    help="print PyTorch's profiler table (2 extra steps, by self CPU time)")
    a = ap.parse_args()
    load0 = os.getloadavg()
    if not a.canon.is_file():
        sys.exit(f"{a.canon} not found: build it with cargo build --release -p canon")
    text, cfg = read_config(a.config)
    extra = a.canon_args.split()
    if a.mem_trace:
        os.environ["CANON_MEM_TRACE"] = "1"
    c_tps, c_loss, vocab = run_canon(a.canon, text, a.steps, a.threads, a.warmup, extra)
    # Peak resident memory (KiB on Linux) of the Canon run (its own, from wait4); PyTorch trains in this process, so its peak is this process's (the interpreter included).
    c_rss = run_canon.peak_rss_kib
    # The build before runs before PyTorch is loaded: a child's peak RSS on Linux starts from
    # this process's at the fork.
    b_tps = b_loss = None
    if a.before:
        b_tps, b_loss, _ = run_canon(a.before, text, a.steps, a.threads, a.warmup)
        b_rss = run_canon.peak_rss_kib
    t_mem = [] if a.mem_trace else None
    t_tps, n_params, tv, t_cpu = run_torch(cfg, vocab, a.steps, a.threads, a.warmup, a.torch_profile, t_mem)
    t_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cm, tm = statistics.median(c_tps), statistics.median(t_tps)
    print(f"CPU: {cpu_label()}")
    print(f"config {a.config.name}: vocab {vocab}, {n_params} parameters (PyTorch count), "
          f"batch {cfg['train']['batch_size']} x block {cfg['train']['block_size']}, {a.threads} threads, "
          f"{a.steps} steps ({a.warmup} warm-up skipped)")
    print(f"canon {' '.join(extra)} median {cm:8.0f} tokens/s  (loss {c_loss[0]:.3f} -> {c_loss[-1]:.3f})")
    print(f"pytorch median {tm:8.0f} tokens/s  (torch {tv})")
    print(f"ratio canon/pytorch = {cm / tm:.2f}")
    print(f"peak RSS: canon {c_rss / 1024:.0f} MiB, pytorch process {t_rss / 1024:.0f} MiB")
    if t_mem:
        print("pytorch process, first step (rss / peak MiB): "
              + ", ".join(f"{k} {r:.0f} / {h:.0f}" for k, (r, h) in t_mem))
    if b_tps:
        bm = statistics.median(b_tps)
        print(f"before  median {bm:8.0f} tokens/s  (loss {b_loss[0]:.3f} -> {b_loss[-1]:.3f}); "
              f"ratio before/pytorch = {bm / tm:.2f}, canon/before = {cm / bm:.2f}; "
              f"peak RSS before {b_rss / 1024:.0f} MiB")
    if a.cpu_time:
        n = max(a.steps // 2, 3)
        c_cpu = canon_cpu_per_step(a.canon, text, n, a.threads, a.warmup, extra)
        line = f"CPU s/step: canon {c_cpu:.3f}, pytorch {t_cpu:.3f} (ratio pytorch/canon {t_cpu / c_cpu:.2f})"
        if a.before:
            b_cpu = canon_cpu_per_step(a.before, text, n, a.threads, a.warmup)
            line += f", before {b_cpu:.3f} (before/canon {b_cpu / c_cpu:.2f})"
        print(line)
    print(f"load average before and after: {load0} / {os.getloadavg()}")


if __name__ == "__main__":
    main()
