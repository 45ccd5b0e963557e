#!/usr/bin/env bash
# In-context learning in small GPTs trained for it (paper 10, miniature), one command:
#   scripts/icl-gpt.sh [CANON_BINARY]
# environment: THREADS (per training, default 1), SIZES (default "small medium large"),
#   DATA_SEEDS (default "1000 2000"), SKIP_TRAIN=1 (evaluate existing runs only).
# For every data seed DS (in its own folder runs/icl-dDS, since the configs read
# runs/icl-data/train.txt relative to the working folder):
# 1. writes the training text: 20000 blocks of 20 demonstrations, each block with its own random
#    mapping from a question's first letter to a digit, its questions on 2 to 8 of the 8 keys
#    (bursty blocks; seed DS);
# 2. trains every size on it with the same budget (configs/icl-{small,medium,large}.toml: 4,000
#    steps at learning rate 1e-3), the sizes side by side, then resumes each to 8,000 (the cosine
#    follows the new total);
# 3. after 4,000 and after 8,000 steps, the K sweep, K in {0, 1, 4, 8, 16}, on five held-out
#    mappings (icl-map, seeds 1-5, 100 test items each, questions on all 8 keys);
# then prints accuracy per (size, steps, K) averaged over the mappings, per data seed
# (runs/icl-eval/by-seed.jsonl) and over the data seeds (runs/icl-eval/k.jsonl), and plots each
# (size, data seed) after 8,000 steps to docs/plots/fewshot-k-icl-gpt.png and after 4,000 to
# docs/plots/fewshot-k-icl-gpt-4000.png.
set -euo pipefail
C=${1:-canon}
C=$(command -v "$C" || echo "$C")
T=${THREADS:-1}
SIZES=${SIZES:-small medium large}
DATA_SEEDS=${DATA_SEEDS:-1000 2000}
ROOT=$(pwd)
mkdir -p runs/icl-eval docs/plots
ALL=$ROOT/runs/icl-eval/all.jsonl
sweep() { # size data_seed steps (in the data seed's folder)
  for K in 0 1 4 8 16; do
    for seed in 1 2 3 4 5; do
      "$C" -q eval fewshot --model "runs/icl-$1" --task icl-map --shots $K --seed $seed \
        --max-new-tokens 4 --threads "$T" --json |
        jq -c --arg size "$1" --argjson ds "$2" --argjson steps "$3" \
          '{size: $size, data_seed: $ds, steps: $steps, k: .shots, seed, accuracy: .accuracy[0]}' >> "$ALL"
    done
  done
}
one() { # size data_seed
  local cfg=$ROOT/configs/icl-$1.toml
  if [ -z "${SKIP_TRAIN:-}" ]; then
    "$C" -q train --config "$cfg" --threads "$T" --out "runs/icl-$1"
  fi
  sweep "$1" "$2" 4000
  if [ -z "${SKIP_TRAIN:-}" ]; then
    "$C" -q train --resume "runs/icl-$1" --max-steps 8000 --threads "$T"
  fi
  sweep "$1" "$2" 8000
}
: > "$ALL"
for ds in $DATA_SEEDS; do
  W=$ROOT/runs/icl-d$ds
  mkdir -p "$W/runs/icl-data"
  (
    cd "$W"
    if [ ! -f runs/icl-data/train.txt ]; then
      "$C" eval fewshot --task icl-map --write-text runs/icl-data/train.txt --sequences 20000 \
        --block-keys 2-8 --seed "$ds"
    fi
    for size in $SIZES; do one "$size" "$ds" & done
    wait
  )
done
jq -s -c 'group_by([.size, .data_seed, .steps, .k])[] | {size: .[0].size, data_seed: .[0].data_seed, steps: .[0].steps, k: .[0].k, accuracy: (map(.accuracy) | add / length)}' \
  "$ALL" > runs/icl-eval/by-seed.jsonl
jq -s -c 'group_by([.size, .steps, .k])[] | {size: .[0].size, steps: .[0].steps, k: .[0].k, data_seeds: (map(.data_seed) | unique | length), accuracy: (map(.accuracy) | add / length)}' \
  "$ALL" > runs/icl-eval/k.jsonl
cat runs/icl-eval/by-seed.jsonl runs/icl-eval/k.jsonl
for steps in 4000 8000; do
  jq -c --argjson s $steps 'select(.steps == $s) | {model: ("icl-" + .size + ", data seed " + (.data_seed | tostring)), k, accuracy}' \
    runs/icl-eval/by-seed.jsonl > runs/icl-eval/k$steps.jsonl
done
"$C" plot --jsonl runs/icl-eval/k8000.jsonl --x k --y accuracy --group model \
  --title "icl-map: exact match against K after 8,000 steps (5 held-out mappings; two data seeds)" \
  --out docs/plots/fewshot-k-icl-gpt.png
"$C" plot --jsonl runs/icl-eval/k4000.jsonl --x k --y accuracy --group model \
  --title "icl-map: exact match against K after 4,000 steps (5 held-out mappings; two data seeds)" \
  --out docs/plots/fewshot-k-icl-gpt-4000.png
