"""int8 on a CPU without VNNI: which bits to give up. AVX2's int8 multiply-add sums two products of an 8-bit
activation and an 8-bit weight into 16 bits and can saturate; either the activations (quantized per call) or the
weights (per output channel) lose a bit. Scores each model at full depth in fp32 and in int8 three ways: 8-bit
weights with 7-bit activations (what earlytag did before), 7-bit weights with 8-bit activations (what it does now
without VNNI), 8-bit both (what it does with VNNI; may saturate here).

    python scripts/int8_weight_bits.py models/minilm-ner-crf-lr1e-2 models/minilm-ner-crf --data uner-en-ewt:dev \\
        --out docs/bench/int8-weight-bits.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from earlytag import Tagger  # noqa: E402
from earlytag.bench import machine_info  # noqa: E402
from earlytag.model import precision  # noqa: E402

VARIANTS = {"w8-a7": (127, True), "w7-a8": (63, False), "w8-a8": (127, False)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--data", default="uner-en-ewt:dev")
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for model in args.models:
        base = Tagger.from_pretrained(model)
        data = base.load(args.data)
        row = {"model": model, "fp32": base.evaluate(data, exit="none", per_layer=False)["f1"]}
        for name, (levels, reduce_range) in VARIANTS.items():
            precision.weight_levels = lambda n=levels: n  # read by the quantization at load
            precision.Int8Linear.reduce_range = reduce_range
            tagger = Tagger.from_pretrained(model, precision="int8")
            row[name] = tagger.evaluate(data, exit="none", per_layer=False)["f1"]
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    result = {"command": "python scripts/int8_weight_bits.py " + " ".join(argv or sys.argv[1:]), "data": args.data,
              "vnni": precision.has_vnni(), "machine": machine_info(),
              "load_average": os.getloadavg(), "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
