"""Structured slimming while fine-tuning (EarlyBERT's early-bird tickets), stacked with early exit.

Search: every self-attention head and every FFN neuron of every layer gets a learnable coefficient (1 at the
start) that scales its output: a head's context vector before the output projection, a neuron's activation
before the FFN's second projection (forward pre-hooks on the installed modules, so every code path that runs
the layers sees them). An L1 penalty on the coefficients joins the training loss for the first steps. Every
``check_every`` steps the pruning mask is drawn (per layer: the heads and neurons with the smallest
``|coefficient|``, at the asked ratios) and compared with the one drawn ``span`` checks before (normalised Hamming
distance; by default the previous one); the ticket is drawn when the last ``patience`` distances are all below
``eps`` (or at ``max_steps``).

Pruning: the coefficients are folded into the output projections (so the slim model computes exactly what the
masked model computed), the pruned heads' Q/K/V rows and output columns and the pruned neurons' rows and columns
are cut out, and the installed modules are replaced by smaller ones. Every layer keeps the same number of heads
and neurons (ratios per layer), so the GEMMs of every layer have one shape.

The slim model is saved with its encoder config unchanged plus ``earlytag.slim`` (the kept heads of every layer,
in the original numbering, and the FFN width of every layer); loading builds the full encoder from the config,
shrinks it to those sizes (:func:`shrink`) and then loads the weights. transformers 5 has no head pruning any
more, so ``AutoModel.from_pretrained`` cannot load a slim encoder: use earlytag to load it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .adapters import adapter_for


@dataclass
class SlimSpec:
    """Ratios removed per layer: heads and FFN neurons."""

    heads: float = 0.0
    ffn: float = 0.0

    @classmethod
    def parse(cls, text: str) -> SlimSpec:
        """``"heads=0.33,ffn=0.4"`` (either may be left out)."""
        spec = cls()
        for part in filter(None, (p.strip() for p in str(text).split(","))):
            key, _, value = part.partition("=")
            if key not in ("heads", "ffn") or not value:
                raise ConfigError("slim", f"expected heads=R,ffn=R with ratios in [0, 1), got {text!r}")
            try:
                ratio = float(value)
            except ValueError:
                raise ConfigError("slim", f"{key}={value!r} is not a number") from None
            if not 0.0 <= ratio < 1.0:
                raise ConfigError("slim", f"{key}={ratio} must be in [0, 1): at least one head and neuron stay")
            setattr(spec, key, ratio)
        if spec.heads == 0.0 and spec.ffn == 0.0:
            raise ConfigError("slim", f"nothing to remove in {text!r}")
        return spec


class Coefficients(nn.Module):
    """The search's learnable coefficients: ``head (L, H)`` and ``ffn (L, F)``, attached as pre-hooks on each
    layer's output projection (the heads' context) and FFN output projection (the neurons' activations)."""

    def __init__(self, adapter):
        super().__init__()
        layers = adapter.layers
        self.head_size = adapter.hidden_size // adapter.num_heads
        self.head = nn.Parameter(torch.ones(len(layers), layers[0].num_heads))
        self.ffn = nn.Parameter(torch.ones(len(layers), layers[0].ffn_in.out_features))
        self._handles = []
        for i, parts in enumerate(layers):
            self._handles.append(parts.attn_out.register_forward_pre_hook(self._scale_heads(i)))
            self._handles.append(parts.ffn_out.register_forward_pre_hook(self._scale_ffn(i)))

    def _scale_heads(self, i: int):
        def hook(module, args):
            ctx = args[0]  # (..., H·dh)
            scale = self.head[i].to(ctx.dtype).repeat_interleave(self.head_size)  # (H·dh,)
            return (ctx * scale,) + args[1:]
        return hook

    def _scale_ffn(self, i: int):
        def hook(module, args):
            return (args[0] * self.ffn[i].to(args[0].dtype),) + args[1:]
        return hook

    def penalty(self) -> torch.Tensor:
        """L1 of every coefficient, per coefficient (so the strength does not depend on the model's size)."""
        return self.head.abs().mean() + self.ffn.abs().mean()

    def masks(self, spec: SlimSpec) -> tuple[torch.Tensor, torch.Tensor]:
        """``(L, H)``, ``(L, F)`` booleans: what stays, per layer the largest ``|coefficient|``."""
        return _top(self.head.detach().abs(), spec.heads), _top(self.ffn.detach().abs(), spec.ffn)

    def detach_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def _top(values: torch.Tensor, ratio: float) -> torch.Tensor:
    """Per row, True for the ``round((1 - ratio)·n)`` (at least 1) largest values."""
    n = values.shape[1]
    keep = max(1, round((1.0 - ratio) * n))
    idx = values.topk(keep, dim=1).indices
    return torch.zeros_like(values, dtype=torch.bool).scatter_(1, idx, True)


def mask_distance(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]) -> float:
    """Normalised Hamming distance between two (head, FFN) masks: the share of entries that differ."""
    diff = sum(int((x != y).sum()) for x, y in zip(a, b))
    return diff / sum(x.numel() for x in a)


