#!/usr/bin/env python3
"""`canon serve` against llama.cpp's `llama-server`, side by side in one run, same GGUF, same threads.

Both servers get the same request mix from this one load script: C concurrent clients (C in
--concurrency, default 1, 4, 8), each sending --requests streamed chat requests of --max-tokens
generated tokens (`ignore_eos`, temperature 0.8, a different prompt per request). All servers are
started first and stay up; then --repeat rounds (at least 3) each measure every server at every C,
the servers' order rotated and the C order reversed from one round to the next, so no level's
rounds run back to back and a slow stretch of a shared machine lands on different levels in
different rounds. Reported per server and C, medians over the rounds:
  - aggregate decode tokens/s: the sum over the C clients of each one's decode rate, its tokens
    after the first over the time from its first token to its last (summed over its requests):
    the rate each user sees once text flows, added up;
  - time to first token, p50 and p95 over the round's requests (where the prompts' processing
    and the wait for a place in the batch show);
  - end to end tokens/s: all generated tokens / wall time of the round, which counts the
    prompts' processing and every request's wait for its first token too (at 8 streams each
    prompt is processed while the others wait, so this grows less with C than the decode rate);
then the spread of the tokens/s rounds (min, median, max), the ratios (C-max / C-min streams)
computed from the medians, and, per server, the peak resident memory (VmHWM) with --parallel slots
of --ctx tokens each. Both servers run with --parallel 8 slots (continuous batching) and --threads.
With --baseline BIN, a second canon binary (e.g. a build of an earlier commit) is measured in the
same rounds under the same load, and a before/after table follows.

    bash bench/setup_peers.sh          # builds llama-server into ~/.cache/canon-peers
    python3 bench/serve_vs_llama_server.py --threads 2

The CPU is named in the header. Nothing here is a pass/fail check.
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from cpuinfo import cpu_label

ROOT = Path(__file__).resolve().parent.parent
PEERS = Path(os.environ.get("CANON_PEERS", Path.home() / ".cache" / "canon-peers"))

PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle stays upright.",
    "Describe the water cycle to a child.",
    "List some uses of a paperclip and explain each.",
    "What makes a good cup of tea?",
    "Tell me about the history of the printing press.",
    "How do bees make honey?",
    "Describe a walk through an autumn forest.",
]


def cpu_name():
    return cpu_label()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(base, proc, name, limit=300):
    t0 = time.time()
    while time.time() - t0 < limit:
        if proc.poll() is not None:
            sys.exit(f"error: {name} exited with code {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(base + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except Exception:
            pass
        time.sleep(0.5)
    sys.exit(f"error: {name} was not ready after {limit} s")


def peak_rss_mb(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def one_request(base, prompt, max_tokens, seed):
    body = json.dumps({
        "messages": [{"role": "user", "content": prompt}], "stream": True,
        "max_tokens": max_tokens, "temperature": 0.8, "seed": seed, "ignore_eos": True,
        "stream_options": {"include_usage": True},
    }).encode()
    req = urllib.request.Request(base + "/v1/chat/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    first = last = None
    tokens = 0
    pieces = 0
    with urllib.request.urlopen(req, timeout=600) as r:
        for raw in r:
            line = raw.decode("utf-8", "replace").strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            msg = json.loads(line[6:])
            if msg.get("usage"):
                tokens = msg["usage"]["completion_tokens"]
            for c in msg.get("choices") or []:
                if (c.get("delta") or {}).get("content"):
                    pieces += 1
                    last = time.perf_counter() - t0
                    if first is None:
                        first = last
    if first is None:
        return tokens or pieces, float("nan"), 0.0
    return tokens or pieces, first, last - first


def round_(base, conc, requests, max_tokens, seed0):
    results = []
    lock = threading.Lock()

    rates = []

    def client(k):
        mine = []
        for j in range(requests):
            i = k * requests + j
            out = one_request(base, PROMPTS[i % len(PROMPTS)], max_tokens, seed0 + i)
            mine.append(out)
            with lock:
                results.append(out)
        # This client's decode rate: tokens after each request's first, over those requests'
        # time from the first token to the last.
        span = sum(r[2] for r in mine)
        with lock:
            rates.append(sum(max(r[0] - 1, 0) for r in mine) / span if span > 0 else 0.0)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(conc)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    toks = sum(r[0] for r in results)
    ttft = sorted(r[1] for r in results)
    p95 = ttft[min(len(ttft) - 1, int(round(0.95 * (len(ttft) - 1))))]
    return sum(rates), statistics.median(ttft), p95, toks / wall


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", default=str(Path.home() / ".cache/canon/assets/smollm2-0.1.2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--concurrency", default="1,4,8")
    ap.add_argument("--requests", type=int, default=2, help="requests per client per round")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--ctx", type=int, default=2048, help="context per slot")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved rounds per server and level (at least 3)")
    ap.add_argument("--llama-server", default=os.environ.get("LLAMA_SERVER", str(PEERS / "llama.cpp-build" / "bin" / "llama-server")))
    ap.add_argument("--canon", default="", help="the canon binary (default: target/release/canon, built if missing)")
    ap.add_argument("--baseline", default="", help="another canon binary measured in the same run (before/after)")
    ap.add_argument("--skip-llama", action="store_true", help="measure only canon (and --baseline)")
    args = ap.parse_args()
    if not Path(args.gguf).is_file():
        sys.exit(f"error: no GGUF at {args.gguf} (run `canon assets fetch` or pass --gguf)")
    if not args.skip_llama and not Path(args.llama_server).is_file():
        sys.exit(f"error: no llama-server at {args.llama_server}: run bench/setup_peers.sh first")
    canon = Path(args.canon) if args.canon else ROOT / "target" / "release" / "canon"
    if not args.canon and not canon.exists():
        subprocess.run(["cargo", "build", "--release", "-p", "canon"], cwd=ROOT, check=True)
    if args.baseline and not Path(args.baseline).is_file():
        sys.exit(f"error: no canon binary at {args.baseline} (--baseline)")
    slots = 8

    def canon_cmd(binary):
        return lambda port: [str(binary), "--threads", str(args.threads), "serve", "--model", args.gguf,
                             "--port", str(port), "--parallel", str(slots), "--ctx-size", str(args.ctx)]

    servers = {
        "canon serve": canon_cmd(canon),
        "llama-server": lambda port: [args.llama_server, "-m", args.gguf, "--port", str(port), "--host", "127.0.0.1",
                                      "--parallel", str(slots), "-c", str(args.ctx * slots), "--threads", str(args.threads),
                                      "--threads-batch", str(args.threads), "--cont-batching", "--no-webui"],
    }
    if args.skip_llama:
        del servers["llama-server"]
    if args.baseline:
        servers["canon before"] = canon_cmd(args.baseline)
    concs = [int(c) for c in args.concurrency.split(",")]
    if args.repeat < 3:
        sys.exit(f"error: --repeat must be at least 3 (medians of interleaved rounds), found {args.repeat}")
    env = dict(os.environ, LD_LIBRARY_PATH=str(Path(args.llama_server).parent))
    procs = {}
    bases = {}
    rounds = {}  # (name, c) -> [(decode tok/s, ttft p50, ttft p95, end-to-end tok/s)] in round order
    try:
        for name, cmd in servers.items():
            port = free_port()
            procs[name] = subprocess.Popen(cmd(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
            bases[name] = f"http://127.0.0.1:{port}"
            wait_ready(bases[name], procs[name], name)
            one_request(bases[name], PROMPTS[0], 8, 0)  # warm-up
        names = list(servers)
        for r in range(args.repeat):
            order = names[r % len(names):] + names[:r % len(names)]
            cs = concs if r % 2 == 0 else concs[::-1]
            for name in order:
                for c in cs:
                    got = round_(bases[name], c, args.requests, args.max_tokens, 1000 * r)
                    rounds.setdefault((name, c), []).append(got)
                    print(f"  round {r + 1}/{args.repeat} {name:13s} C={c}: decode {got[0]:7.1f} tok/s,"
                          f" end to end {got[3]:7.1f},"
                          f" TTFT p50 {got[1] * 1000:6.0f} ms, p95 {got[2] * 1000:6.0f} ms,"
                          f" load {os.getloadavg()[0]:.1f}", file=sys.stderr)
        rss = {name: peak_rss_mb(proc.pid) for name, proc in procs.items()}
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    table = {key: tuple(statistics.median(x[k] for x in rs) for k in range(4)) for key, rs in rounds.items()}

    def spread(name):
        levels = "; ".join(
            f"{c}: {min(x[0] for x in rounds[(name, c)]):.1f} / {table[(name, c)][0]:.1f} /"
            f" {max(x[0] for x in rounds[(name, c)]):.1f}" for c in concs)
        lo, hi = rounds[(name, concs[0])], rounds[(name, concs[-1])]
        by_round = ", ".join(f"{b[0] / a[0]:.2f}" for a, b in zip(lo, hi))
        e2e = ", ".join(f"{b[3] / a[3]:.2f}" for a, b in zip(lo, hi))
        return f"{levels}; {concs[-1]}/{concs[0]} within each round: {by_round} (end to end {e2e})"

    def ratio(name, k=0):
        return table[(name, concs[-1])][k] / table[(name, concs[0])][k]

    print(f"# canon serve vs llama-server — {cpu_name()}, {args.threads} threads, {slots} slots x {args.ctx} ctx,"
          f" {args.max_tokens} tokens per request, {args.requests} requests per client,"
          f" medians of {args.repeat} interleaved rounds")
    print(f"# model: {Path(args.gguf).name}; load average at the end: {os.getloadavg()[0]:.1f}")
    if args.baseline:
        print(f"# canon before: {args.baseline}")
        print("| streams | canon before decode tok/s | canon decode tok/s | after / before |"
              " before end to end | end to end | before TTFT p50/p95 ms | TTFT p50/p95 ms |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|")
        for c in concs:
            a, b = table[("canon serve", c)], table[("canon before", c)]
            print(f"| {c} | {b[0]:.1f} | {a[0]:.1f} | {a[0] / b[0]:.2f}x | {b[3]:.1f} | {a[3]:.1f} |"
                  f" {b[1] * 1000:.0f} / {b[2] * 1000:.0f} | {a[1] * 1000:.0f} / {a[2] * 1000:.0f} |")
        c1, cmax = concs[0], concs[-1]
        print(f"canon before: {cmax}-stream aggregate / {c1}-stream (medians) = {ratio('canon before'):.2f}x decode,"
              f" {ratio('canon before', 3):.2f}x end to end; peak RSS {rss['canon before']:.0f} MB")
    print("# decode tok/s min / median / max over the rounds, per number of streams:")
    for name in servers:
        print(f"#   {name}: {spread(name)}")
    if args.skip_llama:
        for c in concs:
            a = table[("canon serve", c)]
            print(f"canon C={c}: decode {a[0]:.1f} tok/s, end to end {a[3]:.1f} tok/s,"
                  f" TTFT p50 {a[1] * 1000:.0f} / p95 {a[2] * 1000:.0f} ms")
        c1, cmax = concs[0], concs[-1]
        print(f"canon: {cmax}-stream aggregate / {c1}-stream (medians) = {ratio('canon serve'):.2f}x decode,"
              f" {ratio('canon serve', 3):.2f}x end to end; peak RSS {rss['canon serve']:.0f} MB")
        return
    print("| streams | canon decode tok/s | llama-server decode tok/s | ratio | canon end to end |"
          " llama-server end to end | ratio | canon TTFT p50/p95 ms | llama-server TTFT p50/p95 ms |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c in concs:
        a, b = table[("canon serve", c)], table[("llama-server", c)]
        print(f"| {c} | {a[0]:.1f} | {b[0]:.1f} | {a[0] / b[0]:.2f}x | {a[3]:.1f} | {b[3]:.1f} | {a[3] / b[3]:.2f}x |"
              f" {a[1] * 1000:.0f} / {a[2] * 1000:.0f} | {b[1] * 1000:.0f} / {b[2] * 1000:.0f} |")
    c1, cmax = concs[0], concs[-1]
    print(f"{cmax}-stream aggregate / {c1}-stream (medians): canon {ratio('canon serve'):.2f}x decode,"
          f" {ratio('canon serve', 3):.2f}x end to end; llama-server {ratio('llama-server'):.2f}x decode,"
          f" {ratio('llama-server', 3):.2f}x end to end")
    print(f"peak RSS: canon serve {rss['canon serve']:.0f} MB, llama-server {rss['llama-server']:.0f} MB")


if __name__ == "__main__":
    main()
