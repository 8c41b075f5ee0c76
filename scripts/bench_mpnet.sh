#!/usr/bin/env bash
# Issue 4 figures: the 12-layer all-mpnet-base-v2 models against static truncation, the 6-layer
# all-MiniLM-L6-v2 at full depth (timed in the same process), and the full model, on the test sets.
# Fewer settings and timed sentences than bench_minilm.sh (a 12-layer model is ~8x the work per sentence):
# the small grid (static truncation only at the depths nearest 1.5x-4x), wall-clock at batch 32 only (batch 1
# is characterised on MiniLM in bench_minilm.sh), timed on the first 200 test sentences. Scores: whole test set.
# Needs EARLYTAG_DATA pointing at the data sets (the Makefile sets it to ../shared/data).
#   BENCHES="mpnet-ner mpnet-ner-ss" scripts/bench_mpnet.sh   # a subset
set -euo pipefail
OUT=${OUT:-models}
B="--batch-sizes 32 --repeats 3 --timing-limit 200 --grid small --quiet"
for name in ${BENCHES:-mpnet-ner mpnet-ner-ss mpnet-ner-ss-drop mpnet-pos mpnet-pos-ss}; do
  echo "=== $(date +%T) bench $name"
  case $name in
    mpnet-ner) earlytag bench "$OUT/mpnet-ner" uner-en-ewt:test --out docs/bench/mpnet-ner $B \
      --compare-model "$OUT/minilm-ner" --label "all-mpnet-base-v2 NER, stage 1" ;;
    mpnet-ner-ss) earlytag bench "$OUT/mpnet-ner-ss" uner-en-ewt:test --out docs/bench/mpnet-ner-ss $B --policies token \
      --label "all-mpnet-base-v2 NER, self-sampling" ;;
    mpnet-ner-ss-drop) earlytag bench "$OUT/mpnet-ner-ss-drop" uner-en-ewt:test --out docs/bench/mpnet-ner-ss-drop $B \
      --policies token --kv-modes drop --label "all-mpnet-base-v2 NER, self-sampling for kv=drop" ;;
    mpnet-pos) earlytag bench "$OUT/mpnet-pos" ud-en-ewt:test --out docs/bench/mpnet-pos $B \
      --compare-model "$OUT/minilm-pos" --label "all-mpnet-base-v2 UPOS, stage 1" ;;
    mpnet-pos-ss) earlytag bench "$OUT/mpnet-pos-ss" ud-en-ewt:test --out docs/bench/mpnet-pos-ss $B --policies token \
      --label "all-mpnet-base-v2 UPOS, self-sampling" ;;
    *) echo "unknown bench: $name" >&2; exit 2 ;;
  esac
done
