#!/usr/bin/env bash
# Stage-1 training of all-MiniLM-L6-v2 with a CRF head on UNER English EWT (NER), the same recipe as
# scripts/train_minilm.sh's softmax model: one model with a transition matrix shared by the layers, one with a
# matrix per layer (issue: measure and choose). Figures in docs/results.md come from these models.
# Needs EARLYTAG_DATA pointing at the data sets. THREADS (default 2) torch threads per run; PARALLEL=1 runs both
# at once. MODELS=lr: only the third model, the shared one with the transitions at a 10x learning rate (the
# default since that run; the first two pin the heads' rate they were trained with).
# MODELS=ss: stage 2 of the third model (also run after the three with MODELS=all).
set -euo pipefail
OUT=${OUT:-models}
THREADS=${THREADS:-2}
run() {
  earlytag train --task ner --train uner-en-ewt:train --dev uner-en-ewt:dev --encoder all-MiniLM-L6-v2 \
    --output "$OUT/$1" --epochs 4 --freeze-epochs 1 --lr 1e-4 --head-lr 1e-3 --batch-size 32 --seed 42 \
    --head crf --crf-transitions "$2" --threads "$THREADS" --quiet --overwrite "${@:3}"
}
if [ "${MODELS:-}" = ss ]; then
  :
elif [ "${MODELS:-}" = lr ]; then
  run minilm-ner-crf-lr1e-2 shared --crf-lr 1e-2
elif [ "${PARALLEL:-0}" = 1 ]; then
  run minilm-ner-crf shared --crf-lr 1e-3 & run minilm-ner-crf-perlayer per-layer --crf-lr 1e-3 & wait
else
  run minilm-ner-crf shared --crf-lr 1e-3
  run minilm-ner-crf-perlayer per-layer --crf-lr 1e-3
  run minilm-ner-crf-lr1e-2 shared --crf-lr 1e-2
fi
if [ "${MODELS:-}" = ss ] || [ "${MODELS:-}" = all ]; then
  # stage 2 (self-sampling) of the best CRF model, the recipe of scripts/train_minilm_ss.sh with batch flooding
  # (token flooding floods a per-word loss; the CRF's is per sentence)
  earlytag train --stage self-sampling --epochs 3 --freeze-epochs 1 --lr 2e-5 --head-lr 2e-4 --batch-size 32 \
    --seed 42 --quiet --task ner --train uner-en-ewt:train --dev uner-en-ewt:dev --init "$OUT/minilm-ner-crf-lr1e-2" \
    --flooding batch --threads "$THREADS" --output "$OUT/minilm-ner-crf-lr1e-2-ss" --overwrite
fi