class EarlyBird:
    """Draws the ticket once the pruning mask has stopped changing: the last ``patience`` distances below
    ``eps``, each distance between the mask of a check and the mask of ``span`` checks before it (1: the check
    before). A mask changes less in 10 steps than in 50, so with frequent checks a span keeps what ``eps`` means
    (the change over a fixed number of steps) while the ticket can still be drawn at any check."""

    def __init__(self, spec: SlimSpec, eps: float = 0.1, patience: int = 3, span: int = 1):
        if span < 1:
            raise ConfigError("slim_span", f"must be at least one check, got {span}")
        self.spec, self.eps, self.patience, self.span = spec, eps, patience, span
        self.history: list[tuple[torch.Tensor, torch.Tensor]] = []  # the last span masks, oldest first
        self.distances: list[float] = []

    def check(self, coefs: Coefficients) -> bool:
        masks = coefs.masks(self.spec)
        if len(self.history) == self.span:
            self.distances.append(mask_distance(self.history.pop(0), masks))
        self.history.append(masks)
        recent = self.distances[-self.patience:]
        return len(recent) == self.patience and max(recent) < self.eps


def _cut(linear: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None,
         col_scale: torch.Tensor | None = None) -> nn.Linear:
    """A new Linear with only ``rows`` (outputs) and ``cols`` (inputs) of ``linear``; ``col_scale`` multiplies the
    kept input columns (a coefficient folded into the weights)."""
    w = linear.weight.detach()
    b = linear.bias.detach() if linear.bias is not None else None
    if rows is not None:
        w = w.index_select(0, rows)
        b = b.index_select(0, rows) if b is not None else None
    if cols is not None:
        w = w.index_select(1, cols)
    if col_scale is not None:
        w = w * col_scale.to(w.dtype)[None, :]
    new = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if b is not None:
            new.bias.copy_(b)
    new.train(linear.training)
    return new


def _set(layer: nn.Module, parts, role: str, new: nn.Linear) -> None:
    """Put ``new`` where the installed module of ``role`` is."""
    old = getattr(parts, role)
    for parent in layer.modules():
        for name, child in parent.named_children():
            if child is old:
                setattr(parent, name, new)
                return
    raise ConfigError("slim", f"cannot find the {role} module of a layer")


def prune_encoder(encoder: nn.Module, adapter, keep_heads: torch.Tensor, keep_ffn: torch.Tensor,
                  coefs: Coefficients | None = None) -> dict[str, Any]:
    """Cut the encoder down to the kept heads ``(L, H)`` and neurons ``(L, F)`` (booleans over the current
    numbering), folding ``coefs`` into the output projections. Returns the ``slim`` record for the config."""
    dh = adapter.hidden_size // adapter.num_heads
    record_heads, widths = [], []
    for i, (layer, parts) in enumerate(zip(encoder.encoder.layer, adapter.layers)):
        attn = adapter.attention(layer)
        current = getattr(attn, "earlytag_heads", torch.arange(parts.num_heads))
        heads = keep_heads[i].nonzero().squeeze(1)  # (H',) in the current numbering
        cols = (heads[:, None] * dh + torch.arange(dh)[None]).reshape(-1)  # (H'·dh,)
        neurons = keep_ffn[i].nonzero().squeeze(1)
        head_scale = None if coefs is None else coefs.head.detach()[i].index_select(0, heads).repeat_interleave(dh)
        ffn_scale = None if coefs is None else coefs.ffn.detach()[i].index_select(0, neurons)
        for role in ("query", "key", "value"):
            _set(layer, parts, role, _cut(getattr(parts, role), rows=cols))
        _set(layer, parts, "attn_out", _cut(parts.attn_out, cols=cols, col_scale=head_scale))
        _set(layer, parts, "ffn_in", _cut(parts.ffn_in, rows=neurons))
        _set(layer, parts, "ffn_out", _cut(parts.ffn_out, cols=neurons, col_scale=ffn_scale))
        attn.num_attention_heads = len(heads)
        attn.all_head_size = len(heads) * dh
        attn.earlytag_heads = current.index_select(0, heads)  # in the original numbering (MPNet's position bias)
        record_heads.append(attn.earlytag_heads.tolist())
        widths.append(len(neurons))
    return {"heads": record_heads, "ffn": widths}


