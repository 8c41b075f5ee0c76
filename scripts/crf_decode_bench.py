"""Decoding time of a batch of 32 sentences against sentence length: argmax (softmax head), Viterbi (as decoding
runs it: in NumPy on a CPU; and its torch implementation, as on a GPU), exact
marginals (forward-backward), mean-field with M = 1..5 updates, and blockwise (mean-field M = 0, 1 or 3, then
exact decoding of every run of words whose mean-field probability is below 0.9 or whose step breaks the scheme,
between the words it is sure of, or Viterbi where that is cheaper; blockwise-1-torch: the refinement in torch,
not NumPy) (earlytag.model.crf).

    python scripts/crf_decode_bench.py --out docs/bench/crf-decode.json [--model models/minilm-ner-crf]
    python scripts/crf_decode_bench.py --out docs/bench/crf-decode-real.json --model models/minilm-ner-crf-lr1e-2 \
        --emissions uner-en-ewt:test

Emissions are random, scaled by 3 (a worst case for blockwise: many doubtful words), or with --emissions the
model's own last-layer emissions on a data set, its sentences laid end to end into documents of each length.
Transitions are random or the model's (--model); C = the model's labels (7 for UNER without a model). Every
contender runs on the same tensors in alternating passes (the order shuffled per pass); the figure is the median
over passes of the per-call time, with each contender's share of words labelled as Viterbi labels them. One
torch thread unless --threads. The C allocator keeps freed memory, as the CLI's (earlytag.allocator), unless
--plain-malloc.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from earlytag.allocator import keep_freed_memory  # noqa: E402
from earlytag.bench import machine_info  # noqa: E402
from earlytag.model import crf  # noqa: E402

LENGTHS = (16, 32, 64, 128, 256, 512, 1024)


def contenders(trans, start, end, trans_c, start_c, end_c):
    out = {"argmax": lambda e, m: e.max(-1).indices,  # the softmax head's labels (the engine's flat rows)
           "viterbi": lambda e, m: crf.viterbi(e, m, trans_c, start_c, end_c)[0],  # on a CPU: in NumPy
           "viterbi-torch": lambda e, m: crf.viterbi_torch(e, m, trans_c, start_c, end_c)[0],
           "forward-backward": lambda e, m: crf.marginals(e, m, trans, start, end)}
    for iters in range(1, 6):
        out[f"meanfield-{iters}"] = lambda e, m, k=iters: crf.meanfield_probs(e, m, trans, start, end, k)[1]
    for iters in (0, 1, 3):  # 0: from the emission softmax (with start/end scores), no mean-field update
        out[f"blockwise-{iters}"] = lambda e, m, k=iters: blockwise(e, m, k, trans, start, end, trans_c, start_c, end_c)
    # the run refinement in torch, as on a GPU (on a CPU it runs in NumPy): the same labels
    out["blockwise-1-torch"] = lambda e, m: blockwise(e, m, 1, trans, start, end, trans_c, start_c, end_c,
                                                      refine=crf.refine_runs_torch)
    return out


def blockwise(emit, mask, iters, trans, start, end, trans_c, start_c, end_c, below=0.9, refine=None):
    """What a CRF head with decode blockwise computes on a batch it refines (earlytag.model.heads.CRFHead.decode;
    the head hands batches of sentences shorter than its blockwise_from to Viterbi, and a batch whose runs would
    cost more than Viterbi over it to Viterbi too)."""
    best, pred, _ = crf.meanfield_probs(emit, mask, trans, start, end, iters)
    return (refine or crf.refine_runs)(emit, mask, trans_c, start_c, end_c, pred, best, below, whole_if_cheaper=True)


def alternating_times(fns: dict[str, Callable[[], object]], passes: int, calls: int,
                      rng: random.Random) -> dict[str, list[float]]:
    """Seconds per call of each contender, one figure per pass: every pass runs each ``calls`` times in a new
    shuffled order, so a slow spell of a shared machine falls on all of them."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(passes):
        names = list(fns)
        rng.shuffle(names)
        for name in names:
            t0 = time.perf_counter()
            for _ in range(calls):
                fns[name]()
            times[name].append((time.perf_counter() - t0) / calls)
    return times


