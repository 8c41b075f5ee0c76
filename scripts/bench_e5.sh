#!/usr/bin/env bash
# Issue 17 (Chinese) figures in docs/results.md section 10: the multilingual-e5-small models of scripts/train_e5.sh
# on the UNER Chinese GSDSimp test set: per-layer scores, then static / sentence / token exit (the default grid,
# scores on the whole test set, wall-clock at batch 32 with 3 alternating passes). Needs EARLYTAG_DATA.
set -euo pipefail
T=${THREADS:-2}
MODELS=${MODELS:-"e5-cws e5-ner e5-cws-ss e5-ner-ss"}
for m in $MODELS; do
  [ -d "models/$m" ] || { echo "models/$m missing (scripts/train_e5.sh)" >&2; continue; }
  echo "=== $(date +%T) $m"
  scripts/eval_models.sh "$m"
  earlytag bench "models/$m" uner-zh-gsdsimp:test --out "docs/bench/$m" --policies static sentence token \
    --grid default --batch-sizes 32 --threads "$T" --label "$m" --quiet
done
