"""Exit policies: who stops climbing the encoder, decided per word (never once for a whole batch).

A policy sees, after layer ``l``, every word's current uncertainty and prediction (a halted word keeps
the values it halted with) and returns the words that halt now. It is pure tensor code with no access
to the model, so the engine and the self-sampling simulator (:func:`simulate_exits`) share it.

- ``none``: full depth. ``static``: the first ``layer`` layers.
- ``sentence`` (SENTEE): a sentence halts when the max (or mean) uncertainty of its words is below τ.
- ``token`` (TOKEE): word j halts when the max uncertainty over words j-k..j+k is below τ_l.
- ``patience`` (PABEE for tokens): a word halts when its prediction has not changed for ``patience``
  layers (optionally: for every word of its window).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ConfigError

POLICIES = ("none", "static", "sentence", "token", "patience")
MAX_WINDOW = 4096  # words on each side; a window wider than the sentence is the sentence
CRITERIA = ("entropy", "maxprob")


@dataclass
class ExitConfig:
    """Exit settings; every field is validated by :meth:`validated` with an error naming it."""

    policy: str = "none"
    threshold: float | list[float] | None = None  # τ (sentence, token); a list gives one per layer (token)
    upper_multiplier: float = 2.0  # token, single τ: layers in the upper half use τ·multiplier (as the paper)
    window: int = 2  # token/patience: k, the window is words j-k..j+k
    patience: int = 2  # patience: layers with an unchanged prediction
    patience_window: bool = False  # patience: require it of every word in the window
    layer: int | None = None  # static: how many layers run
    criterion: str = "entropy"  # entropy (normalised) | maxprob (1 - max probability)
    pool: str = "max"  # sentence: max | mean uncertainty over the words
    kv: str = "keep"  # halted tokens stay keys/values (keep, the method) or leave attention (drop)

    def validated(self, num_layers: int) -> ExitConfig:
        """Check every field against a model with ``num_layers`` layers; returns self."""
        if self.policy not in POLICIES:
            raise ConfigError("exit.policy", f"unknown policy {self.policy!r}; expected one of {', '.join(POLICIES)}")
        if self.criterion not in CRITERIA:
            raise ConfigError("exit.criterion", f"expected one of {', '.join(CRITERIA)}, got {self.criterion!r}")
        if self.pool not in ("max", "mean"):
            raise ConfigError("exit.pool", f"expected max or mean, got {self.pool!r}")
        if self.kv not in ("keep", "drop"):
            raise ConfigError("exit.kv", f"expected keep or drop, got {self.kv!r}")
        if self.policy in ("sentence", "token"):
            if self.threshold is None:
                raise ConfigError("exit.threshold", f"the {self.policy} policy needs a threshold")
            taus = self.threshold if isinstance(self.threshold, list) else [self.threshold]
            if isinstance(self.threshold, list) and len(taus) != num_layers:
                raise ConfigError("exit.threshold", f"a list needs one threshold per layer ({num_layers}), got {len(taus)}")
            for tau in taus:
                if not isinstance(tau, (int, float)) or isinstance(tau, bool) or not math.isfinite(tau) or tau < 0:
                    raise ConfigError("exit.threshold", f"thresholds must be finite numbers >= 0, got {tau!r}")
        if not isinstance(self.upper_multiplier, (int, float)) or self.upper_multiplier < 0:
            raise ConfigError("exit.upper_multiplier", "must be a number >= 0")
        if not isinstance(self.upper_multiplier, (int, float)) or not math.isfinite(self.upper_multiplier):
            raise ConfigError("exit.upper_multiplier", "must be a finite number >= 0")
        if not isinstance(self.window, int) or isinstance(self.window, bool) or not 0 <= self.window <= MAX_WINDOW:
            raise ConfigError("exit.window", f"must be an integer between 0 and {MAX_WINDOW}, got {self.window!r}")
        if not isinstance(self.patience, int) or isinstance(self.patience, bool) or not 1 <= self.patience <= 1000:
            raise ConfigError("exit.patience", f"must be an integer between 1 and 1000, got {self.patience!r}")
        if self.policy == "static":
            if not isinstance(self.layer, int) or not 1 <= self.layer <= num_layers:
                raise ConfigError("exit.layer", f"static exit needs a layer between 1 and {num_layers}, got {self.layer!r}")
        return self

    def thresholds(self, num_layers: int) -> list[float]:
        """τ_l for every layer (token policy: τ for the lower half, τ·upper_multiplier for the upper half)."""
        if isinstance(self.threshold, list):
            return [float(t) for t in self.threshold]
        tau = float(self.threshold or 0.0)
        if self.policy != "token":
            return [tau] * num_layers
        half = num_layers // 2
        return [tau] * half + [tau * self.upper_multiplier] * (num_layers - half)

    @property
    def depth(self) -> int | None:
        """Layers that run at most (static), None for full depth."""
        return self.layer if self.policy == "static" else None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> ExitConfig:
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known - {"target_speedup"}
        if unknown:
            raise ConfigError(f"exit.{sorted(unknown)[0]}", f"unknown exit setting; known: {', '.join(sorted(known))}")
        data.pop("target_speedup", None)
        return cls(**data)

    def describe(self) -> str:
        if self.policy == "static":
            return f"static k={self.layer}"
        if self.policy in ("sentence", "token"):
            extra = f" k={self.window}" if self.policy == "token" else ""
            return f"{self.policy} τ={self.threshold}{extra}" + (" kv=drop" if self.kv == "drop" else "")
        if self.policy == "patience":
            return f"patience p={self.patience}" + (f" k={self.window}" if self.patience_window else "")
        return "none"


def uncertainty(probs: torch.Tensor, criterion: str = "entropy") -> torch.Tensor:
    """``(..., C)`` probabilities -> ``(...)`` uncertainty in [0, 1]."""
    if criterion == "maxprob":
        return 1.0 - probs.max(-1).values
    c = probs.shape[-1]
    if c < 2:
        return torch.zeros(probs.shape[:-1], dtype=probs.dtype, device=probs.device)
    ent = -(probs * probs.clamp_min(1e-12).log()).sum(-1)
    return ent / math.log(c)


def head_scores(logits: torch.Tensor, criterion: str = "entropy") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(..., C)`` logits -> probability of the best label, the label, and its uncertainty in [0, 1].

    Works from log-probabilities: one softmax pass serves all three (this runs at every layer)."""
    logp = logits.log_softmax(-1)
    best, pred = logp.max(-1)
    score = best.exp()
    if criterion == "maxprob":
        return score, pred, 1.0 - score
    c = logits.shape[-1]
    if c < 2:
        return score, pred, torch.zeros_like(score)
    return score, pred, (logp.exp() * logp).sum(-1) * (-1.0 / math.log(c))


