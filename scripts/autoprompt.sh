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
for s in $SEEDS; do
  r=runs/autoprompt/seed$s.json
  # The best triggers' dev log-likelihood so far, step by step, from the first change on.
  jq -c --arg s "$s" '
    [foreach .history[] as $h (null;
       if $h.best then $h.dev else . end;
       if . == null then empty else {step: $h.step, log_likelihood: ., series: ("seed " + $s + ": AutoPrompt, best so far")} end)] | .[]' "$r"
  jq -c --arg s "$s" '(.history | length - 1) as $n | .manual.dev_log_likelihood as $m |
    ({step: 0, log_likelihood: $m}, {step: $n, log_likelihood: $m}) | . + {series: ("seed " + $s + ": hand-written prompt")}' "$r"
done > runs/autoprompt/search.jsonl
"$C" plot --jsonl runs/autoprompt/search.jsonl --x step --y log_likelihood --group series \
  --title "AutoPrompt on SmolLM2: dev facts' mean label log-likelihood" \
  --out docs/plots/autoprompt-search.png
