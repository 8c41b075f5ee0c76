#!/usr/bin/env bash
# Stage 2 (self-sampling) of the all-MiniLM-L6-v2 stage-1 models from scripts/train_minilm.sh.
set -euo pipefail
OUT=${OUT:-models}
SS="--stage self-sampling --epochs 2 --lr 2e-5 --head-lr 2e-4 --batch-size 32 --seed 42"
earlytag train $SS --init "$OUT/minilm-ner" --task ner --train uner-en-ewt:train --dev uner-en-ewt:dev \
  --output "$OUT/minilm-ner-ss"
earlytag train $SS --init "$OUT/minilm-ner" --task ner --train uner-en-ewt:train --dev uner-en-ewt:dev \
  --output "$OUT/minilm-ner-ss-drop" --kv drop
earlytag train $SS --init "$OUT/minilm-pos" --task pos --train ud-en-ewt:train --dev ud-en-ewt:dev \
  --output "$OUT/minilm-pos-ss"
