#!/usr/bin/env bash
# Issue 13 figures (docs/results.md section 9), after scripts/train_minilm_slim.sh. Needs EARLYTAG_DATA.
# STEP=name runs one step only (magnitude, eval, curves, ss, half, half-ss; mpnet-eval, mpnet-curves;
# mpnet-full-eval, mpnet-full-curves; mpnet-kd). THREADS (default 1) torch threads of the timed benches.
set -euo pipefail
B=docs/bench
T=${THREADS:-1}
step() { [ -z "${STEP:-}" ] || [ "$STEP" = "$1" ]; }
if step magnitude; then  # the baseline: the plain model pruned by weight magnitude after training, same ratios
  python scripts/slim_magnitude.py models/minilm-ner-plain models/minilm-ner-mag --slim "${SLIM:-heads=0.33,ffn=0.4}" \
    --overwrite
fi
if step eval; then  # every exit head at full depth, dev and test
  scripts/eval_models.sh minilm-ner-plain minilm-ner-slim minilm-ner-mag
fi
if step curves; then  # F1 against FLOPs and wall-clock at batch 32, token exit; all against the unpruned model
  earlytag bench models/minilm-ner-plain uner-en-ewt:test --out $B/slim-plain --policies token --grid default \
    --batch-sizes 32 --threads "$T" --label minilm-ner-plain --quiet
  earlytag bench models/minilm-ner-slim uner-en-ewt:test --out $B/slim-slim --policies token --grid default \
    --batch-sizes 32 --threads "$T" --precisions fp32 bf16 --label minilm-ner-slim \
    --reference models/minilm-ner-plain --quiet
fi
if step ss; then  # self-sampling of a slim model (STEPS=ner-slim scripts/train_minilm_ss.sh) against the unpruned
  # self-sampled model: F1 against FLOPs with token exit, both against the unpruned model's full depth
  earlytag bench models/minilm-ner-ss uner-en-ewt:test --out $B/slim-ss-plain --policies token --grid default \
    --no-timing --threads "$T" --label minilm-ner-ss --quiet
  earlytag bench models/minilm-ner-slim-ss uner-en-ewt:test --out $B/slim-ss-slim --policies token --grid default \
    --no-timing --threads "$T" --label minilm-ner-slim-ss --reference models/minilm-ner-ss --quiet
fi
# heads=0.5,ffn=0.5 (SLIM=heads=0.5,ffn=0.5 ... SLIM_NAME=minilm-ner-slim-half PLAIN_NAME=minilm-ner-plain-5
# scripts/train_minilm_slim.sh): the same three figures for that pair, its own magnitude baseline at 0.5/0.5
if step half; then
  python scripts/slim_magnitude.py models/minilm-ner-plain-5 models/minilm-ner-mag-half --slim heads=0.5,ffn=0.5 \
    --overwrite
  scripts/eval_models.sh minilm-ner-plain-5 minilm-ner-slim-half minilm-ner-mag-half
  earlytag bench models/minilm-ner-plain-5 uner-en-ewt:test --out $B/slim-half-plain --policies token --grid default \
    --batch-sizes 32 --threads "$T" --label minilm-ner-plain-5 --quiet
  earlytag bench models/minilm-ner-slim-half uner-en-ewt:test --out $B/slim-half-slim --policies token --grid default \
    --batch-sizes 32 --threads "$T" --precisions fp32 bf16 --label minilm-ner-slim-half \
    --reference models/minilm-ner-plain-5 --quiet
fi
if step half-ss; then  # the heads=0.5,ffn=0.5 model self-sampled (STEPS=ner-slim-half scripts/train_minilm_ss.sh)
  # against the unpruned self-sampled model: F1 against FLOPs, then wall-clock at batch 32 against its full depth
  scripts/eval_models.sh minilm-ner-slim-half-ss
  earlytag bench models/minilm-ner-ss uner-en-ewt:test --out $B/slim-half-ss-plain --policies token --grid default \
    --batch-sizes 32 --threads "$T" --label minilm-ner-ss --quiet
  earlytag bench models/minilm-ner-slim-half-ss uner-en-ewt:test --out $B/slim-half-ss-slim --policies token \
    --grid default --batch-sizes 32 --threads "$T" --precisions fp32 bf16 --label minilm-ner-slim-half-ss \
    --reference models/minilm-ner-ss --quiet
fi
# the 12-layer all-mpnet-base-v2 at a reduced scale, after scripts/train_mpnet_slim.sh (both models trained on the
# same 2,000 sentences): every exit head at full depth, then F1 against wall-clock at batch 32 with token exit, the
# slim model timed against the unpruned one (bench --reference), the first 300 test sentences timed
if step mpnet-eval; then
  scripts/eval_models.sh mpnet-ner-2k-plain mpnet-ner-2k-slim
fi
if step mpnet-curves; then
  earlytag bench models/mpnet-ner-2k-plain uner-en-ewt:test --out $B/slim-mpnet-plain --policies token --grid small \
    --batch-sizes 32 --threads "$T" --timing-limit 300 --label mpnet-ner-2k-plain --quiet
  earlytag bench models/mpnet-ner-2k-slim uner-en-ewt:test --out $B/slim-mpnet-slim --policies token --grid small \
    --batch-sizes 32 --threads "$T" --timing-limit 300 --precisions fp32 bf16 --label mpnet-ner-2k-slim \
    --reference models/mpnet-ner-2k-plain --quiet
fi
# the 12-layer all-mpnet-base-v2 at full scale: models/mpnet-ner (stage 1, the checkpoint after epoch 2) and
# models/mpnet-ner-slim trained with the same recipe and --slim heads=0.33,ffn=0.4 (STEPS=ner-slim
# scripts/train_mpnet.sh); the unpruned model's per-layer scores under its own name here (docs/eval/mpnet-ner-*.json
# are the first round's model), then the curves as above, the first 300 test sentences timed
if step mpnet-full-eval; then
  for split in dev test; do
    earlytag evaluate models/mpnet-ner "uner-en-ewt:$split" --exit none --per-layer \
      --json "docs/eval/mpnet-ner-avx512-$split.json" > /dev/null
  done
  scripts/eval_models.sh mpnet-ner-slim
fi
if step mpnet-full-curves; then
  earlytag bench models/mpnet-ner uner-en-ewt:test --out $B/slim-mpnet-full-plain --policies token --grid small \
    --batch-sizes 32 --threads "$T" --timing-limit 300 --precisions fp32 bf16 --label mpnet-ner --quiet
  earlytag bench models/mpnet-ner-slim uner-en-ewt:test --out $B/slim-mpnet-full-slim --policies token --grid small \
    --batch-sizes 32 --threads "$T" --timing-limit 300 --precisions fp32 bf16 --label mpnet-ner-slim \
    --reference models/mpnet-ner --quiet
fi
# the same slim training with the unpruned model as a teacher (STEPS=ner-slim-kd scripts/train_mpnet.sh): its
# per-layer scores, then its curves against models/mpnet-ner as above (the unpruned curves: mpnet-full-curves)
if step mpnet-kd; then
  scripts/eval_models.sh mpnet-ner-slim-kd
  earlytag bench models/mpnet-ner-slim-kd uner-en-ewt:test --out $B/slim-mpnet-full-kd --policies token --grid small \
    --batch-sizes 32 --threads "$T" --timing-limit 300 --precisions fp32 bf16 --label mpnet-ner-slim-kd \
    --reference models/mpnet-ner --quiet
fi
