#!/usr/bin/env bash
# Issue 12 (CRF head) figures in docs/results.md section 8. Needs the models of scripts/train_minilm_crf.sh and
# scripts/train_minilm.sh, and EARLYTAG_DATA pointing at the data sets. STEP=name runs one step only.
set -euo pipefail
B=docs/bench
T=${THREADS:-2}
step() { [ -z "${STEP:-}" ] || [ "$STEP" = "$1" ]; }
if step decode; then  # decoding time per batch of 32 against sentence length (1 thread, alternating passes):
  # random emissions, then the model's own on the test set laid end to end into documents
  python scripts/crf_decode_bench.py --model models/minilm-ner-crf --out $B/crf-decode.json
  python scripts/crf_decode_bench.py --model models/minilm-ner-crf-lr1e-2 --emissions uner-en-ewt:test \
    --out $B/crf-decode-real.json
fi
if step iters; then  # the mean-field iterations, chosen on dev
  python scripts/crf_iters.py models/minilm-ner-crf models/minilm-ner-crf-perlayer --data uner-en-ewt:dev \
    --out $B/crf-iters.json --threads "$T"
fi
if step curves; then  # F1 against FLOPs (and wall-clock at batch 32) with token exit, test set
  earlytag bench models/minilm-ner uner-en-ewt:test --out $B/crf-softmax-minilm-ner --policies token --grid default \
    --batch-sizes 32 --threads "$T" --label minilm-ner --quiet
  for m in minilm-ner-crf minilm-ner-crf-perlayer; do
    for d in viterbi meanfield; do
      earlytag bench models/$m uner-en-ewt:test --out $B/crf-$m-$d --policies token --grid default \
        --batch-sizes 32 --threads "$T" --decode "$d" --label "$m-$d" --quiet
    done
  done
fi
if step signal; then  # what decides exits: mean-field marginals (default, in the curves above), exact, emissions
  for u in exact emission; do
    earlytag bench models/minilm-ner-crf uner-en-ewt:test --out $B/crf-signal-$u --policies token --grid default \
      --no-timing --threads "$T" --decode viterbi --crf-uncertainty "$u" --label "minilm-ner-crf-$u" --quiet
  done
fi
if step lr; then  # the third model: the shared CRF with its transitions at a 10x learning rate (--crf-lr 1e-2)
  python scripts/crf_iters.py models/minilm-ner-crf-lr1e-2 --data uner-en-ewt:dev --out $B/crf-iters-lr.json \
    --threads "$T"
  for d in viterbi meanfield; do
    earlytag bench models/minilm-ner-crf-lr1e-2 uner-en-ewt:test --out $B/crf-minilm-ner-crf-lr1e-2-$d \
      --policies token --grid default --batch-sizes 32 --threads "$T" --decode "$d" --label "crf-lr1e-2-$d" --quiet
  done
fi
if step mpnet-decoders; then  # all-mpnet-base-v2: Viterbi, mean-field and blockwise on the test set, full depth
  # and token exit at τ=0.07 (~3x FLOPs)
  python scripts/crf_iters.py models/mpnet-ner-crf --data uner-en-ewt:test --iters 3 --blockwise-iters 3 \
    --threshold 0.07 --out $B/crf-iters-mpnet.json --threads "$T"
fi
if step ss; then  # stage 2 of the third model (MODELS=ss scripts/train_minilm_crf.sh): F1 against FLOPs, test set
  for d in viterbi meanfield; do
    earlytag bench models/minilm-ner-crf-lr1e-2-ss uner-en-ewt:test --out $B/crf-ss-$d --policies token \
      --grid default --no-timing --threads "$T" --decode "$d" --label "crf-lr1e-2-ss-$d" --quiet
  done
fi
if step mpnet; then  # all-mpnet-base-v2 (STEPS=ner-crf scripts/train_mpnet.sh against models/mpnet-ner, both epoch 2
  # of the same 3-epoch schedule): F1 against FLOPs on the test set, the three side by side (one thread each),
  # thresholds from ~1.4x to ~5x
  M="uner-en-ewt:test --policies token --thresholds 0.01 0.03 0.07 0.15 0.25 --no-timing --threads 1 --quiet"
  earlytag bench models/mpnet-ner $M --out $B/crf-softmax-mpnet-ner --label mpnet-ner &
  for d in viterbi meanfield; do
    earlytag bench models/mpnet-ner-crf $M --out $B/crf-mpnet-ner-crf-$d --decode "$d" --label "mpnet-ner-crf-$d" &
  done
  wait
fi
if step mpnet-ss; then  # all-mpnet-base-v2 CRF after self-sampling (STEPS=ner-crf-ss scripts/train_mpnet.sh; its
  # per-layer table: scripts/eval_models.sh mpnet-ner-crf-ss): F1 against FLOPs on the test set, the thresholds of
  # step mpnet, Viterbi and mean-field side by side (one thread each)
  M="uner-en-ewt:test --policies token --thresholds 0.01 0.03 0.07 0.15 0.25 --no-timing --threads 1 --quiet"
  for d in viterbi meanfield; do
    earlytag bench models/mpnet-ner-crf-ss $M --out $B/crf-ss-mpnet-$d --decode "$d" --label "mpnet-ner-crf-ss-$d" &
  done
  wait
  # Viterbi, mean-field and blockwise on the same model, full depth and token exit at τ=0.07 (as mpnet-decoders)
  python scripts/crf_iters.py models/mpnet-ner-crf-ss --data uner-en-ewt:test --iters 3 --blockwise-iters 3 \
    --threshold 0.07 --out $B/crf-iters-mpnet-ss.json --threads "$T"
fi
