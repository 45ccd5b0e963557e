#!/usr/bin/env python3
"""Canon against the peers users would otherwise pick, side by side in one run on one machine.

  - decode: 128 tokens after a 16-token prompt (llama-bench `-p 0 -n 128 -d 16`) vs
    `canon generate --ignore-eos --max-tokens 128` on a 16-token prompt (decode_tokens / decode_ms);
    `--depth N` puts N tokens in the context first instead of 16;
  - prefill: a 512-token prompt (llama-bench `-p 512 -n 0`) vs `canon generate --max-tokens 1` on a
    512-token prompt (prompt_tokens / prefill_ms);
  - embeddings: 1,000 sentences of ~20 words, batch 32: sentence-transformers `encode` vs
    `canon embed --timings` (model loading excluded on both sides).

Runs alternate peer and Canon, REPEAT times each, and prints medians and ratios (Canon / peer;
> 1 means Canon is faster). Set up the peers first with bench/setup_peers.sh.

Usage:
  ~/.cache/canon-peers/venv/bin/python bench/compare.py [--repeat 5] [--threads 2] [--isa avx2,avx512vnni]

`--isa` runs Canon once per listed kernel path (the CANON_ISA environment variable) in the same
interleaved loop, one row per path; without it Canon picks its best path. A path written
`avx512vnni+notile` runs with CANON_TILE=off (the row-at-a-time kernels and the f32 GEMM instead of
the tile kernels), and `avx512vnni+nopack` with CANON_PACK=off (the tile kernels unpacking the
file's blocks on every product instead of reading weights repacked once), for before/after rows
in one run. The CPU model and the
vector extensions it reports head the table.
"""

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time

from cpuinfo import cpu_label

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEERS = os.environ.get("CANON_PEERS", os.path.expanduser("~/.cache/canon-peers"))
HOME = os.environ.get("CANON_HOME", os.path.expanduser("~/.cache/canon"))
GGUF = os.path.join(HOME, "assets", "smollm2-0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf")
MINILM = os.path.join(HOME, "assets", "minilm-0.1.0")
WORDS = (
    "the model reads a sentence and writes a vector that keeps its meaning close to other "
    "sentences about the same thing while far from those about something else entirely today"
).split()


def canon_bin():
    # CANON_BIN names another build (e.g. target/debug/canon) for side-by-side rows.
    if os.environ.get("CANON_BIN"):
        return os.environ["CANON_BIN"]
    b = os.path.join(ROOT, "target", "release", "canon")
    if not os.path.exists(b):
        subprocess.run(["cargo", "build", "--release", "-p", "canon"], cwd=ROOT, check=True)
    return b


def llama_bench(args, threads):
    exe = os.path.join(PEERS, "llama.cpp-build", "bin", "llama-bench")
    out = subprocess.run(
        [exe, "-m", GGUF, "-t", str(threads), "-r", "1", "-o", "json"] + args,
        capture_output=True, text=True, check=True,
    ).stdout
    return json.loads(out)[0]["avg_ts"]


def peak_rss_mb(cmd):
    """Peak resident memory of one child process (ru_maxrss of that child alone)."""
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, ru = os.wait4(p.pid, 0)
    if status != 0:
        raise RuntimeError(f"{cmd[0]} failed with status {status}")
    return ru.ru_maxrss / 1024


def canon_generate(exe, prompt, max_tokens, threads, extra=(), isa=None):
    env = dict(os.environ)
    if isa:
        # `avx512vnni+notile`: that path with the tile kernels off (CANON_TILE=off).
        path, _, flag = isa.partition("+")
        env["CANON_ISA"] = path
        if flag == "notile":
            env["CANON_TILE"] = "off"
        if flag == "nopack":
            env["CANON_PACK"] = "off"
    out = subprocess.run(
        [exe, "--quiet", "--threads", str(threads), "generate", "--model", GGUF, "--prompt", prompt,
         "--max-tokens", str(max_tokens), "--temperature", "0", "--json", *extra],
        capture_output=True, text=True, check=True, env=env,
    ).stdout
    return json.loads(out)["timings"]


