#!/usr/bin/env bash
# Issue 13 on the 12-layer all-mpnet-base-v2 NER: stage 1 with structured slimming (EarlyBERT) against the same
# training without it, started together so that both see the same machine (one torch thread each); the
# training-time comparison of docs/results.md section 9 reads their logs. A full MPNet stage 1 takes hours per
# epoch on this 2-core machine, so both runs train on the first 2,000 training sentences (3 epochs, the first with
# the encoder frozen and the search in it, a mask check every 10 of its 63 steps), dev on 500 sentences: a reduced
# scale, the same for both. The recipe is scripts/train_mpnet.sh's stage 1. Needs EARLYTAG_DATA.
set -euo pipefail
OUT=${OUT:-models}
SLIM=${SLIM:-heads=0.33,ffn=0.4}
earlytag encoders setup all-mpnet-base-v2 > /dev/null
run() {
  earlytag train --task ner --train uner-en-ewt:train --dev uner-en-ewt:dev --encoder all-mpnet-base-v2 \
    --output "$OUT/$1" --epochs 3 --freeze-epochs 1 --lr 5e-5 --head-lr 1e-3 --batch-size 32 --seed 42 \
    --train-limit 2000 --dev-limit 500 --threads 1 --quiet --overwrite "${@:2}"
}
# the second pair (the fused AdamW step, a check every 5 steps):
#   CHECK=5 SLIM_NAME=mpnet-ner-2k-slim-c5 PLAIN_NAME=mpnet-ner-2k-plain-2 scripts/train_mpnet_slim.sh
run "${SLIM_NAME:-mpnet-ner-2k-slim}" --slim "$SLIM" --slim-check-every "${CHECK:-10}" & run "${PLAIN_NAME:-mpnet-ner-2k-plain}" & wait
