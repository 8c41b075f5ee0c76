#!/usr/bin/env bash
# all-mpnet-base-v2 (12 layers): stage 1 (3 epochs) and stage 2 (self-sampling, one epoch) on the full UNER
# English EWT (NER) and UD English EWT (UPOS) train sets. About 2.5 hours on a 2-core CPU: run it in the
# background. Set STAGES=ss to skip the stage-1 runs (their models already in $OUT).
set -euo pipefail
OUT=${OUT:-models}
earlytag encoders setup all-mpnet-base-v2
S1="--encoder all-mpnet-base-v2 --epochs 3 --freeze-epochs 1 --lr 5e-5 --head-lr 1e-3 --batch-size 32 --seed 42"
SS="--stage self-sampling --epochs 1 --lr 2e-5 --head-lr 2e-4 --batch-size 32 --seed 42"
NER="--task ner --train uner-en-ewt:train --dev uner-en-ewt:dev"
POS="--task pos --train ud-en-ewt:train --dev ud-en-ewt:dev"
[ "${STAGES:-all}" = ss ] || earlytag train $S1 $NER --output "$OUT/mpnet-ner"
earlytag train $SS $NER --init "$OUT/mpnet-ner" --output "$OUT/mpnet-ner-ss"
earlytag train $SS $NER --init "$OUT/mpnet-ner" --output "$OUT/mpnet-ner-ss-drop" --kv drop
earlytag train $S1 $POS --output "$OUT/mpnet-pos"
earlytag train $SS $POS --init "$OUT/mpnet-pos" --output "$OUT/mpnet-pos-ss"
