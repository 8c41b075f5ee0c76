#!/usr/bin/env bash
# Every exit policy of the all-MiniLM-L6-v2 stage-1 models on the UNER / UD English EWT test sets at batch sizes 1
# and 32, with the bench's defaults (the small grid; batch 32 timed on the first 1,000 test sentences, batch 1 on
# the first 200; 3 alternating passes; one intra-op thread). Run on an otherwise idle machine.
set -euo pipefail
OUT=${OUT:-models}
for name in ${BENCHES:-minilm-ner minilm-pos}; do
  case "$name" in *ner*) data=uner-en-ewt:test ;; *pos*) data=ud-en-ewt:test ;; esac
  echo "=== $(date +%T) $name"
  /usr/bin/time -f "bench $name: %e s" earlytag bench "$OUT/$name" "$data" --out "docs/bench/$name" --quiet \
    --threads 1 --label "$name (stage 1)"
done
