#!/usr/bin/env bash
# Where the time goes (docs/results.md, "Wall-clock against FLOPs"): full depth next to token exit,
# batch sizes 1 and 32, under torch.profiler.
set -euo pipefail
OUT=${OUT:-models}
for bs in 1 32; do
  n=$([ "$bs" = 1 ] && echo 300 || echo 1000)
  python scripts/profile_engine.py "$OUT/minilm-ner" uner-en-ewt:test --batch-size "$bs" --sentences "$n" \
    --exit '{"policy": "token", "threshold": 0.1}' --json "docs/bench/profile-minilm-ner-b$bs.json" > /dev/null
done
python scripts/gemm_rows.py --json docs/bench/gemm-rows.json > /dev/null
