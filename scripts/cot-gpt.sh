#!/usr/bin/env bash
# Chain of thought in small GPTs trained for it (paper 18, miniature), one command:
#   scripts/cot-gpt.sh [CANON_BINARY]          (environment: THREADS, default 1; SKIP_TRAIN=1)
# 1. writes the two training corpora from the problem generator (seed 777, 1-6 steps of + and -,
#    every count 1..20);
# 2. trains the rationale arm (configs/cot-gpt.toml) and the answer-only arm
#    (configs/cot-gpt-direct.toml) in parallel: the same model, steps and tokens (8,000 steps of
#    4 x 512 characters, rotary positions);
# 3. evaluates both zero-shot on held-out problems (seed 1) by number of steps;
# 4. runs self-consistency (m = 1..40 sampled rationales, majority vote) on the rationale arm
#    against its greedy chain of thought (seed 2);
# 5. resumes both arms to 16,000 steps (copies in runs/cot-*-16k; the cosine follows the new total)
#    and evaluates them on the same problems (SKIP_LONG=1 leaves this out);
# 6. plots docs/plots/cot-gpt-steps.png and docs/plots/cot-gpt-vote.png.
set -euo pipefail
C=${1:-canon}
T=${THREADS:-1}
N=${PROBLEMS:-120}
V=${VOTE_PROBLEMS:-30}
mkdir -p runs/cot-data runs/cot-eval docs/plots
if [ -z "${SKIP_TRAIN:-}" ]; then
  for f in rationale direct; do
    "$C" eval cot --generate 20000 --steps 1-6 --max-value 20 --ops +,- --seed 777 \
      --write-text runs/cot-data/$f.txt --text-format $f
  done
  "$C" train --config configs/cot-gpt.toml --threads "$T" --out runs/cot-rationale &
  "$C" train --config configs/cot-gpt-direct.toml --threads "$T" --out runs/cot-direct &
  wait
fi
# Held-out problems (seed 1; the corpus is seed 777), N problems of 1-6 steps. The answer-only
# arm is asked only for its answer (its rationale outputs are cut at 8 characters and not used).
"$C" eval cot --model runs/cot-rationale --generate "$N" --steps 1-6 --max-value 20 --ops +,- --seed 1 \
  --shots 0 --samples 1 --max-tokens 300 --threads "$T" --json > runs/cot-eval/rationale.json &
"$C" eval cot --model runs/cot-direct --generate "$N" --steps 1-6 --max-value 20 --ops +,- --seed 1 \
  --shots 0 --samples 1 --max-tokens 8 --threads "$T" --json > runs/cot-eval/direct.json &
"$C" eval cot --model runs/cot-rationale --generate "$V" --steps 1-6 --max-value 20 --ops +,- --seed 2 \
  --shots 0 --samples 1,3,5,10,20,40 --max-tokens 300 --threads "$T" --json > runs/cot-eval/vote.json &
wait
if [ -z "${SKIP_LONG:-}" ]; then
  for f in rationale direct; do
    if [ -z "${SKIP_TRAIN:-}" ]; then
      rm -rf runs/cot-$f-16k && cp -a runs/cot-$f runs/cot-$f-16k
      "$C" train --resume runs/cot-$f-16k --max-steps 16000 --threads "$T" &
    fi
  done
  wait
  "$C" eval cot --model runs/cot-rationale-16k --generate "$N" --steps 1-6 --max-value 20 --ops +,- --seed 1 \
    --shots 0 --samples 1 --max-tokens 300 --threads "$T" --json > runs/cot-eval/rationale-16k.json &
  "$C" eval cot --model runs/cot-direct-16k --generate "$N" --steps 1-6 --max-value 20 --ops +,- --seed 1 \
    --shots 0 --samples 1 --max-tokens 8 --threads "$T" --json > runs/cot-eval/direct-16k.json &
  wait
fi
{
  jq -c '.by_steps[] | {arm: "rationale then answer (greedy), 8,000 steps", steps, accuracy: .greedy_cot}' runs/cot-eval/rationale.json
  jq -c '.by_steps[] | {arm: "answer only, 8,000 steps", steps, accuracy: .direct}' runs/cot-eval/direct.json
  if [ -z "${SKIP_LONG:-}" ]; then
    jq -c '.by_steps[] | {arm: "rationale then answer (greedy), 16,000 steps", steps, accuracy: .greedy_cot}' runs/cot-eval/rationale-16k.json
    jq -c '.by_steps[] | {arm: "answer only, 16,000 steps", steps, accuracy: .direct}' runs/cot-eval/direct-16k.json
  fi
} > runs/cot-eval/steps.jsonl
jq -c '.accuracy_greedy_cot as $g | .accuracy_vote[] | ({method: "majority vote of m samples", m, accuracy}, {method: "greedy chain of thought", m, accuracy: $g})' \
  runs/cot-eval/vote.json > runs/cot-eval/vote.jsonl
"$C" plot --jsonl runs/cot-eval/steps.jsonl --x steps --y accuracy --group arm \
  --title "Trained GPTs: accuracy by number of steps" --out docs/plots/cot-gpt-steps.png
"$C" plot --jsonl runs/cot-eval/vote.jsonl --x m --y accuracy --group method --log-x \
  --title "Self-consistency on the rationale-trained GPT" --out docs/plots/cot-gpt-vote.png
