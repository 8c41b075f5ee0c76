"""Analytic FLOPs of early-exit inference, and the statistics a run returns.

Per layer, for a sentence with ``n`` live tokens of which ``a`` are active, hidden size ``d`` and FFN size
``f`` (a multiply-add counts 2):

- K/V projections: ``2 · 2·n·d·d_a`` (halted tokens still pay: they stay keys/values; with ``kv=drop`` only
  the ``a`` active tokens do, and ``n = a`` everywhere);
- Q and output projections: ``2 · 2·a·d·d_a``;
- FFN: ``2 · 2·a·d·f``;
- attention scores and weighted sum: ``2 · 2·a·n·d_a``;

``d_a`` is the width of Q/K/V, ``d`` unless heads were pruned (a slim model, earlytag.model.slim); ``d_a`` and ``f``
are the sizes of each layer.
- exit head: ``2·a_w·d·C`` for ``a_w`` active words, at every layer whose head runs.

Full depth is the same with ``a = n`` at every layer and one head (the last). Embeddings are not counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


def layer_flops(n, a, d: int, f, kv: str = "keep", da=None):
    """FLOPs of one layer per sentence ``(B,)``, from live ``n (B,)`` and active ``a (B,)`` token counts.

    ``da``: the width of Q/K/V (heads × head size; ``d`` unless the layer is slim). ``f`` and ``da`` may be
    ``(L,)`` tensors broadcast against ``(B, L)`` counts (layers of different sizes)."""
    n, a = _f64(n), _f64(a)
    kv_rows = n if kv == "keep" else a
    per_kv, per_active, per_pair = layer_coefficients(d, f, da)
    return per_kv * kv_rows + per_active * a + per_pair * a * kv_rows


def layer_coefficients(d: int, f, da=None):
    """The formula above as FLOPs per key/value row (K/V projections), per active row (Q, output projection,
    FFN) and per (active row, key/value row) pair (attention): ``layer_flops = per_kv·kv_rows + per_active·a
    + per_pair·a·kv_rows``."""
    da = d if da is None else da
    return 4 * d * da, 4 * d * da + 4 * d * f, 4 * da


def head_flops(words, d: int, num_labels: int):
    """FLOPs of an exit head on ``words`` active words (per sentence or in total)."""
    return _f64(words) * (2 * d * num_labels)


def _f64(x):
    """Counts as float64, from a torch tensor or a numpy array (the engine counts in numpy, tests in either)."""
    return x.double() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)


@dataclass
class ExitStats:
    """What an early-exit run did, summed over batches. Merge with ``+``."""

    num_layers: int
    sentences: int = 0
    words: int = 0
    tokens: int = 0
    flops: float = 0.0
    flops_full: float = 0.0
    exit_layer_sum: float = 0.0  # Σ over words of their 1-based exit layer
    active_tokens: list[int] = field(default_factory=list)  # per layer: sub-word tokens computed (Q/FFN rows)
    words_exited: list[int] = field(default_factory=list)  # per layer: words that exited there
    dense_layers: int = 0  # layer steps run densely (most tokens active)
    packed_layers: int = 0  # layer steps run on packed active rows

    def __post_init__(self):
        self.active_tokens = self.active_tokens or [0] * self.num_layers
        self.words_exited = self.words_exited or [0] * self.num_layers

    def __add__(self, other: ExitStats) -> ExitStats:
        if self.num_layers != other.num_layers:
            raise ValueError("cannot add statistics of models with different depths")
        return ExitStats(
            self.num_layers,
            self.sentences + other.sentences,
            self.words + other.words,
            self.tokens + other.tokens,
            self.flops + other.flops,
            self.flops_full + other.flops_full,
            self.exit_layer_sum + other.exit_layer_sum,
            [x + y for x, y in zip(self.active_tokens, other.active_tokens)],
            [x + y for x, y in zip(self.words_exited, other.words_exited)],
            self.dense_layers + other.dense_layers,
            self.packed_layers + other.packed_layers,
        )

    @property
    def flops_speedup(self) -> float:
        return self.flops_full / self.flops if self.flops else 1.0

    @property
    def mean_exit_layer(self) -> float:
        return self.exit_layer_sum / self.words if self.words else 0.0

    def to_dict(self) -> dict:
        return {
            "sentences": self.sentences,
            "words": self.words,
            "tokens": self.tokens,
            "flops": self.flops,
            "flops_full": self.flops_full,
            "flops_speedup": self.flops_speedup,
            "mean_exit_layer": self.mean_exit_layer,
            "active_tokens_per_layer": self.active_tokens,
            "words_exited_per_layer": self.words_exited,
            "dense_layer_steps": self.dense_layers,
            "packed_layer_steps": self.packed_layers,
        }
