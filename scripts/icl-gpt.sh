#!/usr/bin/env bash
# In-context learning in small GPTs trained for it (paper 10, miniature), one command:
#   scripts/icl-gpt.sh [CANON_BINARY]          (environment: THREADS, default 1; SKIP_TRAIN=1)
# 1. writes the training text: 20000 blocks of 20 demonstrations, each block with its own random
#    mapping from a question's first letter to a digit, its questions on 2 to 8 of the 8 keys
#    (bursty blocks; seed 1000);
# 2. trains two sizes on it with the same budget (configs/icl-small.toml, configs/icl-large.toml:
#    4,000 steps at learning rate 1e-3), then resumes both to 8,000 (the cosine follows the new
#    total);
# 3. the K sweep, K in {0, 1, 4, 8, 16}, on five held-out mappings (icl-map, seeds 1-5, 100 test
#    items each, questions on all 8 keys): accuracy per (size, K) averaged over the mappings;
# 4. plots docs/plots/fewshot-k-icl-gpt.png.
set -euo pipefail
C=${1:-canon}
T=${THREADS:-1}
mkdir -p runs/icl-data runs/icl-eval docs/plots
if [ -z "${SKIP_TRAIN:-}" ]; then
  "$C" eval fewshot --task icl-map --write-text runs/icl-data/train.txt --sequences 20000 \
    --block-keys 2-8 --seed 1000
  "$C" train --config configs/icl-small.toml --threads "$T" --out runs/icl-small &
  "$C" train --config configs/icl-large.toml --threads "$T" --out runs/icl-large &
  wait
  "$C" train --resume runs/icl-small --max-steps 8000 --threads "$T" &
  "$C" train --resume runs/icl-large --max-steps 8000 --threads "$T" &
  wait
fi
: > runs/icl-eval/all.jsonl
for size in small large; do
  for K in 0 1 4 8 16; do
    for seed in 1 2 3 4 5; do
      "$C" eval fewshot --model runs/icl-$size --task icl-map --shots $K --seed $seed \
        --max-new-tokens 4 --threads "$T" --json |
        jq -c --arg size "$size" '{size: $size, k: .shots, seed, accuracy: .accuracy[0]}' >> runs/icl-eval/all.jsonl
    done
  done
done
jq -s -c 'group_by([.size, .k])[] | {model: ("icl-" + .[0].size), k: .[0].k, accuracy: (map(.accuracy) | add / length)}' \
  runs/icl-eval/all.jsonl > runs/icl-eval/k.jsonl
"$C" plot --jsonl runs/icl-eval/k.jsonl --x k --y accuracy --group model \
  --title "icl-map: exact match against K (5 held-out mappings)" --out docs/plots/fewshot-k-icl-gpt.png
