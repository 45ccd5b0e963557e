#!/usr/bin/env bash
# The K sweep of paper 10 on SmolLM2 for the tasks built from this machine's data:
# gettext-de and stdlib-module, K in {0, 1, 4, 8, 16}, the first LIMIT test items, seed 0.
# Usage: scripts/fewshot-smollm2.sh [CANON_BINARY]; JSON results in runs/fewshot-eval/.
set -euo pipefail
C=${1:-canon}
LIMIT=${LIMIT:-40}
mkdir -p runs/fewshot-eval
for task in gettext-de stdlib-module; do
  for K in 0 1 4 8 16; do
    "$C" eval fewshot --model smollm2 --task $task --shots $K --limit "$LIMIT" --seed 0 \
      --threads "${THREADS:-1}" --json > runs/fewshot-eval/smollm2-$task-k$K.json
  done
done
# One plot per task: accuracy against K under each normalisation.
for task in gettext-de stdlib-module; do
  for K in 0 1 4 8 16; do
    f=runs/fewshot-eval/smollm2-$task-k$K.json
    [ -s "$f" ] || continue
    jq -c '.shots as $k | [["sum", .accuracy[0]], ["per-token mean", .accuracy[1]], ["unconditional", .accuracy[2]]][] | {normalisation: .[0], k: $k, accuracy: .[1]}' "$f"
  done > runs/fewshot-eval/$task.jsonl
  "$C" plot --jsonl runs/fewshot-eval/$task.jsonl --x k --y accuracy --group normalisation \
    --title "$task: SmolLM2-135M accuracy against K (first $LIMIT test items)" \
    --out docs/plots/fewshot-k-$task-smollm2.png
done
