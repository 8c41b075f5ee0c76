#!/usr/bin/env bash
# Issue 10 figures: early exit stacked on precision and backend, against what a speed-seeking user runs instead
# (Hugging Face pipeline, ONNX Runtime fp32 and int8 at full depth, on the same weights), on UNER EWT test.
# Every wall-clock speed-up is against earlytag fp32 full depth timed in alternation in the same run. Run on an
# otherwise idle machine (the load average at the start is recorded in meta.json). One intra-op thread for every
# contender, as the measurement that opened issue 10 (on two shared cores, two threads made every run slower).
#   BENCHES="minilm" scripts/bench_stacked.sh       (one or more of the names of the case entries below; an
#   unknown name lists them)
set -euo pipefail
OUT=${OUT:-models}
B="--policies token --grid small --precisions fp32 bf16 int8 int8-mixed --backends torch onnxruntime --batch-sizes 1 32 \
  --repeats 3 --compare hf-pipeline ort-fp32 ort-int8 --threads 1 --quiet"
# the settings shared by the runs of one series (each run differs in what the code did then, or in --alternate)
MINILM6_B1="--policies token --thresholds 0.02 0.05 0.1 0.15 0.2 0.25 --precisions fp32 int8 --backends onnxruntime \
  --batch-sizes 1 --repeats 3 --compare hf-pipeline ort-fp32 ort-int8 --threads 1 --quiet --timing-limit-b1 200"
MPNET_B1="--policies token --thresholds 0.03 0.07 0.15 0.25 0.3 --precisions fp32 int8 --backends onnxruntime \
  --batch-sizes 1 --repeats 3 --compare ort-fp32 ort-int8 --threads 1 --quiet --timing-limit-b1 100"
MINILM6_BF16="--policies token --thresholds 0.03 0.05 0.075 0.1 0.15 --precisions fp32 bf16 --backends torch \
  --batch-sizes 32 --repeats 3 --compare ort-int8 --threads 1 --quiet --timing-limit 1000"
MINILM6_ONEDNN="--policies token --thresholds 0.05 0.1 0.15 --precisions fp32 bf16 --backends torch onednn \
  --batch-sizes 32 --repeats 3 --compare ort-fp32 ort-int8 --threads 1 --quiet --timing-limit 1000"