def window_max(values: torch.Tensor, word_mask: torch.Tensor, k: int) -> torch.Tensor:
    """Max of ``values (B, W)`` over words j-k..j+k (padding words count as 0)."""
    if k == 0:
        return values
    x = values.masked_fill(~word_mask, 0.0).unsqueeze(1)  # (B, 1, W)
    return F.max_pool1d(x, kernel_size=2 * k + 1, stride=1, padding=k).squeeze(1)  # (B, W)


class ExitPolicy:
    """Turns an :class:`ExitConfig` into per-layer halting decisions."""

    def __init__(self, cfg: ExitConfig, num_layers: int):
        self.cfg = cfg.validated(num_layers)
        self.num_layers = cfg.depth or num_layers  # layers that run
        self.taus = cfg.thresholds(num_layers)

    def needs_head(self, layer: int) -> bool:
        """Whether the head of ``layer`` must run (only the last one for none/static)."""
        return self.cfg.policy not in ("none", "static") or layer == self.num_layers - 1

    def init_state(self, word_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-word state, one row per sentence (the engine compacts it with the batch)."""
        if self.cfg.policy != "patience":
            return {}
        return {
            "streak": torch.zeros(word_mask.shape, dtype=torch.long, device=word_mask.device),
            "prev": torch.full(word_mask.shape, -1, dtype=torch.long, device=word_mask.device),
        }

    def halt(self, layer: int, unc: torch.Tensor, pred: torch.Tensor, active: torch.Tensor,
             word_mask: torch.Tensor, state: dict[str, torch.Tensor]) -> torch.Tensor:
        """Words that halt after ``layer``: a subset of ``active (B, W)``; all of them at the last layer."""
        if layer >= self.num_layers - 1:
            return active
        policy = self.cfg.policy
        if policy in ("none", "static"):
            return torch.zeros_like(active)
        if policy == "sentence":
            u = unc.masked_fill(~word_mask, 0.0)
            if self.cfg.pool == "max":
                s = u.max(1).values
            else:
                s = u.sum(1) / word_mask.sum(1).clamp(min=1)
            return active & (s < self.taus[layer]).unsqueeze(1)
        if policy == "token":
            return active & (window_max(unc, word_mask, self.cfg.window) < self.taus[layer])
        # patience: count the layers over which the prediction stayed the same
        same = pred == state["prev"]
        streak = torch.where(active, torch.where(same, state["streak"] + 1, torch.zeros_like(state["streak"])),
                             state["streak"])
        state["streak"] = streak
        state["prev"] = torch.where(active, pred, state["prev"])
        if self.cfg.patience_window:
            big = torch.full_like(streak, self.num_layers + 1)
            halted_or_pad = ~active | ~word_mask  # halted words and padding don't hold their neighbours back
            s = torch.where(halted_or_pad, big, streak)
            k = self.cfg.window
            low = -F.max_pool1d(-s.unsqueeze(1).float(), 2 * k + 1, 1, k).squeeze(1) if k else s.float()
            return active & (low >= self.cfg.patience)
        return active & (streak >= self.cfg.patience)


def simulate_exits(unc: torch.Tensor, pred: torch.Tensor, word_mask: torch.Tensor, cfg: ExitConfig) -> torch.Tensor:
    """Exit layer of every word for per-layer ``unc, pred (B, L, W)`` (e.g. cached from a full forward).

    The same rule as the engine: a halted word keeps the uncertainty and prediction it halted with.
    Returns ``(B, W)`` 0-based exit layers (-1 on padding).
    """
    b, num_layers, w = unc.shape
    policy = ExitPolicy(cfg, num_layers)
    state = policy.init_state(word_mask)
    active = word_mask.clone()
    exit_layer = torch.full((b, w), -1, dtype=torch.long, device=unc.device)
    cur_unc = torch.zeros((b, w), dtype=unc.dtype, device=unc.device)
    cur_pred = torch.zeros((b, w), dtype=torch.long, device=unc.device)
    for layer in range(policy.num_layers):
        cur_unc = torch.where(active, unc[:, layer], cur_unc)
        cur_pred = torch.where(active, pred[:, layer], cur_pred)
        halt = policy.halt(layer, cur_unc, cur_pred, active, word_mask, state)
        exit_layer[halt] = layer
        active = active & ~halt
    return exit_layer
