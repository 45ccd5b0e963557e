#!/usr/bin/env bash
# ReAct's fine-tuning comparison (paper 23) in miniature, one LoRA adapter per method as the paper
# trains them: oracle trajectories of the train questions for ReAct, Act and CoT, 300 random
# records of each (seeded), one adapter per method on its own records, then every method prompted
# (3 demonstrations, base model) and fine-tuned (0 demonstrations, its adapter) on the same test
# questions. Prints one line per run and writes OUT/scores.jsonl for `canon plot`.
#
#   scripts/react-finetune.sh [OUT] [STEPS] [LIMIT]      (defaults: runs/react-ft, 40, 100)
#
# 40 steps of 4 records give each adapter 160 trajectories of its method; the shared adapter of
# README (100 steps over a mix of the three) saw about 133 of each.
# Environment: CANON (the binary, default target/release/canon), THREADS (default 2), SEED (8),
# PROMPTED=0 to skip the prompted runs (they do not depend on the adapters).
set -euo pipefail
OUT="${1:-runs/react-ft}"
STEPS="${2:-40}"
LIMIT="${3:-100}"
CANON="${CANON:-target/release/canon}"
THREADS="${THREADS:-2}"
SEED="${SEED:-8}"
DATA=data/react
mkdir -p "$OUT"

[ -s "$OUT/oracle.jsonl" ] || "$CANON" agent react --data "$DATA" --oracle --mode all --shots 0 \
    --split train --out "$OUT/oracle.jsonl"

# Each record's method, read from its completion: ReAct has thoughts and actions, Act actions only,
# CoT neither. 300 of each, drawn with Python's random.Random(SEED).sample.
python3 - "$OUT" "$SEED" <<'EOF'
import json, random, sys
out, seed = sys.argv[1], int(sys.argv[2])
by = {"react": [], "act": [], "cot": []}
for line in open(f"{out}/oracle.jsonl"):
    c = json.loads(line)["completion"]
    mode = "react" if "Thought 1:" in c and "Action 1:" in c else "act" if "Action 1:" in c else "cot"
    by[mode].append(line)
rng = random.Random(seed)
for mode, lines in by.items():
    pick = rng.sample(lines, 300)
    with open(f"{out}/train-{mode}.jsonl", "w") as f:
        f.writelines(pick)
    print(f"{mode}: {len(lines)} oracle records, 300 kept", file=sys.stderr)
EOF

for mode in react act cot; do
    if [ ! -f "$OUT/lora-$mode/adapter_model.safetensors" ]; then
        "$CANON" finetune --model smollm2 --method lora --data "$OUT/train-$mode.jsonl" \
            --out "$OUT/lora-$mode" --max-steps "$STEPS" --batch-size 4 --max-len 512 --rank 8 \
            --alpha 16 --targets all --lr 1e-3 --eval-every 10 --eval-batches 4 \
            --checkpoint-every 10 --threads "$THREADS" --seed "$SEED"
    fi
done

: > "$OUT/scores.jsonl"
for mode in react act cot; do
    for setup in prompted fine-tuned; do
        if [ "$setup" = prompted ] && [ "${PROMPTED:-1}" = 0 ]; then continue; fi
        if [ "$setup" = prompted ]; then args=(--shots 3); else args=(--shots 0 --lora "$OUT/lora-$mode"); fi
        t0=$(date +%s)
        "$CANON" agent react --data "$DATA" --mode "$mode" "${args[@]}" --limit "$LIMIT" \
            --parallel 4 --threads "$THREADS" --out "$OUT/$setup-$mode.jsonl" --json > "$OUT/$setup-$mode.json"
        t1=$(date +%s)
        python3 - "$OUT/$setup-$mode.json" "$mode" "$setup" "$((t1 - t0))" >> "$OUT/scores.jsonl" <<'EOF'
import json, sys
path, mode, setup, secs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
r = json.load(open(path))
s = next(x for x in r["scores"] if x["mode"] == mode)
print(json.dumps({"method": {"react": "ReAct", "act": "Act", "cot": "CoT"}[mode], "setup": setup,
                  "exact_match_pct": round(100 * s["exact_match"], 1), "correct": s["correct"],
                  "questions": s["questions"], "finished": s["finished"], "steps": s["steps"],
                  "invalid_actions": s["invalid_actions"], "seconds": secs}))
em = f'{s["correct"]}/{s["questions"]}'
print(f"{mode} {setup}: exact match {em} in {secs} s", file=sys.stderr)
EOF
    done
done
echo "scores: $OUT/scores.jsonl"
