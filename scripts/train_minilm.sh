#!/usr/bin/env bash
# Stage-1 training of all-MiniLM-L6-v2 on the full UNER English EWT (NER) and UD English EWT (UPOS) train sets.
# Figures in docs/results.md come from these commands. Needs EARLYTAG_DATA pointing at the data sets.
set -euo pipefail
OUT=${OUT:-models}
earlytag train --task ner --train uner-en-ewt:train --dev uner-en-ewt:dev --encoder all-MiniLM-L6-v2 \
  --output "$OUT/minilm-ner" --epochs 4 --freeze-epochs 1 --lr 1e-4 --head-lr 1e-3 --batch-size 32 --seed 42 --quiet --overwrite
earlytag train --task pos --train ud-en-ewt:train --dev ud-en-ewt:dev --encoder all-MiniLM-L6-v2 \
  --output "$OUT/minilm-pos" --epochs 4 --freeze-epochs 1 --lr 1e-4 --head-lr 1e-3 --batch-size 32 --seed 42 --quiet --overwrite
