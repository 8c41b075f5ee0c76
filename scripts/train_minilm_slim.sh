#!/usr/bin/env bash
# Issue 13: stage 1 of all-MiniLM-L6-v2 NER with structured slimming (EarlyBERT) against the same training without
# it, started together so that both see the same machine (one torch thread each): the training-time comparison of
# docs/results.md section 9 reads their logs. The recipe is scripts/train_minilm.sh's.
# Needs EARLYTAG_DATA pointing at the data sets.
set -euo pipefail
OUT=${OUT:-models}
SLIM=${SLIM:-heads=0.33,ffn=0.4}
run() {
  earlytag train --task ner --train uner-en-ewt:train --dev uner-en-ewt:dev --encoder all-MiniLM-L6-v2 \
    --output "$OUT/$1" --epochs 4 --freeze-epochs 1 --lr 1e-4 --head-lr 1e-3 --batch-size 32 --seed 42 \
    --threads "${THREADS:-1}" --quiet --overwrite "${@:2}"
}
# ε as the first documented run had it (the default became 0.05 after that run: docs/results.md section 9);
# the second pair: EPS=0.05 SLIM_NAME=minilm-ner-slim-eps05 PLAIN_NAME=minilm-ner-plain-2 scripts/train_minilm_slim.sh
# the third pair (the fused AdamW step, a mask check every 10 steps):
#   EPS=0.05 CHECK=10 SLIM_NAME=minilm-ner-slim-c10 PLAIN_NAME=minilm-ner-plain-3 scripts/train_minilm_slim.sh
# the fourth (a check every 10 steps, each against the mask of 50 steps before):
#   EPS=0.05 CHECK=10 SPAN=50 SLIM_NAME=minilm-ner-slim-c10s50 PLAIN_NAME=minilm-ner-plain-4 scripts/train_minilm_slim.sh
# the fifth (half of the heads and neurons removed):
#   SLIM=heads=0.5,ffn=0.5 EPS=0.05 CHECK=10 SPAN=50 SLIM_NAME=minilm-ner-slim-half PLAIN_NAME=minilm-ner-plain-5 \
#     scripts/train_minilm_slim.sh
# the slim run alone with the unpruned model as its teacher (THREADS torch threads, default 1):
#   EPS=0.05 TEACHER=models/minilm-ner ONLY=slim THREADS=2 SLIM_NAME=minilm-ner-slim-kd scripts/train_minilm_slim.sh
# milder ratios, without and with the teacher (the two started together, one thread each):
#   SLIM=heads=0.17,ffn=0.2 EPS=0.05 ONLY=slim SLIM_NAME=minilm-ner-slim-mild scripts/train_minilm_slim.sh &
#   SLIM=heads=0.17,ffn=0.2 EPS=0.05 TEACHER=models/minilm-ner ONLY=slim SLIM_NAME=minilm-ner-slim-mild-kd \
#     scripts/train_minilm_slim.sh & wait
if [ "${ONLY:-}" != plain ]; then
  run "${SLIM_NAME:-minilm-ner-slim}" --slim "$SLIM" --slim-eps "${EPS:-0.02}" --slim-check-every "${CHECK:-50}" \
    ${SPAN:+--slim-span "$SPAN"} ${TEACHER:+--teacher "$TEACHER"} &
fi
if [ "${ONLY:-}" != slim ]; then run "${PLAIN_NAME:-minilm-ner-plain}" & fi
wait
