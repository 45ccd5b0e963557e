#!/usr/bin/env bash
# AutoPrompt (paper 11) on a masked LM that has read code, one command:
#   scripts/autoprompt-bert.sh [CANON_BINARY]     (environment: THREADS, default 2; SEEDS, default "0 1 2")
# 1. trains runs/bert-code (configs/bert-code.toml: a 5.3M-parameter BERT, MLM on the .py sources
#    under the standard library's folder; skipped when the run exists);
# 2. for each seed (a fact split and search order) on the stdlib-module relation: the search with
#    the reference implementation's full budget (100 steps of 10 accumulated batches of 32 facts,
#    10 candidates, 5 triggers, dev selection) beside the default hand-written prompt
#    (runs/autoprompt-bert/seedS.json), and two more hand-written prompts scored alone on the same
#    held-out facts: a code line (`from [P] import [X]`) and a call (`[P] . [X] (`);
# 3. plots docs/plots/autoprompt-bert-search.png: per seed, the dev facts' mean label
#    log-likelihood of the best triggers so far and the default hand-written prompt's.
set -euo pipefail
C=${1:-canon}
T=${THREADS:-2}
SEEDS=${SEEDS:-0 1 2}
mkdir -p runs/autoprompt-bert docs/plots
[ -f runs/bert-code/checkpoint.safetensors ] || "$C" --threads "$T" train --config configs/bert-code.toml --out runs/bert-code
for s in $SEEDS; do
  "$C" --threads "$T" autoprompt --model runs/bert-code --relation stdlib-module --steps 100 \
    --batch-size 32 --accumulation 10 --seed "$s" --json > runs/autoprompt-bert/seed$s.json
  for m in "from [P] import [X]" "[P] . [X] ("; do
    "$C" --threads "$T" autoprompt --model runs/bert-code --relation stdlib-module --steps 0 \
      --seed "$s" --manual "$m" --json
  done > runs/autoprompt-bert/seed$s-manual.jsonl
done
SEEDS="$SEEDS" scripts/autoprompt-plot.sh "$C" runs/autoprompt-bert \
  "AutoPrompt on a BERT trained on code: dev facts' mean label log-likelihood" \
  docs/plots/autoprompt-bert-search.png
