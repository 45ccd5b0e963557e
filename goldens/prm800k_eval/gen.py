"""Golden for canon_align::prm_eval: PRM800K's best-of-N protocol run by Python's own `random`.

The fixture (samples.jsonl) is built here from a fixed seed: 9 problems with 0 to 12 samples
each, some without an answer (null `answer`, or only `given_answer`), tied scores, and one
problem whose samples are all unanswered. The protocol below is the released evaluation's loop
(pad each problem with None to a fixed total, shuffle, keep the first n, drop None and
unanswered, pick the max score, the earliest on a tie; pass rate over all problems), seeded with
`random.seed(SEED)` before each method's run because the reference leaves it unseeded.

Run: python3 goldens/prm800k_eval/gen.py  (standard library only; Python 3.11.7 wrote the
committed files).
"""
import json
import os
import random
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SEED = 20231
TOTAL = 16
NS = [1, 2, 3, 5, 8, 12, 16]
TRIALS = 40


def fixture():
    r = random.Random(7)
    out = []
    for p in range(9):
        k = [0, 1, 3, 5, 8, 12, 12, 4, 6][p]
        for j in range(k):
            s = {"problem": f"problem {p}"}
            mode = r.random()
            if p == 7:
                s["answer"] = None
            elif mode < 0.15:
                s["answer"] = None
                s["given_answer"] = "7"
            elif mode < 0.3:
                s["given_answer"] = str(r.randint(0, 9))
            else:
                s["answer"] = str(r.randint(0, 9))
            # Tied scores in problem 5.
            s["prm_score"] = 0.5 if p == 5 and j % 3 == 0 else round(r.random(), 4)
            s["orm_score"] = round(r.random(), 4)
            s["is_correct"] = r.random() < 0.4
            out.append(s)
    # Interleave problems so grouping must keep first-appearance order.
    r.shuffle(out)
    return out


def get_answer(s):
    return s.get("answer", s.get("given_answer", None))


def protocol(samples, key):
    groups = {}
    for s in samples:
        groups.setdefault(s["problem"], []).append(s)
    random.seed(SEED)
    trials = []
    for _ in range(TRIALS):
        rates = []
        for n in NS:
            correct = 0
            for _, ps in groups.items():
                ps = ps + [None] * (TOTAL - len(ps))
                random.shuffle(ps)
                sub = [x for x in ps[:n] if x is not None and get_answer(x) is not None]
                choice = max(sub, key=lambda x: x[key]) if sub else None
                if choice is not None and choice["is_correct"]:
                    correct += 1
            rates.append(correct / len(groups))
        trials.append(rates)
    return trials


def main():
    samples = fixture()
    with open(os.path.join(HERE, "samples.jsonl"), "w") as f:
        for s in samples:
            f.write(json.dumps(s) + "\n")
    expected = {
        "python": sys.version.split()[0],
        "seed": SEED,
        "total": TOTAL,
        "ns": NS,
        "trials": TRIALS,
        "prm": protocol(samples, "prm_score"),
        "orm": protocol(samples, "orm_score"),
    }
    with open(os.path.join(HERE, "expected.json"), "w") as f:
        json.dump(expected, f)
        f.write("\n")


if __name__ == "__main__":
    main()
