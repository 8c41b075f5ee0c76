#!/usr/bin/env bash
# Issue 4 figures: the 12-layer all-mpnet-base-v2 models against static truncation, the 6-layer
# all-MiniLM-L6-v2 at full depth (timed in the same process), and the full model, on the test sets.
# Fewer settings and timed sentences than bench_minilm.sh: a 12-layer model is ~8x the work per sentence.
set -euo pipefail
OUT=${OUT:-models}
B="--repeats 3 --timing-limit 400 --timing-limit-b1 120 --grid small --quiet"
earlytag bench "$OUT/mpnet-ner" uner-en-ewt:test --out docs/bench/mpnet-ner $B \
  --compare-model "$OUT/minilm-ner" --label "all-mpnet-base-v2 NER, stage 1"
earlytag bench "$OUT/mpnet-ner-ss" uner-en-ewt:test --out docs/bench/mpnet-ner-ss $B --policies token \
  --label "all-mpnet-base-v2 NER, self-sampling"
earlytag bench "$OUT/mpnet-ner-ss-drop" uner-en-ewt:test --out docs/bench/mpnet-ner-ss-drop $B --policies token \
  --kv-modes drop --label "all-mpnet-base-v2 NER, self-sampling for kv=drop"
earlytag bench "$OUT/mpnet-pos" ud-en-ewt:test --out docs/bench/mpnet-pos $B \
  --compare-model "$OUT/minilm-pos" --label "all-mpnet-base-v2 UPOS, stage 1"
earlytag bench "$OUT/mpnet-pos-ss" ud-en-ewt:test --out docs/bench/mpnet-pos-ss $B --policies token \
  --label "all-mpnet-base-v2 UPOS, self-sampling"
