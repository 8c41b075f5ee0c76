#!/usr/bin/env bash
# Stage 2 (self-sampling) of the all-MiniLM-L6-v2 stage-1 models from scripts/train_minilm.sh, with the authors'
# recipe (the default: τ from {.01,.03,.05,.1,.15,.2,.25}, 4/10 full depth, 2/10 smallest window or largest τ,
# layer loss over active words / all words, per-token flooding at the stage-1 loss, halted words re-scored),
# 3 epochs of which the first trains the heads only (--freeze-epochs 1). Also the NER model with this project's
# first recipe (--recipe earlytag-0.1), the measurement behind the choice of default.
#   STEPS="ner pos" scripts/train_minilm_ss.sh
set -euo pipefail
OUT=${OUT:-models}
STEPS=${STEPS:-"ner ner-v01 ner-drop pos"}
SS="--stage self-sampling --epochs 3 --freeze-epochs 1 --lr 2e-5 --head-lr 2e-4 --batch-size 32 --seed 42 --quiet"
NER="--task ner --train uner-en-ewt:train --dev uner-en-ewt:dev --init $OUT/minilm-ner"
POS="--task pos --train ud-en-ewt:train --dev ud-en-ewt:dev --init $OUT/minilm-pos"
for step in $STEPS; do
  echo "=== $(date +%T) $step"
  case $step in
    ner) earlytag train $SS $NER --output "$OUT/minilm-ner-ss" --overwrite ;;
    ner-v01) earlytag train $SS $NER --output "$OUT/minilm-ner-ss-v01" --recipe earlytag-0.1 --overwrite ;;
    ner-drop) earlytag train $SS $NER --output "$OUT/minilm-ner-ss-drop" --kv drop --overwrite ;;
    pos) earlytag train $SS $POS --output "$OUT/minilm-pos-ss" --overwrite ;;
    # the slim model of scripts/train_minilm_slim.sh, self-sampled with the same recipe (issue 13)
    ner-slim) earlytag train $SS ${NER/minilm-ner/minilm-ner-slim} --output "$OUT/minilm-ner-slim-ss" --overwrite ;;
    # the heads=0.5,ffn=0.5 slim model (SLIM_NAME=minilm-ner-slim-half of scripts/train_minilm_slim.sh), the same
    ner-slim-half) earlytag train $SS ${NER/minilm-ner/minilm-ner-slim-half} --output "$OUT/minilm-ner-slim-half-ss" \
      --overwrite ;;
    # the model trained with uniform layer weights (scripts/train_minilm_heads.sh, issue 10), self-sampled with the
    # same recipe and the same weighting of its layers
    ner-uniform) earlytag train $SS ${NER/minilm-ner/minilm-ner-uniform} --output "$OUT/minilm-ner-uniform-ss" \
      --layer-weights uniform --threads ${THREADS:-1} --overwrite ;;
    *) echo "unknown step: $step (ner, ner-v01, ner-drop, pos, ner-slim, ner-slim-half, ner-uniform)" >&2; exit 2 ;;
  esac
done