def shrink(encoder: nn.Module, slim: dict[str, Any]) -> None:
    """Give a freshly built full-size encoder the sizes of a saved slim one (weights are loaded afterwards)."""
    adapter = adapter_for(encoder)
    heads, widths = slim.get("heads"), slim.get("ffn")
    n = adapter.num_layers
    if not isinstance(heads, list) or not isinstance(widths, list) or len(heads) != n or len(widths) != n:
        raise ConfigError("slim", f"needs 'heads' and 'ffn' lists with one entry per layer ({n})")
    keep_h = torch.zeros(n, adapter.num_heads, dtype=torch.bool)
    keep_f = torch.zeros(n, adapter.intermediate_size, dtype=torch.bool)
    for i, (hs, w) in enumerate(zip(heads, widths)):
        if not hs or not all(isinstance(h, int) and 0 <= h < adapter.num_heads for h in hs) or len(set(hs)) != len(hs):
            raise ConfigError("slim", f"layer {i}: heads must be distinct indices below {adapter.num_heads}")
        if not isinstance(w, int) or not 1 <= w <= adapter.intermediate_size:
            raise ConfigError("slim", f"layer {i}: FFN width must be between 1 and {adapter.intermediate_size}")
        keep_h[i, hs] = True
        keep_f[i, :w] = True
    prune_encoder(encoder, adapter, keep_h, keep_f)


def magnitude_masks(adapter, spec: SlimSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """The baseline of pruning after training, by weight magnitude: per layer, heads ranked by the norm of their
    output-projection columns times that of their Q/K/V rows, neurons by the norm of their FFN input row times
    that of their output column. ``(L, H)``, ``(L, F)`` booleans of what stays, at the ratios of ``spec``."""
    heads, neurons = [], []
    for parts in adapter.layers:
        dh = parts.attn_size // parts.num_heads
        out_cols = parts.attn_out.weight.detach().view(parts.attn_out.out_features, parts.num_heads, dh)
        qkv = torch.stack([getattr(parts, r).weight.detach().view(parts.num_heads, dh, -1)
                           for r in ("query", "key", "value")])  # (3, H, dh, d)
        heads.append(out_cols.pow(2).sum((0, 2)).sqrt() * qkv.pow(2).sum((0, 2, 3)).sqrt())  # (H,)
        neurons.append(parts.ffn_in.weight.detach().norm(dim=1) * parts.ffn_out.weight.detach().norm(dim=0))  # (F,)
    return _top(torch.stack(heads), spec.heads), _top(torch.stack(neurons), spec.ffn)


def prune_model(model, spec: SlimSpec, masks: tuple[torch.Tensor, torch.Tensor] | None = None,
                coefs: Coefficients | None = None) -> dict[str, Any]:
    """Prune a tagger in place (by weight magnitude unless ``masks`` are given; ``coefs`` are folded in) and
    give it the adapter of its new layers; the record is stored in its config, so saving writes a slim model."""
    keep_h, keep_f = masks if masks is not None else magnitude_masks(model.adapter, spec)
    record = prune_encoder(model.encoder, model.adapter, keep_h, keep_f, coefs)
    model.adapter = adapter_for(model.encoder)
    model.config.slim = record
    return record
