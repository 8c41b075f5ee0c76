#!/usr/bin/env python
"""Attention in the engine's layer steps: torch's fused scaled_dot_product_attention against the same arithmetic as
three plain operators (``model.layers.attend_unfused``), timed inside the engine (issue 10, fixed per-step costs).

    python scripts/attention_ab.py models/minilm-ner-uniform-6ep --precisions bf16 fp32 \
        --out docs/bench/attention-ab.txt

On this CPU torch's fused attention runs slower in bf16 than in fp32 at the engine's shapes, so a plain
``baddbmm`` (scores plus the mask in one product) -> ``softmax`` -> ``bmm`` is a candidate there (the engine's
choice since this script's first run: unfused in bf16/fp16 on a CPU, fused elsewhere), with the softmax taken in
float32 pieces (``layers.softmax_``) or, as first, in bf16/fp16 itself; and with the mask given to ``baddbmm`` as
broadcast rows ``(B·h, 1, Tk)`` (now) or, as before, copied to the scores' size. For each
precision, full depth and token exit are run with each attention in alternating passes over the same pre-built
batches (batch 32, the engine's refill on), one torch thread; medians of the passes, and the share of words
labelled as with the fused attention (padding excluded). The engine's ``attend`` is set for each pass.
"""

from __future__ import annotations

from functools import partial
from unittest.mock import patch

import torch

from earlytag import Tagger
from earlytag.bench import ab_finish, ab_parser, ab_start, ab_workload, engine_variants_ab, variants_ab_rows
from earlytag.model import layers
from earlytag.model.layers import attend, attend_unfused


def unfused_half_softmax(*args, **kwargs):
    """``attend_unfused`` with torch's softmax taken in the scores' own precision (bf16/fp16), as it first was,
    instead of ``softmax_``'s float32 pieces."""
    with patch.object(layers, "softmax_", lambda scores: scores.softmax(-1)):
        return attend_unfused(*args, **kwargs)


def unfused_mask_copied(q, k, v, bias, num_heads):
    """``attend_unfused`` as it was before its input to ``baddbmm`` became broadcast rows: the bias expanded and
    copied to the scores' size ``(B·h, Tq, Tk)`` for every call, a key mask included."""
    b, tq, d = q.shape
    tk, dh = k.shape[1], d // num_heads
    qh, kh, vh = (layers.split_heads(x, num_heads).reshape(b * num_heads, -1, dh) for x in (q, k, v))
    if bias is None:
        scores = torch.bmm(qh, kh.transpose(1, 2)).mul_(dh ** -0.5)
    else:
        full = bias.to(q.dtype).expand(b, num_heads, tq, tk).reshape(b * num_heads, tq, tk)
        scores = torch.baddbmm(full, qh, kh.transpose(1, 2), alpha=dh ** -0.5)
    out = torch.bmm(layers.softmax_(scores), vh)
    return out.view(b, num_heads, tq, dh).transpose(1, 2).reshape(b, tq, d)


VARIANTS = {"fused (sdpa)": attend, "baddbmm-softmax-bmm": attend_unfused,
            "baddbmm-softmax-bmm, mask copied to the scores' size": unfused_mask_copied,
            "baddbmm-softmax-bmm, softmax in bf16/fp16": unfused_half_softmax}  # the last: half precisions only


def main() -> None:
    args = ab_start(ab_parser(__doc__.split("\n\n")[0], precisions=["bf16", "fp32"]))
    lines = ["| precision | setting | attention | seconds (median) | fused / this (time) | full depth / this setting "
             "| words as fused |", "|---|---|---|---|---|---|---|"]
    for precision in args.precisions:
        tagger = Tagger.from_pretrained(args.model, precision=precision)
        _, units, cfgs = ab_workload(tagger, args)
        batches = [b for unit in units for b in unit]  # one unit: the refill across all of them
        variants = {v: partial(setattr, tagger.engine, "attend", fn) for v, fn in VARIANTS.items()
                    if precision in ("bf16", "fp16") or "bf16/fp16" not in v}
        medians, labels = engine_variants_ab(tagger.engine, [batches], cfgs, variants, args.passes, batches[:4])
        lines += variants_ab_rows(precision, medians, labels, "fused (sdpa)")
    ab_finish(args, lines)


if __name__ == "__main__":
    main()
