#!/usr/bin/env bash
# Per-layer dev and test scores of trained models (every exit head at full depth), and their training logs.
# Usage: scripts/eval_models.sh minilm-ner minilm-pos ...   (model directories under $OUT, default models/)
set -euo pipefail
OUT=${OUT:-models}
for name in "$@"; do
  case "$name" in e5-*) data=uner-zh-gsdsimp ;; *ner*) data=uner-en-ewt ;; *pos*) data=ud-en-ewt ;; *) echo "unknown task of $name" >&2; exit 2 ;; esac
  for split in dev test; do
    earlytag evaluate "$OUT/$name" "$data:$split" --exit none --per-layer --json "docs/eval/$name-$split.json" > /dev/null
  done
  if [ -f "$OUT/$name/training_log.json" ]; then cp "$OUT/$name/training_log.json" "docs/train/$name.json"
  else echo "$name: no training_log.json (training did not finish); docs/train/$name.json left as it is" >&2; fi
done
