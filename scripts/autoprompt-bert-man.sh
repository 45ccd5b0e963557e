#!/usr/bin/env bash
# AutoPrompt (paper 11) on a masked LM that has read manual pages, one command:
#   scripts/autoprompt-bert-man.sh [CANON_BINARY]   (environment: THREADS, default 2; SEEDS, default
#   "0 1 2"; MAN_ROOT, default /usr/share/man)
# 1. runs/man-subset: links to every 12th page of section 1 and every page of sections 2-8 of
#    MAN_ROOT (the facts and the corpus both come from it);
# 2. runs/man-digest: per page, the first 24 lines as `man` renders them and its SEE ALSO section
#    (needs man and col; pages already rendered are kept);
# 3. trains runs/bert-man (configs/bert-man.toml; skipped when the run exists);
# 4. per seed (a fact split and search order) on the man-section relation: the search with the
#    reference implementation's full budget (100 steps of 10 accumulated batches of 32 facts, 10
#    candidates, 5 triggers, dev selection) beside the default hand-written prompt
#    (runs/autoprompt-bert-man/seedS.json), and two more hand-written prompts on the same held-out
#    facts: the manuals' own citation `[X] ( [P] )` and `see [X] in section [P]`; then the same
#    with 30 facts per section, and a search with a trigger after [P] (runs/autoprompt-bert-man30);
# 5. plots docs/plots/autoprompt-bert-man-search.png: per seed, the dev facts' mean label
#    log-likelihood of the best triggers so far and the default hand-written prompt's.
set -euo pipefail
C=${1:-canon}
T=${THREADS:-2}
SEEDS=${SEEDS:-0 1 2}
ROOT=${MAN_ROOT:-/usr/share/man}
mkdir -p runs/man-subset runs/man-digest runs/autoprompt-bert-man
for s in 1 2 3 4 5 6 7 8; do
  mkdir -p "runs/man-subset/man$s"
  [ -d "$ROOT/man$s" ] || continue
  if [ "$s" = 1 ]; then
    ls "$ROOT/man1" | awk 'NR % 12 == 0'
  else
    ls "$ROOT/man$s"
  fi | while read -r f; do ln -sfn "$ROOT/man$s/$f" "runs/man-subset/man$s/$f"; done
done
render() {
  local out="runs/man-digest/$(basename "$1" .gz).txt"
  [ -s "$out" ] && return 0
  MANWIDTH=80 man -l "$1" 2>/dev/null | col -b | awk '
    NR <= 24 { print; next }
    /^SEE ALSO/ { keep = 1; print; next }
    keep && /^[A-Z]/ { keep = 0 }
    keep { print }' | sed 's/  */ /g' | grep -v '^ *$' > "$out.tmp" || true
  mv "$out.tmp" "$out"
}
export -f render
find runs/man-subset -type l | sort | xargs -P "$T" -I{} bash -c 'render "$1"' _ {}
[ -f runs/bert-man/checkpoint.safetensors ] || "$C" --threads "$T" train --config configs/bert-man.toml --out runs/bert-man
for s in $SEEDS; do
  "$C" --threads "$T" autoprompt --model runs/bert-man --relation man-section --man-dir runs/man-subset \
    --steps 100 --batch-size 32 --accumulation 10 --seed "$s" --json > runs/autoprompt-bert-man/seed$s.json
  for m in "[X] ( [P] )" "see [X] in section [P] ."; do
    "$C" --threads "$T" autoprompt --model runs/bert-man --relation man-section --man-dir runs/man-subset \
      --steps 0 --seed "$s" --manual "$m" --json
  done > runs/autoprompt-bert-man/seed$s-manual.jsonl
done
# The same with 30 facts per section (63 test facts a seed) in runs/autoprompt-bert-man30.
mkdir -p runs/autoprompt-bert-man30
for s in $SEEDS; do
  "$C" --threads "$T" autoprompt --model runs/bert-man --relation man-section --man-dir runs/man-subset \
    --per-object 30 --steps 100 --batch-size 32 --accumulation 10 --seed "$s" --json > runs/autoprompt-bert-man30/seed$s.json
  for m in "[X] ( [P] )" "see [X] in section [P] ."; do
    "$C" --threads "$T" autoprompt --model runs/bert-man --relation man-section --man-dir runs/man-subset \
      --per-object 30 --steps 0 --seed "$s" --manual "$m" --json
  done > runs/autoprompt-bert-man30/seed$s-manual.jsonl
  # A trigger after the slot, so that the search can close the citation's parenthesis.
  "$C" --threads "$T" autoprompt --model runs/bert-man --relation man-section --man-dir runs/man-subset \
    --per-object 30 --template "[X] [T] [T] [T] [T] [P] [T]" --steps 100 --batch-size 32 \
    --accumulation 10 --seed "$s" --json > runs/autoprompt-bert-man30/seed$s-after.json
done
SEEDS="$SEEDS" scripts/autoprompt-plot.sh "$C" runs/autoprompt-bert-man \
  "AutoPrompt on a BERT trained on the manuals: dev facts' mean label log-likelihood" \
  docs/plots/autoprompt-bert-man-search.png
