#!/usr/bin/env python3
"""How far 8-bit embeddings move dense retrieval: for each question of a dev set, the top-k chunks
of an index built with `--model minilm:q8_0` against those of the same documents built with the
f32 model (`--model minilm`). Prints the mean overlap (recall@k of the 8-bit search against the
f32 search, the f32 results taken as the reference) and how often the first hit is the same.

  python3 scripts/q8_overlap.py --f32 runs/man.idx --q8 runs/man-q8.idx \
      --questions goldens/rag/man-devset.jsonl [--k 10] [--canon target/release/canon]
"""
import argparse
import json
import subprocess


def top(canon, index, q, k):
    r = subprocess.run([canon, "--quiet", "search", "--index", index, "--mode", "dense",
                        "--k", str(k), "--json", q], capture_output=True, text=True, check=True)
    hits = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    return [h["id"] for h in hits]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--f32", required=True)
    ap.add_argument("--q8", required=True)
    ap.add_argument("--questions", required=True)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--canon", default="target/release/canon")
    a = ap.parse_args()
    qs = [json.loads(line)["question"] for line in open(a.questions) if line.strip()]
    overlap, same_first = [], 0
    for q in qs:
        ref, got = top(a.canon, a.f32, q, a.k), top(a.canon, a.q8, q, a.k)
        ref_keys = [json.dumps(x, sort_keys=True) for x in ref]
        got_keys = [json.dumps(x, sort_keys=True) for x in got]
        overlap.append(len(set(ref_keys) & set(got_keys)) / max(len(ref_keys), 1))
        same_first += bool(ref_keys) and bool(got_keys) and ref_keys[0] == got_keys[0]
    print(json.dumps({"questions": len(qs), "k": a.k,
                      "mean_overlap_at_k": round(sum(overlap) / len(overlap), 4),
                      "min_overlap_at_k": min(overlap),
                      "same_first_hit": round(same_first / len(qs), 4)}))


if __name__ == "__main__":
    main()
