#!/usr/bin/env python3
"""The nanoGPT step's four matrix products per layer in PyTorch (forward, and forward + backward of
a bias-free nn.Linear), for comparison with `cargo run --release -p canon-nn --example gemm_vs_blas
-- REPS THREADS` on the same shapes. Prints the median milliseconds and GFLOP/s.

    ~/.cache/canon-peers/venv/bin/python bench/gemm_vs_torch.py --threads 1
"""
import argparse
import statistics
import time

import torch

ap = argparse.ArgumentParser()
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--reps", type=int, default=5)
a = ap.parse_args()
torch.set_num_threads(a.threads)
n = 8 * 256
for name, o, i in [("qkv", 1152, 384), ("attn out", 384, 384), ("fc1", 1536, 384), ("fc2", 384, 1536)]:
    x = torch.randn(n, i, requires_grad=True)
    lin = torch.nn.Linear(i, o, bias=False)
    g = torch.randn(n, o)
    fwd, both = [], []
    for _ in range(a.reps + 1):
        t = time.perf_counter()
        y = lin(x)
        fwd.append(time.perf_counter() - t)
        t = time.perf_counter()
        (lin(x) * g).sum().backward()
        both.append(time.perf_counter() - t)
        x.grad = None
        lin.weight.grad = None
    f, b = statistics.median(fwd[1:]), statistics.median(both[1:])
    flop = 2.0 * n * o * i
    print(f"{name:>9} [{n}x{i}]·[{i}x{o}]: fwd {f * 1e3:.1f} ms ({flop / f / 1e9:.1f} GFLOP/s), "
          f"fwd+bwd {b * 1e3:.1f} ms ({3 * flop / b / 1e9:.1f} GFLOP/s)")
