#!/usr/bin/env bash
# AutoPrompt (paper 11) on SmolLM2, one command:
#   scripts/autoprompt.sh [CANON_BINARY]          (environment: THREADS, default 1; SEEDS, default "0 1")
# 1. for each seed (a fact split and search order): the search with the reference's protocol at a
#    CPU budget (60 steps, 2 accumulated batches of 32 facts, 10 candidates, dev selection), the
#    hand-written prompt beside it, both on the held-out facts (runs/autoprompt/seedS.json);
# 2. plots docs/plots/autoprompt-search.png: per seed, the dev facts' mean label log-likelihood
#    after each change of a trigger, and the hand-written prompt's on the same facts.
set -euo pipefail
C=${1:-canon}
T=${THREADS:-1}
SEEDS=${SEEDS:-0 1}
mkdir -p runs/autoprompt docs/plots
for s in $SEEDS; do
  "$C" --threads "$T" autoprompt --model smollm2 --relation stdlib-module --steps 60 \
    --batch-size 32 --accumulation 2 --seed "$s" --json > runs/autoprompt/seed$s.json
done
SEEDS="$SEEDS" scripts/autoprompt-plot.sh "$C" runs/autoprompt \
  "AutoPrompt on SmolLM2: dev facts' mean label log-likelihood" \
  docs/plots/autoprompt-search.png
