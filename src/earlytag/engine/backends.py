"""Layer backends: what computes a layer step and an exit head, while the exit loop (policy, packing, refill)
stays in :class:`~earlytag.engine.runner.Engine`.

The engine's own torch code is the default backend. :class:`OnnxLayers` runs every layer's step and every exit
head as ONNX Runtime sessions with dynamic shapes, in float32 or with dynamic int8 (per-channel weights), exported
once per model and cached. One layer is three small graphs:

- ``dense``: ``h (b, T, d), bias (b, 1|H, T, T) -> (b, T, d)``, every row;
- ``packed`` (kv=keep): ``x (N_a, d)`` the active rows, ``h (b, T, d)`` every token of the live sentences (keys
  and values, halted ones included), ``slot (N_a,)`` each active row's place in the ``(b, Ta)`` query padding,
  ``bias (b, 1|H, Ta, T)`` -> ``(N_a, d)``;
- ``head``: ``h (N_w, d) -> score, label, uncertainty`` (float32, the engine's :func:`head_scores`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ..model.layers import attend, dense_layer, finish
from .policies import head_scores


class _LayerGraph(nn.Module):
    """One layer's modules (registered, so the exporter finds their weights) and its head count."""

    def __init__(self, parts, heads: int):
        super().__init__()
        self.parts, self.heads = parts, heads
        self._mods = nn.ModuleList([parts.query, parts.key, parts.value, parts.attn_out, parts.attn_norm,
                                    parts.ffn_in, parts.ffn_out, parts.ffn_norm])


class _Dense(_LayerGraph):
    def forward(self, h, bias):
        return dense_layer(self.parts, h, bias, self.heads)


class _Packed(_LayerGraph):
    def forward(self, x, h, slot, bias):
        p = self.parts
        b, t, d = h.shape
        ta = bias.shape[2]
        q = p.query(x)  # (N_a, da)
        k, v = p.key(h), p.value(h)  # (b, T, da): halted tokens are keys too
        da = q.shape[-1]
        index = slot.unsqueeze(1).expand(-1, da)
        qpad = torch.zeros(b * ta, da, dtype=x.dtype).scatter(0, index, q).view(b, ta, da)
        ctx = attend(qpad, k, v, bias, self.heads).reshape(b * ta, da).gather(0, index)  # (N_a, da)
        return finish(p, ctx, x)


class _Head(nn.Module):
    def __init__(self, linear: nn.Linear, criterion: str):
        super().__init__()
        self.linear, self.criterion = linear, criterion

    def forward(self, h):
        score, pred, unc = head_scores(self.linear(h), self.criterion)
        return score, pred, unc


def _model_key(model, precision: str) -> str:
    """Identifies the exported graphs: the weights' bytes (hashed), the config, the precision, the exporter."""
    digest = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(t.detach().cpu().contiguous().numpy().tobytes()[:4096])
        digest.update(str(tuple(t.shape)).encode())
        digest.update(str(float(t.float().sum())).encode())
    digest.update(json.dumps(model.config.to_dict(), sort_keys=True, default=str).encode())
    digest.update(f"{precision} {torch.__version__} v1".encode())
    return digest.hexdigest()[:16]


class OnnxLayers:
    """Every layer step and exit head of a model as ONNX Runtime sessions (fp32 or int8)."""

    def __init__(self, model, precision: str = "fp32", cache: str | os.PathLike | None = None,
                 threads: int | None = None):
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise ConfigError("backend", "the onnxruntime backend needs onnxruntime and onnx: pip install "
                                         "'earlytag[onnx]'") from None
        if precision not in ("fp32", "int8"):
            raise ConfigError("precision", f"the onnxruntime backend runs fp32 or int8, not {precision}; use "
                                           "--backend torch for bf16/fp16")
        from ..data.datasets import cache_dir
        from ..peers import export_onnx, ort_session, quantize_onnx

        self.model = model
        self.precision = precision
        self.num_heads = model.adapter.num_heads
        root = Path(cache or cache_dir() / "onnx") / _model_key(model, precision)
        d = model.adapter.hidden_size
        sessions = {}
        for i, parts in enumerate(model.adapter.layers):
            h = torch.randn(2, 5, d)
            graphs = {
                "dense": (_Dense(parts, parts.num_heads), (h, torch.zeros(2, 1, 5, 5)), ["h", "bias"],
                          {"h": {0: "b", 1: "t"}, "bias": {0: "b", 1: "hb", 2: "t", 3: "t"}, "out": {0: "b", 1: "t"}}),
                "packed": (_Packed(parts, parts.num_heads),
                           (torch.randn(3, d), h, torch.tensor([0, 1, 5]), torch.zeros(2, 1, 3, 5)),
                           ["x", "h", "slot", "bias"],
                           {"x": {0: "n"}, "h": {0: "b", 1: "t"}, "slot": {0: "n"},
                            "bias": {0: "b", 1: "hb", 2: "ta", 3: "t"}, "out": {0: "n"}}),
            }
            for kind, (module, args, names, dynamic) in graphs.items():
                path = root / f"layer{i}-{kind}.onnx"
                if not path.is_file():
                    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.onnx")
                    export_onnx(module.eval(), args, tmp, names, ["out"], dynamic)
                    os.replace(tmp, path)
                if precision == "int8":
                    qpath = path.with_name(path.stem + "-int8.onnx")
                    if not qpath.is_file():
                        tmp = qpath.with_name(f".{qpath.name}.tmp-{os.getpid()}.onnx")
                        quantize_onnx(path, tmp)
                        os.replace(tmp, qpath)
                    path = qpath
                sessions[i, kind] = ort_session(path, threads)
        for i, head in enumerate(model.heads):
            for criterion in ("entropy", "maxprob"):
                path = root / f"head{i}-{criterion}.onnx"
                if not path.is_file():
                    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.onnx")
                    export_onnx(_Head(head.linear, criterion).eval(), (torch.randn(3, d),), tmp, ["h"],
                                ["score", "pred", "unc"], {"h": {0: "n"}, "score": {0: "n"}, "pred": {0: "n"},
                                                          "unc": {0: "n"}})
                    os.replace(tmp, path)
                sessions[i, criterion] = ort_session(path, threads)
        self.sessions = sessions
        self.root = root

    @staticmethod
    def _np(t: torch.Tensor) -> np.ndarray:
        return t.detach().contiguous().numpy()

    def dense(self, layer: int, h: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if bias is None:
            bias = torch.zeros(1, 1, 1, 1)
        out = self.sessions[layer, "dense"].run(None, {"h": self._np(h), "bias": self._np(bias.float())})[0]
        return torch.from_numpy(out)

    def packed(self, layer: int, x: torch.Tensor, h: torch.Tensor, slot: torch.Tensor, ta: int,
               bias: torch.Tensor | None) -> torch.Tensor:
        b, t, _ = h.shape
        if bias is None:
            bias = torch.zeros(1, 1, ta, 1)
        elif bias.shape[2] != ta:
            bias = bias.expand(-1, -1, ta, -1)
        out = self.sessions[layer, "packed"].run(None, {"x": self._np(x), "h": self._np(h), "slot": self._np(slot),
                                                        "bias": self._np(bias.float())})[0]
        return torch.from_numpy(out)

    def head(self, layer: int, hw: torch.Tensor, criterion: str):
        score, pred, unc = self.sessions[layer, criterion].run(None, {"h": self._np(hw)})
        return torch.from_numpy(score), torch.from_numpy(pred), torch.from_numpy(unc)

