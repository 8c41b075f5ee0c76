"""Inference precision of a tagger: ``fp32``, ``bf16``, ``fp16``, ``int8`` or ``int8-mixed``.

- ``bf16`` / ``fp16``: the encoder's weights and activations in that dtype. The exit heads stay in float32 (they
  are tiny) and the uncertainty that decides exits is always computed in float32.
- ``int8``: every Linear of the encoder becomes an :class:`Int8Linear`: weights quantized to int8 per output
  channel (symmetric), activations quantized per call, the product computed by torch's quantized CPU kernels
  (``torch.ops.quantized.linear_dynamic``: fbgemm / oneDNN). Layer norms, attention and the exit heads stay in
  float32. The engine keeps its fused Q/K/V projection (:meth:`Int8Linear.cat` joins the int8 rows exactly).
- ``int8-mixed``: the same but the FFN's output projection stays float32 (:data:`INT8_ROLES`): in every layer, or
  only in the layers ``earlytag quantize`` chose on dev data for this model and backend (``int8_mixed`` in its
  config; :func:`quantized_roles`).

The ``onednn`` backend (:func:`use_onednn`) keeps fp32 but runs every encoder Linear's inference product in oneDNN
with a prepacked weight (:class:`OneDnnLinear`), for CPUs where torch's BLAS is the slow part.

Settings a device cannot run stop with one line that says what to use instead (:func:`check_precision`).
"""

from __future__ import annotations

import functools
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ..defaults import PRECISIONS
from ..errors import ConfigError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": torch.float32,
          "int8-mixed": torch.float32}
# the Linear layers each int8 precision quantizes; int8-mixed keeps the FFN's output projection in float32: its input
# (after GELU) has the widest activation range, and quantizing it per call cost most of int8's F1 loss
# (docs/results.md section 4)
INT8_ROLES = {"int8": ("query", "key", "value", "attn_out", "ffn_in", "ffn_out"),
              "int8-mixed": ("query", "key", "value", "attn_out", "ffn_in")}


def quantized_roles(model, precision: str, backend: str = "torch") -> list[tuple[str, ...]]:
    """Per encoder layer, the Linear roles ``precision`` quantizes with ``backend``. ``int8-mixed`` keeps the FFN
    output projection float32 in the layers the model's ``int8_mixed[backend].float_ffn_out`` names (chosen on dev by
    ``earlytag quantize --backend``: a choice made for one backend does not carry to the other), in every layer when
    the model has no choice for that backend."""
    num_layers = len(model.adapter.layers)
    if precision not in INT8_ROLES:
        return [()] * num_layers
    choice = (model.config.int8_mixed or {}).get(backend)
    if precision == "int8" or choice is None:
        return [INT8_ROLES[precision]] * num_layers
    kept = set(choice["float_ffn_out"])
    if kept - set(range(num_layers)):
        raise ConfigError(f"int8_mixed.{backend}.float_ffn_out", f"layers {sorted(kept)} named, the encoder has "
                                                                 f"{num_layers} (counted from 0); run earlytag quantize again")
    return [INT8_ROLES["int8-mixed"] if i in kept else INT8_ROLES["int8"] for i in range(num_layers)]


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.lru_cache(maxsize=1)
def int8_kernels() -> bool:
    """Whether this torch has the quantized CPU kernels Int8Linear runs on."""
    try:
        Int8Linear(torch.ones(2, 2), torch.zeros(2))(torch.ones(1, 2))
        return True
    except (RuntimeError, AttributeError, NotImplementedError):
        return False


