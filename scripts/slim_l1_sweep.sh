#!/usr/bin/env bash
# The L1 strength of --slim, measured on a short proxy run (issue 13 asks for a measured default): all-MiniLM-L6-v2
# NER on the first 3,000 training sentences, 2 epochs (the first frozen, the search in it, a mask check every 10
# steps), dev on 500 sentences, one strength per run, the runs side by side (one torch thread each). The logs go to
# docs/train/slim-l1-*.json; docs/results.md section 9 tabulates them. Needs EARLYTAG_DATA.
set -euo pipefail
OUT=${OUT:-models}
run() {
  earlytag train --task ner --train uner-en-ewt:train --dev uner-en-ewt:dev --encoder all-MiniLM-L6-v2 \
    --output "$OUT/slim-l1-$1" --epochs 2 --freeze-epochs 1 --lr 1e-4 --head-lr 1e-3 --batch-size 32 --seed 42 \
    --train-limit 3000 --dev-limit 500 --slim heads=0.33,ffn=0.4 --slim-l1 "$1" --slim-check-every 10 \
    --threads 1 --quiet --overwrite > /dev/null
  cp "$OUT/slim-l1-$1/training_log.json" "docs/train/slim-l1-$1.json"
}
for l1 in ${STRENGTHS:-0.01 0.05 0.2}; do run "$l1" & done
wait
