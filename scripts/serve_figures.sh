#!/usr/bin/env bash
# Issue 5 figures: the service under a bounded load on loopback, and a Ray run over a 10k-sentence corpus.
set -euo pipefail
OUT=${OUT:-models}
earlytag loadtest "$OUT/minilm-ner" --data uner-en-ewt:test --requests 200 --concurrency 200 --texts-per-request 2 \
  --exit token --threshold 0.1 --json docs/serve/loadtest-minilm-ner.json
# a corpus of the first 10,000 training sentences as JSON lines {"id", "text"}
python - <<'PY'
import json, os
from earlytag.data.datasets import load_dataset
sents = load_dataset("uner-en-ewt:train", "ner").sentences[:10_000]
with open("/tmp/earlytag-corpus.jsonl", "w", encoding="utf-8") as f:
    for i, s in enumerate(sents):
        f.write(json.dumps({"id": i, "text": s.text}) + "\n")
PY
earlytag predict "$OUT/minilm-ner" /tmp/earlytag-corpus.jsonl --output /tmp/earlytag-tagged.jsonl --engine ray \
  --exit token --threshold 0.1 --batch-size 32 2> /tmp/earlytag-ray.log
tail -n 1 /tmp/earlytag-ray.log > docs/serve/ray-minilm-ner.json
wc -l /tmp/earlytag-tagged.jsonl
# the page at / with the real model (Debian chromium + chromedriver)
python scripts/page_screenshot.py "$OUT/minilm-ner" docs/serve/page-minilm-ner.png