def check_precision(precision: str, device: torch.device | str = "cpu") -> None:
    """Refuse, in one line with what to use instead, a precision the device cannot run (well)."""
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise ConfigError("precision", f"expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision in INT8_ROLES:
        if device.type != "cpu":
            raise ConfigError("precision", f"{precision} runs on the CPU (torch's quantized kernels), not on {device}; "
                                           "on a GPU use --precision fp16 or bf16")
        if not int8_kernels():
            raise ConfigError("precision", "this torch build has no quantized int8 CPU kernels (fbgemm/oneDNN); use "
                                           "--precision bf16 or fp32, or --backend onnxruntime for int8")
    if device.type == "cpu":
        flags = cpu_flags()
        if precision == "fp16" and flags and not flags & {"avx512_fp16", "amx_fp16"}:
            raise ConfigError("precision", "this CPU has no float16 arithmetic (AVX512-FP16/AMX-FP16); use "
                              + ("--precision bf16" if flags & {"avx512_bf16", "amx_bf16"} else "--precision int8")
                              + " or fp32")
    elif device.type == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise ConfigError("precision", f"{torch.cuda.get_device_name(device)} has no bfloat16; use --precision fp16")


def has_vnni() -> bool:
    """Whether the CPU's int8 multiply-add sums into 32 bits (VNNI, or AMX)."""
    return bool(cpu_flags() & {"avx512_vnni", "avx_vnni", "amx_int8"})


@functools.lru_cache(maxsize=1)
def weight_levels() -> int:
    """The largest int8 weight: 127 where the CPU has VNNI (its int8 multiply-add sums into 32 bits), 63 where it
    lacks it (AVX2's multiply-add sums two products of an 8-bit activation and a weight into 16 bits, which 8-bit
    activations with 8-bit weights can saturate; with 7-bit weights they cannot). Activations keep their 8 bits
    either way: per-channel weights lose less from one bit than the per-call activations do (docs/design.md)."""
    return 127 if has_vnni() else 63


def _quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: ``(int8 rows (out, in), float scales (out,))``, at most
    :func:`weight_levels` in magnitude."""
    levels = weight_levels()
    w = weight.detach().float()
    scale = (w.abs().amax(1) / levels).clamp(min=1e-12)  # (out,)
    q = torch.round(w / scale[:, None]).clamp(-levels, levels).to(torch.int8)
    return q, scale


class Int8Linear(nn.Module):
    """Dynamic int8 Linear (per-channel int8 weights, activations quantized per call)."""

    reduce_range = False  # 8-bit activations (see weight_levels); True: 7 bits (scripts/int8_weight_bits.py)

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, _q: tuple | None = None):
        super().__init__()
        q, scale = _q if _q is not None else _quantize_rows(weight)
        self.out_features, self.in_features = q.shape
        self.register_buffer("int8_weight", q)
        self.register_buffer("scale", scale)
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        with warnings.catch_warnings():  # quantized tensors are torch's way in to its int8 kernels
            warnings.simplefilter("ignore")
            qweight = torch._make_per_channel_quantized_tensor(
                q, scale.double(), torch.zeros(len(scale), dtype=torch.long), 0)
            self._packed = torch.ops.quantized.linear_prepack(qweight, self.bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        return cls(linear.weight, linear.bias)

    @classmethod
    def cat(cls, parts: list[Int8Linear]) -> Int8Linear:
        """One Linear computing the outputs of ``parts`` side by side (their int8 rows, exactly)."""
        q = torch.cat([p.int8_weight for p in parts])
        scale = torch.cat([p.scale for p in parts])
        bias = None if any(p.bias is None for p in parts) else torch.cat([p.bias for p in parts])
        return cls(q.float() * scale[:, None], bias, _q=(q, scale))

    def dequantized(self) -> torch.Tensor:
        return self.int8_weight.float() * self.scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = torch.ops.quantized.linear_dynamic(x.reshape(-1, shape[-1]).float().contiguous(), self._packed,
                                               self.reduce_range)
        return y.view(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per channel"


def onednn_available() -> bool:
    """Whether this torch has oneDNN's linear with prepacked weights (the ``onednn`` backend's product)."""
    return (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))


ONEDNN_DTYPES = (torch.float32, torch.bfloat16)  # the onednn backend's precisions: fp32 and bf16


def onednn_bf16_available() -> bool:
    """Whether oneDNN runs bfloat16 products on this CPU (it needs AVX-512 at least; AVX512-BF16 or AMX makes them
    fast)."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(check()) if check is not None else False
    except RuntimeError:
        return False


