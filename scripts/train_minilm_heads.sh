#!/usr/bin/env bash
# Better lower exit heads for all-MiniLM-L6-v2 NER (issue 10's 4x within 1 F1 needs them): the stage-1 command of
# scripts/train_minilm.sh with every layer's loss weighted alike (--layer-weights uniform) and/or the lower heads
# distilled from the last (--distill). Compare with minilm-ner (scripts/train_minilm.sh) through
# scripts/bench_heads.sh and scripts/eval_models.sh. Needs EARLYTAG_DATA pointing at the data sets.
#   STEPS="uniform distill" scripts/train_minilm_heads.sh;  SEED=43 STEPS="depth uniform" scripts/train_minilm_heads.sh
set -euo pipefail
OUT=${OUT:-models}
STEPS=${STEPS:-"uniform distill uniform-distill"}
S1="--task ner --train uner-en-ewt:train --dev uner-en-ewt:dev --encoder all-MiniLM-L6-v2 --epochs 4 --freeze-epochs 1
  --lr 1e-4 --head-lr 1e-3 --batch-size 32 --seed ${SEED:-42} --quiet --overwrite"
# SEED=N: another seed, the models named ...-sN (the seed-to-seed spread of the comparison)
SUF=${SEED:+-s$SEED}
for step in $STEPS; do
  echo "=== $(date +%T) $step"
  case $step in
    # the stage-1 command of scripts/train_minilm.sh again, on the same machine as the others (the same figures: it is deterministic)
    depth) earlytag train $S1 --output "$OUT/minilm-ner-depth$SUF" ;;
    uniform) earlytag train $S1 --layer-weights uniform --output "$OUT/minilm-ner-uniform$SUF" ;;
    distill) earlytag train $S1 --distill 1 --output "$OUT/minilm-ner-distill$SUF" ;;
    # uniform weights trained longer (its dev score still rose in the 4th and last epoch; the segmenter gained so)
    uniform-6ep) earlytag train ${S1/--epochs 4/--epochs 6} --layer-weights uniform --output "$OUT/minilm-ner-uniform-6ep$SUF" ;;
    uniform-distill) earlytag train $S1 --layer-weights uniform --distill 1 --output "$OUT/minilm-ner-uniform-distill$SUF" ;;
    *) echo "unknown step: $step (depth, uniform, uniform-6ep, distill, uniform-distill)" >&2; exit 2 ;;
  esac
done
