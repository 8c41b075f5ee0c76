#!/usr/bin/env bash
# Issue 17 (Chinese) figures in docs/results.md section 10: the multilingual-e5-small models of scripts/train_e5.sh
# on the UNER Chinese GSDSimp test set: per-layer scores, then static / sentence / token exit (the default grid,
# scores on the whole test set, wall-clock at batch 32 with 3 alternating passes). Needs EARLYTAG_DATA.
set -euo pipefail
T=${THREADS:-2}
MODELS=${MODELS:-"e5-cws e5-ner e5-cws-ss e5-ner-ss"}
# scores and FLOPs of every model (--no-timing: these ran beside trainings); TIMED: models also timed at batch 32
# with static and token exit, on an otherwise idle machine, into docs/bench/MODEL-timed
TIMED=${TIMED:-"e5-cws-ss"}
# the default grid's τ stop at 0.4: 2.3x on these models; larger τ reach 3-4x
TAUS="0.01 0.02 0.05 0.1 0.2 0.3 0.4 0.5 0.6 0.7 0.8 0.9"
for m in $MODELS; do
  [ -d "models/$m" ] || { echo "models/$m missing (scripts/train_e5.sh)" >&2; continue; }
  echo "=== $(date +%T) $m"
  [ -n "${SKIP_EVAL:-}" ] || scripts/eval_models.sh "$m"
  [ -n "${SKIP_SCORES:-}" ] || earlytag bench "models/$m" uner-zh-gsdsimp:test --out "docs/bench/$m" \
    --policies static sentence token --grid default --thresholds $TAUS --threads "$T" --label "$m" --quiet --no-timing
  case " $TIMED " in
    *" $m "*) earlytag bench "models/$m" uner-zh-gsdsimp:test --out "docs/bench/$m-timed" --policies static token \
      --grid default --thresholds $TAUS --batch-sizes 32 --threads "$T" --label "$m (timed)" --quiet ;;
  esac
done