def onednn_pack(weight: torch.Tensor) -> torch.Tensor:
    """``weight (out, in)`` float32 or bfloat16 reordered once into oneDNN's layout for :func:`onednn_linear`."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), 64)


def onednn_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x (..., in) -> (..., out)`` through oneDNN's matrix product with a prepacked weight (float32 or bfloat16,
    the bias added as the product writes its output)."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def onednn_linear_gelu(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``gelu(x W^T + b)`` (exact, erf) with the activation applied by oneDNN as the product writes its output."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "gelu", [], "none")


def onednn_linear_add(x: torch.Tensor, other: torch.Tensor, packed: torch.Tensor,
                      bias: torch.Tensor | None) -> torch.Tensor:
    """``x W^T + b + other`` (a residual) with the sum done by oneDNN as the product writes its output."""
    return torch.ops.mkldnn._linear_pointwise.binary(x, other, packed, bias, "add")


def is_exact_gelu(act) -> bool:
    """Whether ``act`` computes torch's exact (erf) GELU, which oneDNN can fuse into a product: checked on values,
    not by type (transformers names several approximations gelu)."""
    probe = torch.linspace(-6.0, 6.0, 241)
    with torch.no_grad():
        try:
            return bool(torch.equal(act(probe), F.gelu(probe)))
        except (TypeError, RuntimeError):
            return False


class OneDnnLinear(nn.Linear):
    """A float32 or bfloat16 Linear whose inference product runs in oneDNN with its weight prepacked (the
    ``onednn`` backend). In float32 instead of the BLAS that ``F.linear`` calls (MKL in torch's CPU wheels, which on
    some non-Intel CPUs runs at half of what the CPU can: docs/results.md section 4); in bfloat16 ``F.linear`` is
    oneDNN already, but reorders the weight at every call and writes the bias as a pass of its own. The same
    parameters; training, gradients and an input of another dtype take ``F.linear``. The packed copy is rebuilt
    when the weight changes."""

    _packed: tuple | None = None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> OneDnnLinear:
        new = cls.__new__(cls)
        new.__dict__.update(linear.__dict__)
        new._packed = None
        return new

    def packed(self) -> torch.Tensor:
        key = (self.weight.data_ptr(), self.weight._version)
        if self._packed is None or self._packed[0] != key:
            self._packed = (key, onednn_pack(self.weight))
        return self._packed[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.training or torch.is_grad_enabled() or x.dtype != self.weight.dtype or x.dtype not in ONEDNN_DTYPES
                or x.device.type != "cpu"):
            return super().forward(x)
        return onednn_linear(x, self.packed(), self.bias)


def use_onednn(model):
    """Every Linear of the encoder becomes a :class:`OneDnnLinear` (the ``onednn`` backend; fp32 or bf16 on a
    CPU: call it after :func:`apply_precision`)."""
    from .adapters import adapter_for

    if not onednn_available():
        raise ConfigError("backend", "onednn needs a torch built with oneDNN (mkldnn); use --backend torch")
    for parent in list(model.encoder.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, OneDnnLinear.from_linear(child))
    model.adapter = adapter_for(model.encoder)  # the engine reaches the layers through the adapter
    return model


def apply_precision(model, precision: str):
    """Put an :class:`~earlytag.model.tagger.EarlyExitTagger` (inference only) into ``precision``; returns it."""
    from .adapters import adapter_for

    if precision not in PRECISIONS:
        raise ConfigError("precision", f"expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    current = getattr(model, "precision", "fp32")
    if precision == current:
        return model
    if current != "fp32":
        raise ConfigError("precision", f"the model is already in {current}; load it again for {precision}")
    if precision in ("bf16", "fp16"):
        model.encoder.to(DTYPES[precision])
    elif precision in INT8_ROLES:
        parents = {id(m): (parent, name) for parent in model.encoder.modules()
                   for name, m in parent.named_children()}
        for parts, roles in zip(model.adapter.layers, quantized_roles(model, precision)):
            for role in roles:
                linear = getattr(parts, role)
                parent, name = parents[id(linear)]
                setattr(parent, name, Int8Linear.from_linear(linear))
        model.adapter = adapter_for(model.encoder)  # the engine reaches the layers through the adapter
    model.precision = precision
    model.eval()
    return model