def prompt_of(exe, n_tokens):
    """A prompt of exactly n_tokens tokens under SmolLM2's tokenizer."""
    # Cut a long text at the first word boundary that gives n_tokens tokens (binary search).
    words = WORDS * (n_tokens // len(WORDS) + 2)
    lo, hi = 1, len(words)
    while lo < hi:
        mid = (lo + hi) // 2
        t = " ".join(words[:mid])
        n = len(json.loads(subprocess.run(
            [exe, "--quiet", "tokenize", "--model", GGUF, "--text", t, "--json"],
            capture_output=True, text=True, check=True).stdout)["ids"])
        if n < n_tokens:
            lo = mid + 1
        else:
            hi = mid
    return " ".join(words[:lo])


def sentences(n, seed=0):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(20)) for _ in range(n)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip", default="", help="comma list of decode,rss,prefill,embed to skip")
    ap.add_argument("--depth", type=int, default=16,
                    help="tokens already in the context before the 128 decoded ones (default 16; "
                    "e.g. 1024 for decoding deep into a conversation)")
    ap.add_argument("--isa", default="", help="comma list of Canon kernel paths (scalar,avx2,avxvnni,avx512vnni)")
    ap.add_argument("--model", default="", help="a GGUF file for the decode/prefill rows "
                    "(default: the SmolLM2 Q4_1 asset; e.g. the gemma3 asset's Q4_K_M file)")
    a = ap.parse_args()
    if a.model:
        global GGUF
        GGUF = os.path.abspath(a.model)
    isas = [i for i in a.isa.split(",") if i] or [None]

    def label(isa):
        return f" [Canon {isa}]" if isa else ""
    skip = set(filter(None, a.skip.split(",")))
    exe = canon_bin()
    subprocess.run([exe, "--quiet", "assets", "fetch", "smollm2"], check=True, capture_output=True)
    subprocess.run([exe, "--quiet", "assets", "fetch", "minilm"], check=True, capture_output=True)
    rows = []
    load = open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else []
    print(f"CPU: {cpu_label()}, threads {a.threads}, "
          f"median of {a.repeat}, load average at start {' '.join(load)}", flush=True)

    if "decode" not in skip:
        depth = str(a.depth)
        p16 = prompt_of(exe, a.depth)
        peer, ours = [], {i: [] for i in isas}
        for _ in range(a.repeat):
            peer.append(llama_bench(["-p", "0", "-n", "128", "-d", depth], a.threads))
            for isa in isas:
                t = canon_generate(exe, p16, 128, a.threads, ["--ignore-eos"], isa)
                ours[isa].append(t["decode_tokens"] / t["decode_ms"] * 1e3)
        for isa in isas:
            rows.append((f"decode tg128 @{depth} (tok/s){label(isa)}", "llama.cpp", peer, ours[isa]))
        peer, ours = [], []
        for _ in range(0 if "rss" in skip else a.repeat):
            peer.append(peak_rss_mb([os.path.join(PEERS, "llama.cpp-build", "bin", "llama-bench"),
                                     "-m", GGUF, "-t", str(a.threads), "-r", "1",
                                     "-p", "0", "-n", "128", "-d", depth]))
            ours.append(peak_rss_mb([exe, "--quiet", "--threads", str(a.threads), "generate",
                                     "--model", GGUF, "--prompt", p16, "--max-tokens", "128",
                                     "--temperature", "0", "--ignore-eos"]))
        if "rss" not in skip:
            rows.append(("peak RSS while decoding (MB; lower is better)", "llama.cpp", peer, ours))

    if "prefill" not in skip:
        p512 = prompt_of(exe, 512)
        peer, ours = [], {i: [] for i in isas}
        for _ in range(a.repeat):
            peer.append(llama_bench(["-p", "512", "-n", "0"], a.threads))
            for isa in isas:
                t = canon_generate(exe, p512, 1, a.threads, (), isa)
                ours[isa].append(t["prompt_tokens"] / t["prefill_ms"] * 1e3)
        for isa in isas:
            rows.append((f"prefill pp512 (tok/s){label(isa)}", "llama.cpp", peer, ours[isa]))

    if "embed" not in skip:
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(a.threads)
        sents = sentences(1000)
        st = SentenceTransformer(MINILM, device="cpu")
        st.encode(sents[:64], batch_size=32)  # warm-up
        data = "\n".join(sents) + "\n"
        peer, ours = [], []
        for _ in range(a.repeat):
            t0 = time.perf_counter()
            st.encode(sents, batch_size=32)
            peer.append(len(sents) / (time.perf_counter() - t0))
            r = subprocess.run(
                [exe, "--quiet", "--threads", str(a.threads), "embed", "--model", MINILM,
                 "--batch-size", "32", "--timings"],
                input=data, capture_output=True, text=True, check=True)
            ours.append(json.loads(r.stderr.strip().splitlines()[-1])["texts_per_s"])
        rows.append(("embeddings, 1000 x ~20 words, batch 32 (texts/s)", "sentence-transformers", peer, ours))

    print()
    print(f"| measure | peer | peer median | Canon median | Canon / peer |")
    print(f"|---|---|---|---|---|")
    for name, peer_name, peer, ours in rows:
        pm, om = statistics.median(peer), statistics.median(ours)
        print(f"| {name} | {peer_name} | {pm:.1f} | {om:.1f} | {om / pm:.2f} |")
    print()
    print("Canon / peer > 1 means Canon is faster, except for memory, where it means Canon uses more.")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