for name in ${BENCHES:-minilm mpnet}; do
  echo "=== $(date +%T) $name"
  case $name in
    minilm) earlytag bench "$OUT/minilm-ner-ss" uner-en-ewt:test --out docs/bench/stacked-minilm-ner-ss $B \
      --timing-limit 1000 --timing-limit-b1 200 --label "all-MiniLM-L6-v2 NER, self-sampling" ;;
    # the 12-layer model at batch 32 (the targets for it), torch only, the peers that matter there
    mpnet) earlytag bench "$OUT/mpnet-ner-ss" uner-en-ewt:test --out docs/bench/stacked-mpnet-ner-ss \
      --policies token --grid small --precisions fp32 bf16 int8 --backends torch --batch-sizes 32 --repeats 3 \
      --compare hf-pipeline ort-int8 --threads 1 --quiet --timing-limit 300 --label "all-mpnet-base-v2 NER, self-sampling" ;;
    # the same on a CPU with AVX512-BF16 and VNNI (bf16 and int8 the contenders; fp32 full depth is the reference)
    mpnet-avx512) earlytag bench "$OUT/mpnet-ner-ss" uner-en-ewt:test --out docs/bench/stacked-mpnet-ner-ss-avx512bf16 \
      --policies token --thresholds 0.03 0.07 0.15 0.25 0.3 --precisions bf16 int8 --backends torch --batch-sizes 32 \
      --repeats 3 --compare hf-pipeline ort-fp32 ort-int8 --threads 1 --quiet --timing-limit 300 \
      --label "all-mpnet-base-v2 NER, self-sampling, AVX512-BF16 CPU" ;;
    # the same model and peers with a finer threshold grid below τ = 0.15 (where the scores cross ONNX Runtime
    # int8's), bf16 and int8
    mpnet-avx512-fine) earlytag bench "$OUT/mpnet-ner-ss" uner-en-ewt:test \
      --out docs/bench/stacked-mpnet-ner-ss-avx512bf16-fine --policies token \
      --thresholds 0.02 0.04 0.05 0.06 0.08 0.1 0.12 --precisions bf16 int8 --backends torch --batch-sizes 32 \
      --repeats 3 --compare ort-int8 --threads 1 --quiet --timing-limit 300 \
      --label "all-mpnet-base-v2 NER, self-sampling, AVX512-BF16 CPU, fine grid" ;;
    # the 12-layer model at batch 1 (latency): ONNX Runtime's one-call climb in fp32, int8 and int8-mixed against
    # ONNX Runtime's own full-depth graphs; scored at batch 1 too (what the climb computes)
    mpnet-b1) earlytag bench "$OUT/mpnet-ner-ss" uner-en-ewt:test --out docs/bench/stacked-mpnet-ner-ss-b1 \
      --policies token --grid small --precisions fp32 int8 int8-mixed --backends onnxruntime --batch-sizes 1 \
      --repeats 3 --compare ort-fp32 ort-int8 --threads 1 --quiet --timing-limit-b1 100 \
      --label "all-mpnet-base-v2 NER, self-sampling, batch 1" ;;
    # the same on the AVX512-BF16 CPU with the branching climb (fp32 and int8; the model has no int8-mixed choice)
    mpnet-b1-avx512) earlytag bench "$OUT/mpnet-ner-ss" uner-en-ewt:test \
      --out docs/bench/stacked-mpnet-ner-ss-b1-avx512bf16 $MPNET_B1 \
      --label "all-mpnet-base-v2 NER, self-sampling, batch 1, branching climb, AVX512-BF16 CPU" ;;
    # the two lean batch-1 benches with every side running warm through 25 sentences at a time (--alternate 25)
    # instead of unit by unit, where each starts every sentence with the caches the other model left
    minilm-uniform-6ep-b1-warm) earlytag bench "$OUT/minilm-ner-uniform-6ep" uner-en-ewt:test \
      --out docs/bench/stacked-minilm-ner-uniform-6ep-b1-warm $MINILM6_B1 --alternate 25 \
      --label "all-MiniLM-L6-v2 NER, uniform layer weights, 6 epochs, batch 1, lean full-depth graph, warm blocks of 25" ;;
    mpnet-b1-warm) earlytag bench "$OUT/mpnet-ner-ss" uner-en-ewt:test \
      --out docs/bench/stacked-mpnet-ner-ss-b1-warm $MPNET_B1 --alternate 25 \
      --label "all-mpnet-base-v2 NER, self-sampling, batch 1, lean full-depth graph, warm blocks of 25, AVX512-BF16 CPU" ;;
    # the torch engine at batch 1 in fp32 and bf16 (the layer loop in Python, no ONNX Runtime), warm blocks of 25
    minilm-uniform-6ep-b1-torch-warm) earlytag bench "$OUT/minilm-ner-uniform-6ep" uner-en-ewt:test \
      --out docs/bench/stacked-minilm-ner-uniform-6ep-b1-torch-warm --policies token \
      --thresholds 0.02 0.05 0.1 0.15 0.2 0.25 --precisions fp32 bf16 --backends torch --batch-sizes 1 \
      --repeats 3 --threads 1 --quiet --timing-limit-b1 200 --alternate 25 \
      --label "all-MiniLM-L6-v2 NER, uniform layer weights, 6 epochs, batch 1, torch engine, warm blocks of 25" ;;
    # the same after the batch-1 full-depth graph became lean (as minilm-uniform-6ep-b1-lean)
    mpnet-b1-lean) earlytag bench "$OUT/mpnet-ner-ss" uner-en-ewt:test \
      --out docs/bench/stacked-mpnet-ner-ss-b1-lean $MPNET_B1 \
      --label "all-mpnet-base-v2 NER, self-sampling, batch 1, lean full-depth graph, AVX512-BF16 CPU" ;;
    # MiniLM at batch 1 with the ONNX Runtime backend only (the one-call climb), scored at batch 1 too; int8-mixed
    # as `earlytag quantize models/minilm-ner-ss uner-en-ewt:dev --backend onnxruntime --batch-size 1 --limit 0`
    # stored it in the model (the FFN output of layers 0 and 1 float32); small τ, where the F1 bound of 0.5 lies
    minilm-b1) earlytag bench "$OUT/minilm-ner-ss" uner-en-ewt:test --out docs/bench/stacked-minilm-ner-ss-b1 \
      --policies token --thresholds 0.005 0.01 0.02 0.03 0.07 0.15 0.25 --precisions fp32 int8 int8-mixed \
      --backends onnxruntime --batch-sizes 1 \
      --repeats 3 --compare hf-pipeline ort-fp32 ort-int8 --threads 1 --quiet --timing-limit-b1 200 \
      --label "all-MiniLM-L6-v2 NER, self-sampling, batch 1" ;;
    # mpnet-b1's full depth and its best setting again, after the engine's bookkeeping moved to numpy
    mpnet-b1-check) earlytag bench "$OUT/mpnet-ner-ss" uner-en-ewt:test --out docs/bench/stacked-mpnet-ner-ss-b1-check \
      --policies token --thresholds 0.25 --precisions fp32 int8 --backends onnxruntime --batch-sizes 1 \
      --repeats 3 --compare ort-fp32 ort-int8 --threads 1 --quiet --timing-limit-b1 100 \
      --label "all-mpnet-base-v2 NER, self-sampling, batch 1 (check)" ;;
    # mpnet's bf16 token exit between τ=0.25 (4.0x FLOPs, +0.05 F1) and 0.4 (5.4x, -3.3): the 8x-at-1-F1 target
    mpnet-check) earlytag bench "$OUT/mpnet-ner-ss" uner-en-ewt:test --out docs/bench/stacked-mpnet-ner-ss-check \
      --policies token --thresholds 0.25 0.28 0.31 0.34 --precisions bf16 --backends torch --batch-sizes 32 \
      --repeats 3 --threads 1 --quiet --timing-limit 300 --label "all-mpnet-base-v2 NER, self-sampling, bf16 (check)" ;;
    # MiniLM at batch 32 where the 4x-within-1-F1 target lies: bf16 and int8-mixed token exit at small τ, the
    # torch backend, on an otherwise idle machine (the grid's run above had the MPNet bench on the other core)
    minilm-check) earlytag bench "$OUT/minilm-ner-ss" uner-en-ewt:test --out docs/bench/stacked-minilm-ner-ss-check \
      --policies token --thresholds 0.01 0.02 0.03 0.05 --precisions bf16 int8-mixed --backends torch \
      --batch-sizes 32 --repeats 3 --threads 1 --quiet --timing-limit 1000 \
      --label "all-MiniLM-L6-v2 NER, self-sampling, batch 32 (check)" ;;
    # MiniLM at batch 32 on a CPU without AVX512-BF16 or VNNI (bf16 has no fast kernels there; int8 runs 7-bit
    # weights and 8-bit activations, precision.weight_levels): int8 token exit at small τ, both backends
    minilm-int8) earlytag bench "$OUT/minilm-ner-ss" uner-en-ewt:test --out docs/bench/stacked-minilm-ner-ss-int8 \
      --policies token --thresholds 0.02 0.03 0.05 0.07 --precisions fp32 int8 --backends torch onnxruntime \
      --batch-sizes 32 --repeats 3 --compare ort-int8 --threads 1 --quiet --timing-limit 1000 \
      --label "all-MiniLM-L6-v2 NER, self-sampling, batch 32, int8 without VNNI" ;;
    # the same on the model trained with uniform layer weights (scripts/train_minilm_heads.sh), whose token exit
    # loses less F1 at 2.5-4x FLOPs: larger τ, int8 and int8-mixed, torch
    minilm-uniform-int8) earlytag bench "$OUT/minilm-ner-uniform" uner-en-ewt:test \
      --out docs/bench/stacked-minilm-ner-uniform-int8 --policies token --thresholds 0.05 0.1 0.15 0.2 \
      --precisions fp32 int8 int8-mixed --backends torch --batch-sizes 32 --repeats 3 --compare ort-int8 --threads 1 \
      --quiet --timing-limit 1000 --label "all-MiniLM-L6-v2 NER, uniform layer weights, batch 32, int8 without VNNI" ;;
    # the same model after `earlytag quantize models/minilm-ner-uniform uner-en-ewt:dev` chose which layers int8-mixed
    # keeps partly float32 (layer 0's FFN output only; the run above had none chosen, so every layer's): τ between
    # 0.1 and 0.175, where 4x within 1 F1 lies
    minilm-uniform-mixed) earlytag bench "$OUT/minilm-ner-uniform" uner-en-ewt:test \
      --out docs/bench/stacked-minilm-ner-uniform-mixed --policies token --thresholds 0.1 0.125 0.15 0.175 \
      --precisions int8 int8-mixed --backends torch --batch-sizes 32 --repeats 3 --compare ort-int8 --threads 1 \
      --quiet --timing-limit 1000 --label "all-MiniLM-L6-v2 NER, uniform layer weights, int8-mixed chosen on dev, batch 32" ;;
    # the same after `earlytag quantize models/minilm-ner-uniform uner-en-ewt:dev --exit token --threshold 0.15
    # --tolerance 0.2` chose the layers at token exit (FFN output float32 in layers 3 and 4): int8-mixed only
    minilm-uniform-mixed-exit) earlytag bench "$OUT/minilm-ner-uniform" uner-en-ewt:test \
      --out docs/bench/stacked-minilm-ner-uniform-mixed-exit --policies token --thresholds 0.1 0.125 0.15 0.175 \
      --precisions int8-mixed --backends torch --batch-sizes 32 --repeats 3 --compare ort-int8 --threads 1 \
      --quiet --timing-limit 1000 --label "all-MiniLM-L6-v2 NER, uniform layer weights, int8-mixed chosen at token exit, batch 32" ;;
    # its two settings nearest 4x within 1 F1 again, 5 passes, on an otherwise idle machine
    minilm-uniform-mixed-exit-check) earlytag bench "$OUT/minilm-ner-uniform" uner-en-ewt:test \
      --out docs/bench/stacked-minilm-ner-uniform-mixed-exit-check --policies token --thresholds 0.125 0.15 \
      --precisions int8-mixed --backends torch --batch-sizes 32 --repeats 5 --threads 1 --quiet --timing-limit 1000 \
      --label "all-MiniLM-L6-v2 NER, uniform layer weights, int8-mixed chosen at token exit, batch 32 (check)" ;;
    # the uniform model at batch 1 (latency), as minilm-b1: the ONNX Runtime backend's one-call climb; no int8-mixed:
    # `earlytag quantize models/minilm-ner-uniform uner-en-ewt:dev --backend onnxruntime --batch-size 1 --limit 0`
    # found int8 alone as good on dev (73.35, every FFN output float32 73.03); τ where its flatter curve keeps F1
    minilm-uniform-b1) earlytag bench "$OUT/minilm-ner-uniform" uner-en-ewt:test \
      --out docs/bench/stacked-minilm-ner-uniform-b1 --policies token --thresholds 0.02 0.05 0.1 0.15 0.2 \
      --precisions fp32 int8 --backends onnxruntime --batch-sizes 1 --repeats 3 \
      --compare hf-pipeline ort-fp32 ort-int8 --threads 1 --quiet --timing-limit-b1 200 \
      --label "all-MiniLM-L6-v2 NER, uniform layer weights, batch 1" ;;
    # uniform layer weights trained six epochs (STEPS=uniform-6ep scripts/train_minilm_heads.sh; token exit loses less
    # from its own full depth at 3-4x FLOPs) after `earlytag quantize models/minilm-ner-uniform-6ep uner-en-ewt:dev
    # --exit token --threshold 0.15 --tolerance 0.2` chose int8-mixed's float32 layers at token exit; int8 and
    # int8-mixed, τ from 0.1 (3.1x FLOPs) to 0.2, where 4x wall within 1 F1 of its own fp32 full depth may lie
    minilm-uniform-6ep) earlytag bench "$OUT/minilm-ner-uniform-6ep" uner-en-ewt:test \
      --out docs/bench/stacked-minilm-ner-uniform-6ep --policies token --thresholds 0.1 0.125 0.15 0.175 0.2 \
      --precisions int8 int8-mixed --backends torch --batch-sizes 32 --repeats 3 --compare ort-int8 --threads 1 \
      --quiet --timing-limit 1000 --label "all-MiniLM-L6-v2 NER, uniform layer weights, 6 epochs, int8-mixed chosen at token exit, batch 32" ;;
    # the same model on a CPU with AVX512-BF16 and VNNI (int8 and bf16 have fast kernels there; meta.json names the
    # CPU's flags): every precision and the three peers at batch 32, τ from 0.03 (where F1 stays near full depth:
    # the comparison with ONNX Runtime int8 at equal F1) to 0.15
    minilm-uniform-6ep-all) earlytag bench "$OUT/minilm-ner-uniform-6ep" uner-en-ewt:test \
      --out docs/bench/stacked-minilm-ner-uniform-6ep-all --policies token --thresholds 0.03 0.05 0.075 0.1 0.15 \
      --precisions fp32 bf16 int8 int8-mixed --backends torch --batch-sizes 32 --repeats 3 \
      --compare hf-pipeline ort-fp32 ort-int8 --threads 1 --quiet --timing-limit 1000 \
      --label "all-MiniLM-L6-v2 NER, uniform layer weights, 6 epochs, every precision, batch 32" ;;
    # bf16 again after the engine's attention in bf16 became three plain operators (scripts/attention_ab.py):
    # fp32 and bf16 token exit at the thresholds of minilm-uniform-6ep-all, against ONNX Runtime int8
    minilm-uniform-6ep-bf16-unfused) earlytag bench "$OUT/minilm-ner-uniform-6ep" uner-en-ewt:test \
      --out docs/bench/stacked-minilm-ner-uniform-6ep-bf16-unfused $MINILM6_BF16 \
      --label "all-MiniLM-L6-v2 NER, uniform layer weights, 6 epochs, fp32 and bf16 (bf16 attention unfused), batch 32" ;;
    # the same with each side warm through the whole 1,000 sentences (4 units of 8 batches) before the other runs:
    # under unit-by-unit alternation every contender starts each unit with the caches fp32 full depth left
    minilm-uniform-6ep-bf16-warm) earlytag bench "$OUT/minilm-ner-uniform-6ep" uner-en-ewt:test \
      --out docs/bench/stacked-minilm-ner-uniform-6ep-bf16-warm $MINILM6_BF16 --alternate 4 \
      --label "all-MiniLM-L6-v2 NER, uniform layer weights, 6 epochs, fp32 and bf16, batch 32, warm blocks of 4 units" ;;
    # after a packed step's keys and values became the real tokens' rows only (Engine.kv_real_below): MiniLM as
    # minilm-uniform-6ep-bf16-unfused, and all-mpnet-base-v2 in fp32, bf16 and int8 at the thresholds of mpnet-avx512
    minilm-uniform-6ep-kv-real) earlytag bench "$OUT/minilm-ner-uniform-6ep" uner-en-ewt:test \
      --out docs/bench/stacked-minilm-ner-uniform-6ep-kv-real $MINILM6_BF16 \
      --label "all-MiniLM-L6-v2 NER, uniform layer weights, 6 epochs, fp32 and bf16, batch 32, K/V of real tokens" ;;
    mpnet-kv-real) earlytag bench "$OUT/mpnet-ner-ss" uner-en-ewt:test --out docs/bench/stacked-mpnet-ner-ss-kv-real \
      --policies token --thresholds 0.03 0.07 0.15 0.25 0.3 --precisions fp32 bf16 int8 --backends torch \
      --batch-sizes 32 --repeats 3 --compare ort-int8 --threads 1 --quiet --timing-limit 300 \
      --label "all-mpnet-base-v2 NER, self-sampling, fp32 bf16 int8, batch 32, K/V of real tokens" ;;
    # and at batch 1 (latency), as minilm-uniform-b1: the ONNX Runtime backend's one-call climb in fp32 and int8
    minilm-uniform-6ep-b1) earlytag bench "$OUT/minilm-ner-uniform-6ep" uner-en-ewt:test \
      --out docs/bench/stacked-minilm-ner-uniform-6ep-b1 --policies token --thresholds 0.02 0.05 0.1 0.15 0.2 \
      --precisions fp32 int8 --backends onnxruntime --batch-sizes 1 --repeats 3 \
      --compare hf-pipeline ort-fp32 ort-int8 --threads 1 --quiet --timing-limit-b1 200 \
      --label "all-MiniLM-L6-v2 NER, uniform layer weights, 6 epochs, batch 1" ;;
    # the same at batch 1 with the branching climb graph (no layer runs once every word has halted)
    minilm-uniform-6ep-b1-branching) earlytag bench "$OUT/minilm-ner-uniform-6ep" uner-en-ewt:test \
      --out docs/bench/stacked-minilm-ner-uniform-6ep-b1-branching $MINILM6_B1 \
      --label "all-MiniLM-L6-v2 NER, uniform layer weights, 6 epochs, batch 1, branching climb" ;;
    # the same after the batch-1 full-depth graph became one sentence's rows with constant-shape reshapes (the
    # none/static graph the climb backend runs; fp32 full depth against ONNX Runtime fp32's own graph)
    minilm-uniform-6ep-b1-lean) earlytag bench "$OUT/minilm-ner-uniform-6ep" uner-en-ewt:test \
      --out docs/bench/stacked-minilm-ner-uniform-6ep-b1-lean $MINILM6_B1 \
      --label "all-MiniLM-L6-v2 NER, uniform layer weights, 6 epochs, batch 1, lean full-depth graph" ;;
    # batch 32 with torch's fp32 products in oneDNN (--backend onednn) against torch's own (MKL) and ONNX Runtime
    minilm-uniform-6ep-onednn) earlytag bench "$OUT/minilm-ner-uniform-6ep" uner-en-ewt:test \
      --out docs/bench/stacked-minilm-ner-uniform-6ep-onednn $MINILM6_ONEDNN \
      --label "all-MiniLM-L6-v2 NER, uniform layer weights, 6 epochs, fp32 products in oneDNN, batch 32" ;;
    # the same after the onednn backend's layer finish put the residual sums and the FFN's GELU inside oneDNN's
    # products; and all-mpnet-base-v2 at batch 32 with the onednn backend against ONNX Runtime fp32 and int8
    minilm-uniform-6ep-onednn-fused) earlytag bench "$OUT/minilm-ner-uniform-6ep" uner-en-ewt:test \
      --out docs/bench/stacked-minilm-ner-uniform-6ep-onednn-fused $MINILM6_ONEDNN \
      --label "all-MiniLM-L6-v2 NER, uniform layer weights, 6 epochs, fp32 products and layer finish in oneDNN, batch 32" ;;
    # bf16 with the onednn backend (weights prepacked; bias, residual sums and GELU inside the products; the packed
    # steps' rows bucketed, not the dense steps') against bf16 through torch's F.linear, batch 32; and batch 1, the
    # torch engine warm through blocks of 25 sentences (as minilm-uniform-6ep-b1-torch-warm)
    minilm-uniform-6ep-onednn-bf16) earlytag bench "$OUT/minilm-ner-uniform-6ep" uner-en-ewt:test \
      --out docs/bench/stacked-minilm-ner-uniform-6ep-onednn-bf16 --policies token \
      --thresholds 0.03 0.05 0.075 0.1 0.15 --precisions bf16 --backends torch onednn --batch-sizes 32 --repeats 3 \
      --compare ort-int8 --threads 1 --quiet --timing-limit 1000 \
      --label "all-MiniLM-L6-v2 NER, uniform layer weights, 6 epochs, bf16 in oneDNN, batch 32" ;;
    minilm-uniform-6ep-b1-onednn-bf16-warm) earlytag bench "$OUT/minilm-ner-uniform-6ep" uner-en-ewt:test \
      --out docs/bench/stacked-minilm-ner-uniform-6ep-b1-onednn-bf16-warm --policies token \
      --thresholds 0.02 0.05 0.1 0.15 0.2 0.25 --precisions bf16 --backends torch onednn --batch-sizes 1 \
      --repeats 3 --threads 1 --quiet --timing-limit-b1 200 --alternate 25 \
      --label "all-MiniLM-L6-v2 NER, uniform layer weights, 6 epochs, batch 1, bf16 in oneDNN, warm blocks of 25" ;;
    mpnet-onednn-bf16) earlytag bench "$OUT/mpnet-ner-ss" uner-en-ewt:test \
      --out docs/bench/stacked-mpnet-ner-ss-onednn-bf16 --policies token --thresholds 0.07 0.15 0.25 \
      --precisions bf16 --backends torch onednn --batch-sizes 32 --repeats 3 --compare ort-int8 --threads 1 --quiet \
      --timing-limit 300 --label "all-mpnet-base-v2 NER, self-sampling, bf16 in oneDNN, batch 32" ;;
    mpnet-onednn) earlytag bench "$OUT/mpnet-ner-ss" uner-en-ewt:test --out docs/bench/stacked-mpnet-ner-ss-onednn \
      --policies token --thresholds 0.07 0.15 0.25 --precisions fp32 --backends onednn --batch-sizes 32 \
      --repeats 3 --compare ort-fp32 ort-int8 --threads 1 --quiet --timing-limit 300 \
      --label "all-mpnet-base-v2 NER, self-sampling, fp32 in oneDNN, batch 32, AVX512-BF16 CPU" ;;
    # batch 32 through the ONNX Runtime backend's layer sessions (fp32, int8) against the torch backend and ONNX
    # Runtime's own full-depth graphs: which backend's fp32 full depth is level with ONNX Runtime fp32 at batch 32
    minilm-uniform-6ep-ort32) earlytag bench "$OUT/minilm-ner-uniform-6ep" uner-en-ewt:test \
      --out docs/bench/stacked-minilm-ner-uniform-6ep-ort32 --policies token --thresholds 0.05 0.1 0.15 \
      --precisions fp32 int8 --backends torch onnxruntime --batch-sizes 32 --repeats 3 \
      --compare ort-fp32 ort-int8 --threads 1 --quiet --timing-limit 1000 \
      --label "all-MiniLM-L6-v2 NER, uniform layer weights, 6 epochs, both backends, batch 32" ;;
    *) echo "unknown bench: $name (one of: $(grep -oE '^    [a-z0-9-]+\)' "$0" | tr -d ' )' | paste -sd ' '))" >&2
       exit 2 ;;
  esac
done
