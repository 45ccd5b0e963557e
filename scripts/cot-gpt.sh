#!/usr/bin/env bash
# Chain of thought in small GPTs trained for it (paper 18, miniature): writes the two training
# corpora from the problem generator, trains the answer-only and the rationale arm (same model,
# same steps and tokens), then evaluates both on held-out problems of 1-6 steps and runs
# self-consistency on the rationale arm. Usage: scripts/cot-gpt.sh [CANON_BINARY]
set -euo pipefail
C=${1:-canon}
T=${THREADS:-1}
mkdir -p runs/cot-data runs/cot-eval
for f in rationale direct; do
  "$C" eval cot --generate 20000 --steps 1-6 --max-value 99 --seed 777 \
    --write-text runs/cot-data/$f.txt --text-format $f
done
"$C" train --config configs/cot-gpt.toml --threads "$T" --out runs/cot-rationale &
"$C" train --config configs/cot-gpt-direct.toml --threads "$T" --out runs/cot-direct &
wait
# Held-out problems (seed 1, a different seed from the training corpus), 1-6 steps.
for arm in rationale direct; do
  "$C" eval cot --model runs/cot-$arm --generate 300 --steps 1-6 --max-value 99 --seed 1 \
    --shots 0 --samples 1 --max-tokens 400 --threads "$T" --json > runs/cot-eval/$arm.json
done
# Self-consistency on the rationale arm: m sampled rationales, majority vote, against greedy.
"$C" eval cot --model runs/cot-rationale --generate 120 --steps 1-6 --max-value 99 --seed 2 \
  --shots 0 --samples 1,3,5,10,20,40 --max-tokens 400 --threads "$T" --json > runs/cot-eval/vote.json
