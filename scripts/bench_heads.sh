#!/usr/bin/env bash
# Token exit (the defaults: window 2, halted words frozen) on UNER EWT test over a dense τ grid, scores and FLOPs
# only, for models whose lower exit heads were trained differently (scripts/train_minilm_heads.sh) and the
# stage-1 model they compare with; results in docs/bench/heads-NAME/, compared at equal FLOPs speed-ups by the
# results page (section 4, "Lower exit heads").
#   scripts/bench_heads.sh minilm-ner minilm-ner-uniform minilm-ner-distill
set -euo pipefail
OUT=${OUT:-models}
for name in "$@"; do
  echo "=== $(date +%T) $name"
  earlytag bench "$OUT/$name" uner-en-ewt:test --out "docs/bench/heads-$name" --policies static token \
    --thresholds 0.01 0.02 0.03 0.05 0.07 0.1 0.15 0.2 0.25 0.3 0.4 0.5 --no-timing --quiet --label "$name"
done
