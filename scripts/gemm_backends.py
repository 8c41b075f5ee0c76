"""float32 matrix products of a layer's shapes, one thread: torch's ``F.linear`` (the BLAS torch was built with:
MKL in the CPU wheels), oneDNN with the weight as it is and prepacked (what ``--backend onednn`` runs), and ONNX
Runtime's MatMul (MLAS), in GFLOP/s at several row counts (docs/results.md section 4).

    OMP_NUM_THREADS=1 python scripts/gemm_backends.py --json docs/bench/gemm-backends-avx512bf16.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from earlytag.bench import machine_info
from earlytag.model.precision import onednn_linear, onednn_pack
from earlytag.storage import atomic_write_text


def ort_matmul(weight: np.ndarray):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "matmul",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, weight.shape[0]])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              initializer=[numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"x": x})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["384x1536", "768x3072"], help="IN x OUT of the product")
    ap.add_argument("--rows", type=int, nargs="+", default=[8, 32, 128, 512, 1024])
    ap.add_argument("--passes", type=int, default=7)
    ap.add_argument("--json", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rows_out = []
    with torch.no_grad():
        for shape in args.shapes:
            d_in, d_out = map(int, shape.split("x"))
            w, b = torch.randn(d_out, d_in), torch.randn(d_out)
            packed = onednn_pack(w)
            run_ort = ort_matmul(w.t().contiguous().numpy())
            for n in args.rows:
                x = torch.randn(n, d_in)
                xn = x.numpy()
                fns = {"torch F.linear": (torch.nn.functional.linear, (x, w, b)), "oneDNN": (onednn_linear, (x, w, b)),
                       "oneDNN prepacked": (onednn_linear, (x, packed, b)), "ONNX Runtime": (run_ort, (xn,))}
                reps = max(3, int(2e8 // (2 * n * d_in * d_out)))
                times = {k: [] for k in fns}
                for _ in range(args.passes + 1):  # the first pass warms up
                    for k, (f, f_args) in fns.items():
                        start = time.perf_counter()
                        for _ in range(reps):
                            f(*f_args)
                        times[k].append((time.perf_counter() - start) / reps)
                flops = 2 * n * d_in * d_out
                row = {"shape": shape, "rows": n, **{k: flops / statistics.median(v[1:]) / 1e9 for k, v in times.items()}}
                rows_out.append(row)
                print(json.dumps(row))
    machine = machine_info()
    result = {"rows": rows_out, "machine": machine, "passes": args.passes}
    atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    lines = [f"GFLOP/s, float32, one thread, median of {args.passes} alternating passes; "
             f"{machine.get('cpu_capability')}, torch {machine.get('torch')}, load average "
             f"{machine.get('load_average', ['?'])[0]}:", "",
             "| in x out | rows | torch F.linear | oneDNN | oneDNN prepacked | ONNX Runtime | prepacked / F.linear |",
             "|---|---|---|---|---|---|---|"]
    for r in rows_out:
        lines.append(f"| {r['shape']} | {r['rows']} | {r['torch F.linear']:.0f} | {r['oneDNN']:.0f} | "
                     f"{r['oneDNN prepacked']:.0f} | {r['ONNX Runtime']:.0f} | "
                     f"{r['oneDNN prepacked'] / r['torch F.linear']:.2f}x |")
    atomic_write_text(args.json.replace(".json", ".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
