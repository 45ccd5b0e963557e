#!/usr/bin/env python3
"""Every matrix product of one nanoGPT training step's linears, alone, in PyTorch (its BLAS), on
the same shapes and operand layouts as `cargo run --release -p canon-nn --example gemm_roofline`:
`y = x Wᵀ`, `dx = g W`, `dW = gᵀ x` (1 thread: the thread's CPU time; more: wall clock). Prints median milliseconds and GFLOP/s per product.

    ~/.cache/canon-peers/venv/bin/python bench/gemm_roofline_torch.py --threads 2
"""
import argparse
import statistics
import time

import torch

ap = argparse.ArgumentParser()
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--reps", type=int, default=7)
a = ap.parse_args()
n = 8 * 256
total = {1: 0.0, a.threads: 0.0}
for name, o, i in [("qkv", 1152, 384), ("attn out", 384, 384), ("fc1", 1536, 384), ("fc2", 384, 1536)]:
    x, w, g = torch.rand(n, i) - 0.5, torch.rand(o, i) - 0.5, torch.rand(n, o) - 0.5
    y, dx, dw = torch.empty(n, o), torch.empty(n, i), torch.empty(o, i)
    flop = 2.0 * n * o * i
    for th in sorted({1, a.threads}):
        torch.set_num_threads(th)
        line = f"{name:>9} n={n} out={o} in={i} threads={th}:"
        for what, f in [("y=xWt", lambda: torch.mm(x, w.t(), out=y)),
                        ("dx=gW", lambda: torch.mm(g, w, out=dx)),
                        ("dW=gtx", lambda: torch.mm(g.t(), x, out=dw))]:
            ts = []
            for _ in range(a.reps + 1):
                # One thread runs on this thread: its CPU time is steadier on a shared machine.
                clock = time.thread_time if th == 1 else time.perf_counter
                t = clock()
                f()
                ts.append(clock() - t)
            med = statistics.median(ts[1:])
            total[th] += med
            line += f"  {what} {med * 1e3:.2f} ms {flop / med / 1e9:.0f} GF/s"
        print(line)
print(f"sum of the 12 products (one layer): {total[1] * 1e3:.1f} ms at 1 thread, "
      f"{total[a.threads] * 1e3:.1f} ms at {a.threads}")
