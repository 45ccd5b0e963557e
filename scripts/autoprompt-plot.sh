#!/usr/bin/env bash
# The search plot of an AutoPrompt experiment (called by scripts/autoprompt*.sh):
#   scripts/autoprompt-plot.sh CANON_BINARY RUN_DIR TITLE OUT.png     (environment: SEEDS)
# Reads RUN_DIR/seedS.json (`canon autoprompt --json`) per seed and plots, per seed, the dev facts'
# mean label log-likelihood of the best triggers so far (from the first change on) and the
# hand-written prompt's on the same facts; the points go to RUN_DIR/search.jsonl.
set -euo pipefail
C=$1
DIR=$2
TITLE=$3
OUT=$4
for s in ${SEEDS:?}; do
  r=$DIR/seed$s.json
  jq -c --arg s "$s" '
    [foreach .history[] as $h (null;
       if $h.best then $h.dev else . end;
       if . == null then empty else {step: $h.step, log_likelihood: ., series: ("seed " + $s + ": AutoPrompt, best so far")} end)] | .[]' "$r"
  jq -c --arg s "$s" '(.history | length - 1) as $n | .manual.dev_log_likelihood as $m |
    ({step: 0, log_likelihood: $m}, {step: $n, log_likelihood: $m}) | . + {series: ("seed " + $s + ": hand-written prompt")}' "$r"
done > "$DIR/search.jsonl"
"$C" plot --jsonl "$DIR/search.jsonl" --x step --y log_likelihood --group series \
  --title "$TITLE" --out "$OUT"
