#!/usr/bin/env bash
# Issue 11: token exit with halted words re-scored by every later head (the paper's rule, the default) against
# halted words frozen at the uncertainty they halted with, on the test set of each model: scores and FLOPs of the
# default threshold grid under both rules, in one bench per model (no timing: the rule changes who exits, and the
# wall-clock follows the FLOPs). Results: docs/bench/halted-NAME/.
#   scripts/halted_rule.sh minilm-ner minilm-ner-ss minilm-pos minilm-pos-ss
set -euo pipefail
OUT=${OUT:-models}
for name in "$@"; do
  case "$name" in *ner*) data=uner-en-ewt:test ;; *pos*) data=ud-en-ewt:test ;; *) echo "task of $name?" >&2; exit 2 ;; esac
  echo "=== $(date +%T) $name"
  earlytag bench "$OUT/$name" "$data" --out "docs/bench/halted-$name" --policies token --halted-modes rescore frozen \
    --grid default --no-timing --quiet --label "$name"
done