def model_emissions(model: str, data: str) -> list[torch.Tensor]:
    """The last layer's emissions ``(n, C)`` of every sentence of ``data`` (what the engine hands the head's
    decode at full depth)."""
    from earlytag import Tagger

    tagger = Tagger.from_pretrained(model)
    head = tagger.model.head
    decode = head.decode
    sentences = []

    def keep(emit, word_mask, exit_layer):
        sentences.extend(e[:n] for e, n in zip(emit.float(), word_mask.sum(1).tolist()))
        return decode(emit, word_mask, exit_layer)

    head.decode = keep
    tagger.evaluate(tagger.load(data), exit={"policy": "none"})
    head.decode = decode
    return sentences


def documents(sentences: list[torch.Tensor], batch: int, n: int) -> torch.Tensor:
    """``(batch, n, C)``: the sentences end to end, cut into documents of ``n`` words (wrapping around)."""
    flat = torch.cat(sentences)  # (words, C)
    need = batch * n
    flat = flat.repeat(-(-need // flat.shape[0]), 1)[:need]
    return flat.reshape(batch, n, -1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", help="take the labels and learned transitions of this CRF model")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--passes", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS))
    ap.add_argument("--emissions", metavar="DATA", help="the model's own emissions on this data set (needs --model)")
    ap.add_argument("--plain-malloc", action="store_true",
                    help="leave the C allocator's defaults (the CLI keeps freed memory: earlytag.allocator)")
    args = ap.parse_args(argv)
    if not args.plain_malloc:
        keep_freed_memory()  # as every earlytag CLI verb does
    if args.emissions and not args.model:
        ap.error("--emissions needs --model")
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    if args.model:
        from earlytag.model.tagger import EarlyExitTagger

        head = EarlyExitTagger.from_pretrained(args.model).head
        last = head.transitions.shape[0] - 1
        trans, start, end = (t.detach() for t in head.params(last))
        trans_c, start_c, end_c = (t.detach() for t in head.params(last, constrained=True))
    else:
        c = 7
        trans, start, end = torch.randn(c, c, generator=g), torch.randn(c, generator=g), torch.randn(c, generator=g)
        trans_c, start_c, end_c = trans, start, end
    c = trans.shape[0]
    fns = contenders(trans, start, end, trans_c, start_c, end_c)
    real = model_emissions(args.model, args.emissions) if args.emissions else None
    rows = []
    rng = random.Random(0)
    with torch.inference_mode():
        for n in args.lengths:
            emit = documents(real, args.batch, n) if real else torch.randn(args.batch, n, c, generator=g) * 3
            mask = torch.ones(args.batch, n, dtype=torch.bool)
            mask[1::2, n // 2:] = False  # half the sentences half as long: padding is handled as in real batches
            calls = max(2, int(4000 / n))  # enough calls per pass for a measurable time
            for fn in fns.values():  # warm-up
                fn(emit, mask)
            times = alternating_times({k: lambda fn=fn, e=emit, m=mask: fn(e, m) for k, fn in fns.items()}, args.passes,
                                      calls, rng)
            med = {name: statistics.median(v) for name, v in times.items()}
            exact = fns["viterbi"](emit, mask)
            agree = {k: round(float((fn(emit, mask) == exact)[mask].float().mean()), 5) for k, fn in fns.items()
                     if k not in ("viterbi", "forward-backward")}
            row = {"words": n, "batch": args.batch, "labels": c, "ms": {k: round(v * 1e3, 4) for k, v in med.items()},
                   "viterbi_over_meanfield3": round(med["viterbi"] / med["meanfield-3"], 2),
                   "viterbi_over_blockwise1": round(med["viterbi"] / med["blockwise-1"], 2),
                   "as_viterbi": agree,
                   "spread": {k: round((max(v) - min(v)) / statistics.median(v), 3) for k, v in times.items()}}
            rows.append(row)
            print(f"{n:5d} words: " + ", ".join(f"{k} {v * 1e3:.3f} ms" for k, v in med.items())
                  + f" | viterbi/meanfield-3 {row['viterbi_over_meanfield3']:.1f}x", file=sys.stderr)
    result = {"command": "python scripts/crf_decode_bench.py " + " ".join(argv or sys.argv[1:]),
              "machine": machine_info(), "threads": args.threads, "passes": args.passes,
              "load_average": os.getloadavg(), "model": args.model, "emissions": args.emissions, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
