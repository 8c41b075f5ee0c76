#!/usr/bin/env bash
# Loss flooding in self-sampling (off by default), measured: the NER self-sampling run of
# scripts/train_minilm_ss.sh with the loss flooded at the stage-1 model's training loss (b = 1.0).
set -euo pipefail
OUT=${OUT:-models}
earlytag train --stage self-sampling --epochs 2 --lr 2e-5 --head-lr 2e-4 --batch-size 32 --seed 42 \
  --init "$OUT/minilm-ner" --task ner --train uner-en-ewt:train --dev uner-en-ewt:dev \
  --output "$OUT/minilm-ner-ss-flood" --flooding 1.0
