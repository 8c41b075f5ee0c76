#!/usr/bin/env bash
# The weight and temperature of `train --teacher`, measured on a short proxy of its use (a slim model learning from
# the unpruned one): all-MiniLM-L6-v2 NER with --slim heads=0.33,ffn=0.4 on the first 3,000 training sentences, 3
# epochs (the first frozen, the search in it), dev on 1,000 sentences; without a teacher and with models/minilm-ner
# as the teacher at (T, weight) = (1, 0.5), (1, 1), (2, 0.5); two runs side by side (one torch thread each). The
# logs go to docs/train/teacher-sweep-*.json; docs/results.md section 9 tabulates them. Needs EARLYTAG_DATA and
# models/minilm-ner (scripts/train_minilm.sh).
set -euo pipefail
OUT=${OUT:-models}
run() {
  local name=$1; shift
  earlytag train --task ner --train uner-en-ewt:train --dev uner-en-ewt:dev --encoder all-MiniLM-L6-v2 \
    --output "$OUT/teacher-sweep-$name" --epochs 3 --freeze-epochs 1 --lr 1e-4 --head-lr 1e-3 --batch-size 32 \
    --seed 42 --train-limit 3000 --dev-limit 1000 --slim heads=0.33,ffn=0.4 --threads 1 --quiet --overwrite "$@" \
    > /dev/null
  cp "$OUT/teacher-sweep-$name/training_log.json" "docs/train/teacher-sweep-$name.json"
}
T="--teacher models/minilm-ner"
run plain & run t1w05 $T --teacher-temperature 1 --teacher-weight 0.5 & wait
run t1w1 $T --teacher-temperature 1 --teacher-weight 1 & run t2w05 $T --teacher-temperature 2 --teacher-weight 0.5 & wait
