#!/usr/bin/env bash
# Issue 3 figures: every exit policy of the all-MiniLM-L6-v2 models on the UNER / UD English EWT test sets,
# at batch sizes 1 and 32. Run on an otherwise idle machine (the bench alternates baseline and setting
# batch by batch, but a busy CPU still distorts small-batch timings).
set -euo pipefail
OUT=${OUT:-models}
B="--repeats 3 --timing-limit 1000 --timing-limit-b1 300 --quiet"
earlytag bench "$OUT/minilm-ner" uner-en-ewt:test --out docs/bench/minilm-ner $B \
  --label "all-MiniLM-L6-v2 NER, stage 1"
earlytag bench "$OUT/minilm-ner-ss" uner-en-ewt:test --out docs/bench/minilm-ner-ss $B --policies token sentence \
  --label "all-MiniLM-L6-v2 NER, self-sampling"
earlytag bench "$OUT/minilm-ner-ss-drop" uner-en-ewt:test --out docs/bench/minilm-ner-ss-drop $B --policies token \
  --kv-modes drop --label "all-MiniLM-L6-v2 NER, self-sampling for kv=drop"
earlytag bench "$OUT/minilm-pos" ud-en-ewt:test --out docs/bench/minilm-pos $B \
  --label "all-MiniLM-L6-v2 UPOS, stage 1"
earlytag bench "$OUT/minilm-pos-ss" ud-en-ewt:test --out docs/bench/minilm-pos-ss $B --policies token sentence \
  --label "all-MiniLM-L6-v2 UPOS, self-sampling"
# the same engine without refilling thin layers across batches (each batch of 32 climbs on its own)
earlytag bench "$OUT/minilm-ner" uner-en-ewt:test --out docs/bench/minilm-ner-norefill $B --no-refill \
  --policies token sentence --batch-sizes 32 --label "all-MiniLM-L6-v2 NER, stage 1, no refill"
# self-sampling with loss flooding (scripts/train_minilm_flood.sh), token exit only
earlytag bench "$OUT/minilm-ner-ss-flood" uner-en-ewt:test --out docs/bench/minilm-ner-ss-flood $B --policies token \
  --label "all-MiniLM-L6-v2 NER, self-sampling with flooding"
