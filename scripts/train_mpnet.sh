#!/usr/bin/env bash
# all-mpnet-base-v2 (12 layers) on the full UNER English EWT (NER) and UD English EWT (UPOS) train sets:
# stage 1 and stage 2 (self-sampling, one epoch). On a 2-core CPU a frozen epoch takes ~10 min and an
# unfrozen one ~15 min: run it in the background. Pick steps with STEPS (default: all, in this order).
#   NER stage 1: 3 epochs (1 frozen). UPOS stage 1: 2 epochs (1 frozen), to fit a session's time budget;
#   the per-epoch dev scores are in the training log.
#   STEPS="ner-ss ner-ss-drop" scripts/train_mpnet.sh   # stage 2 only, stage-1 model already in $OUT
# Needs EARLYTAG_DATA pointing at the data sets (the Makefile sets it to ../shared/data).
set -euo pipefail
OUT=${OUT:-models}
STEPS=${STEPS:-"ner ner-ss ner-ss-drop pos pos-ss"}
earlytag encoders setup all-mpnet-base-v2
S1="--encoder all-mpnet-base-v2 --freeze-epochs 1 --lr 5e-5 --head-lr 1e-3 --batch-size 32 --seed 42"
SS="--stage self-sampling --epochs 1 --lr 2e-5 --head-lr 2e-4 --batch-size 32 --seed 42"
NER="--task ner --train uner-en-ewt:train --dev uner-en-ewt:dev"
POS="--task pos --train ud-en-ewt:train --dev ud-en-ewt:dev"
for step in $STEPS; do
  echo "=== $(date +%T) $step"
  case $step in
    ner) earlytag train $S1 --epochs 3 $NER --output "$OUT/mpnet-ner" ;;
    ner-ss) earlytag train $SS $NER --init "$OUT/mpnet-ner" --output "$OUT/mpnet-ner-ss" ;;
    ner-ss-drop) earlytag train $SS $NER --init "$OUT/mpnet-ner" --output "$OUT/mpnet-ner-ss-drop" --kv drop ;;
    pos) earlytag train $S1 --epochs 2 $POS --output "$OUT/mpnet-pos" ;;
    pos-ss) earlytag train $SS $POS --init "$OUT/mpnet-pos" --output "$OUT/mpnet-pos-ss" ;;
    *) echo "unknown step: $step (ner, ner-ss, ner-ss-drop, pos, pos-ss)" >&2; exit 2 ;;
  esac
done
