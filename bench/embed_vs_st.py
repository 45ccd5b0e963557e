#!/usr/bin/env python3
"""MiniLM sentence embeddings: Canon against sentence-transformers, same machine, same run.

Both embed the same 1,000 sentences of ~20 words (bench/compare.py's generator, seed 0) with
all-MiniLM-L6-v2 from Canon's asset cache, batch 32, on --threads threads (torch.set_num_threads on
the peer, `canon --threads` on Canon). Rounds alternate which side goes first; each round times one
`SentenceTransformer.encode` call and one `canon embed --timings` run (the embedding time it reports:
tokenization and forward passes, model loading excluded on both sides). Prints every round with the
load average, then medians and the ratio (Canon / peer; > 1 means Canon is faster), and checks that
the two sides' embeddings agree.

Usage (set the peers up first with bench/setup_peers.sh):
  ~/.cache/canon-peers/venv/bin/python bench/embed_vs_st.py [--repeat 7] [--threads 2]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402  (sentences, paths, CPU model, the Canon binary)


def canon_embed(exe, data, threads, batch):
    r = subprocess.run(
        [exe, "--quiet", "--threads", str(threads), "embed", "--model", compare.MINILM,
         "--batch-size", str(batch), "--timings"],
        input=data, capture_output=True, text=True, check=True)
    timing = json.loads(r.stderr.strip().splitlines()[-1])
    return timing["texts_per_s"], r.stdout


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--sentences", type=int, default=1000)
    a = ap.parse_args()

    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    exe = compare.canon_bin()
    subprocess.run([exe, "--quiet", "assets", "fetch", "minilm"], check=True, capture_output=True)
    torch.set_num_threads(a.threads)
    sents = compare.sentences(a.sentences)
    data = "\n".join(sents) + "\n"
    st = SentenceTransformer(compare.MINILM, device="cpu")
    st.encode(sents[:64], batch_size=a.batch_size)  # warm-up
    ntok = [len(x) for x in st.tokenizer(sents)["input_ids"]]
    print(f"CPU: {compare.cpu_label()}, {os.cpu_count()} logical CPUs, threads {a.threads}, "
          f"torch {torch.__version__}, batch {a.batch_size}, {len(sents)} sentences "
          f"of {min(ntok)}-{max(ntok)} tokens", flush=True)

    peer, ours = [], []
    ref = canon_out = None
    for i in range(a.repeat):
        def run_peer():
            t0 = time.perf_counter()
            e = st.encode(sents, batch_size=a.batch_size)
            peer.append(len(sents) / (time.perf_counter() - t0))
            return e

        def run_ours():
            tps, out = canon_embed(exe, data, a.threads, a.batch_size)
            ours.append(tps)
            return out

        if i % 2 == 0:
            ref = run_peer()
            canon_out = run_ours()
        else:
            canon_out = run_ours()
            ref = run_peer()
        load = os.getloadavg()[0]
        print(f"round {i + 1}: sentence-transformers {peer[-1]:7.1f} texts/s   "
              f"Canon {ours[-1]:7.1f} texts/s   (load average {load:.2f})", flush=True)

    got = np.array([json.loads(line)["embedding"] for line in canon_out.splitlines()], dtype=np.float32)
    diff = float(np.abs(got - np.asarray(ref, dtype=np.float32)).max())
    pm, om = statistics.median(peer), statistics.median(ours)
    print()
    print("| measure | peer | peer median | Canon median | Canon / peer |")
    print("|---|---|---|---|---|")
    print(f"| embeddings, {len(sents)} x ~20 words, batch {a.batch_size} (texts/s) | "
          f"sentence-transformers | {pm:.1f} | {om:.1f} | {om / pm:.2f} |")
    print(f"\nmax |Canon - sentence-transformers| over all {got.size} components: {diff:.2e}")
    if diff > 1e-5:
        sys.exit(f"embeddings disagree: max |diff| {diff:.2e} > 1e-5")


if __name__ == "__main__":
    main()
