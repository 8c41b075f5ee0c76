"""Exit policies: who stops climbing the encoder, decided per word (never once for a whole batch).

A policy sees, after layer ``l``, every word's uncertainty and prediction and returns the words that halt now.
It is pure tensor code with no access to the model, so the engine and the self-sampling simulator
(:func:`simulate_exits`) share it.

What a halted word contributes later (``halted``, TOKEE's window):

- ``frozen`` (the default, measured better: docs/results.md section 3): a halted word keeps the uncertainty it
  halted with. With thresholds that never decrease it can then never hold a neighbour back: the window counts
  active words only.
- ``rescore`` (the authors' code): the halted word's copied hidden state is scored again by every later layer's
  head, and that uncertainty enters its neighbours' windows, so a halted word can still hold a neighbour back.
  Its prediction stays the one it halted with. The head on halted words is a cost (FLOPs).

Every policy is one class in :data:`REGISTRY` that brings its validation, thresholds, state, halting rule,
the settings swept by calibration and the bench, and its description; the CLI, the service and the page take
the list of policies from the registry.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ..defaults import HALTED_DEFAULT, HALTED_RULES
from ..errors import ConfigError

CRITERIA = ("entropy", "maxprob")

MAX_WINDOW = 4096  # words on each side; a window wider than the sentence is the sentence
CALIBRATION_THRESHOLDS = (0.005, 0.01, 0.02, 0.04, 0.07, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8)
_THRESHOLDS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4)
# the full grid sweeps every static depth and patience, the thresholds of the default grid
BENCH_THRESHOLDS = {"small": (0.01, 0.03, 0.07, 0.15, 0.25, 0.4), "default": _THRESHOLDS, "full": _THRESHOLDS}
TARGETS = (1.5, 2.0, 3.0, 4.0)  # FLOPs speed-ups the results tables report


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
    halted: str = HALTED_DEFAULT  # token: halted words are scored again by later heads (rescore) or keep theirs
    min_layer: int = 1  # token/sentence: nothing halts before this layer (1: any layer, the paper); τ = 0 below it

    @property
    def rule(self) -> Policy:
        try:
            return REGISTRY[self.policy]
        except KeyError:
            raise ConfigError("exit.policy", f"unknown policy {self.policy!r}; expected one of "
                                             f"{', '.join(REGISTRY)}") from None

    def validated(self, num_layers: int) -> ExitConfig:
        """Check every field against a model with ``num_layers`` layers; returns self."""
        rule = self.rule
        if self.criterion not in CRITERIA:
            raise ConfigError("exit.criterion", f"expected one of {', '.join(CRITERIA)}, got {self.criterion!r}")
        if self.pool not in ("max", "mean"):
            raise ConfigError("exit.pool", f"expected max or mean, got {self.pool!r}")
        if self.kv not in ("keep", "drop"):
            raise ConfigError("exit.kv", f"expected keep or drop, got {self.kv!r}")
        if self.halted not in HALTED_RULES:
            raise ConfigError("exit.halted", f"expected one of {', '.join(HALTED_RULES)}, got {self.halted!r}")
        if not _number(self.upper_multiplier) or self.upper_multiplier < 0:
            raise ConfigError("exit.upper_multiplier", "must be a finite number >= 0")
        if not _integer(self.window) or not 0 <= self.window <= MAX_WINDOW:
            raise ConfigError("exit.window", f"must be an integer between 0 and {MAX_WINDOW}, got {self.window!r}")
        if not _integer(self.patience) or not 1 <= self.patience <= 1000:
            raise ConfigError("exit.patience", f"must be an integer between 1 and 1000, got {self.patience!r}")
        if not isinstance(self.patience_window, bool):
            raise ConfigError("exit.patience_window", "must be true or false")
        if not _integer(self.min_layer) or not 1 <= self.min_layer <= num_layers:
            raise ConfigError("exit.min_layer", f"must be an integer between 1 and {num_layers} (the model's layers), "
                                                f"got {self.min_layer!r}")
        rule.validate(self, num_layers)
        return self

    def thresholds(self, num_layers: int) -> list[float]:
        """τ_l for every layer (token policy: τ for the lower half, τ·upper_multiplier for the upper half)."""
        return self.rule.thresholds(self, num_layers)

    @property
    def depth(self) -> int | None:
        """Layers that run at most (static), None for full depth."""
        return self.layer if self.policy == "static" else None

    def to_dict(self) -> dict[str, Any]:
        """The policy and the settings it reads (the others have no effect on it); ``min_layer`` only where it
        sets a floor (settings stored before it existed read the same)."""
        rule = REGISTRY.get(self.policy)
        keep = {"policy"} | set(rule.settings if rule else asdict(self))
        return {k: v for k, v in asdict(self).items()
                if k in keep and v is not None and not (k == "min_layer" and v == 1)}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> ExitConfig:
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        if "target_speedup" in data:
            raise ConfigError("exit.target_speedup", "a target speed-up is resolved against a model's calibration "
                                                     "table: pass it to Tagger.exit_config() or the CLI/service")
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"exit.{sorted(unknown)[0]}", f"unknown exit setting; known: {', '.join(sorted(known))}")
        return cls(**data)

    def describe(self) -> str:
        return self.rule.describe(self)


def with_settings(grid: list[ExitConfig], **values: Any) -> list[ExitConfig]:
    """``grid`` with each given setting (None: left as it is) set on the settings whose policy reads it, e.g. the
    halted rule or a floor on a threshold grid, and left off the others."""
    values = {k: v for k, v in values.items() if v is not None}
    return [replace(cfg, **{k: v for k, v in values.items() if k in cfg.rule.settings}) for cfg in grid]


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _integer(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


# ----------------------------------------------------------------------------- tensor helpers


def uncertainty(probs: torch.Tensor, criterion: str = "entropy") -> torch.Tensor:
    """``(..., C)`` probabilities -> ``(...)`` uncertainty in [0, 1]."""
    if criterion == "maxprob":
        return 1.0 - probs.max(-1).values
    c = probs.shape[-1]
    if c < 2:
        return torch.zeros(probs.shape[:-1], dtype=probs.dtype, device=probs.device)
    ent = -torch.special.xlogy(probs, probs).sum(-1)
    return ent / math.log(c)


def head_scores(logits: torch.Tensor, criterion: str = "entropy") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(..., C)`` logits -> probability of the best label, the label, and its uncertainty in [0, 1].

    Always computed in float32, whatever the model's dtype: exit decisions compare these with thresholds.
    Works from log-probabilities: one softmax pass serves all three (this runs at every layer). A label with
    probability 0 (log-probability -inf) adds 0 to the entropy, not NaN."""
    logp = logits.float().log_softmax(-1)
    best, pred = logp.max(-1)
    score = best.exp()
    if criterion == "maxprob":
        return score, pred, 1.0 - score
    c = logits.shape[-1]
    if c < 2:
        return score, pred, torch.zeros_like(score)
    plogp = torch.where(logp == float("-inf"), 0.0, logp.exp() * logp)
    return score, pred, plogp.sum(-1) * (-1.0 / math.log(c))


def label_scores(cols: torch.Tensor, criterion: str = "entropy") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`head_scores` of logits laid out labels first, ``cols (C, N)`` float32 -> ``(N,)`` each: the same
    values to rounding (the best label: the first on ties). The engine's exit head writes its logits this way
    (``addmm(b, W, hᵀ)``): on a CPU a softmax, max or sum over a last dimension of a handful of labels runs
    slower than the same reduction down the rows of this layout (the head and its scores of 800 words over 9
    labels 1.7x faster: scripts/label_scores_ab.py). A label of probability 0 adds 0 to the
    entropy, not NaN."""
    top, pred = cols.max(0)  # (N,)
    z = cols - top  # (C, N) ≤ 0, 0 at the best label
    e = z.exp()
    total = e.sum(0)  # (N,) ≥ 1
    score = total.reciprocal()  # exp(0) / Σ exp
    c = cols.shape[0]
    if criterion == "maxprob":
        return score, pred, 1.0 - score
    if c < 2:
        return score, pred, torch.zeros_like(score)
    # entropy = log Σe − Σ e·z / Σe; z of a -inf logit is clamped so that its e·z = 0·finite
    ez = (e * z.clamp_(min=-1e30)).sum(0)  # (N,)
    return score, pred, (total.log_() - ez * score).mul_(1.0 / math.log(c))


def window_max(values: torch.Tensor, word_mask: torch.Tensor, k: int) -> torch.Tensor:
    """Max of ``values (B, W)`` over words j-k..j+k (padding words count as 0)."""
    k = min(k, values.shape[1])  # a window wider than the sentence is the sentence
    if k == 0:
        return values
    x = values.masked_fill(~word_mask, 0.0).unsqueeze(1)  # (B, 1, W)
    return F.max_pool1d(x, kernel_size=2 * k + 1, stride=1, padding=k).squeeze(1)  # (B, W)


# ----------------------------------------------------------------------------- the policies


class Policy:
    """One exit policy. Subclasses set the class attributes and override what they use."""

    name: ClassVar[str]
    summary: ClassVar[str]  # one line, for --help and the docs
    settings: ClassVar[tuple[str, ...]] = ()  # the ExitConfig fields it reads
    heads_every_layer: ClassVar[bool] = True  # False: only the last layer's head runs
    refill: ClassVar[bool] = True  # a thin group may wait for the next batch's survivors (Engine.run_many)
    reads_uncertainty: ClassVar[bool] = True

    @classmethod
    def validate(cls, cfg: ExitConfig, num_layers: int) -> None:
        pass

    @classmethod
    def thresholds(cls, cfg: ExitConfig, num_layers: int) -> list[float]:
        tau = float(cfg.threshold or 0.0) if not isinstance(cfg.threshold, list) else 0.0
        return [tau] * num_layers

    @classmethod
    def depth(cls, cfg: ExitConfig, num_layers: int) -> int:
        return num_layers

    @classmethod
    def init_state(cls, word_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        return {}

    @classmethod
    def halt(cls, cfg: ExitConfig, taus: list[float], layer: int, unc: torch.Tensor, pred: torch.Tensor,
             active: torch.Tensor, word_mask: torch.Tensor, state: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    @classmethod
    def grid(cls, num_layers: int, size: str = "default", kv: str = "keep") -> list[ExitConfig]:
        """Settings the bench sweeps (``size``: default | small)."""
        return []

    @classmethod
    def calibration_grid(cls, num_layers: int, kv: str = "keep") -> list[ExitConfig]:
        """Settings calibration searches for a target speed-up."""
        return cls.grid(num_layers, "default", kv)

    @classmethod
    def describe(cls, cfg: ExitConfig) -> str:
        return cls.name


REGISTRY: dict[str, type[Policy]] = {}


def register(cls: type[Policy]) -> type[Policy]:
    REGISTRY[cls.name] = cls
    return cls


def _check_threshold(cfg: ExitConfig, num_layers: int, per_layer: bool) -> None:
    if cfg.threshold is None:
        raise ConfigError("exit.threshold", f"the {cfg.policy} policy needs a threshold")
    taus = cfg.threshold if isinstance(cfg.threshold, list) else [cfg.threshold]
    if isinstance(cfg.threshold, list) and (not per_layer or len(taus) != num_layers):
        raise ConfigError("exit.threshold", f"a list needs one threshold per layer ({num_layers}), got {len(taus)}"
                          if per_layer else "takes one number")
    for tau in taus:
        if not _number(tau) or tau < 0:
            raise ConfigError("exit.threshold", f"thresholds must be finite numbers >= 0, got {tau!r}")


@register
class NoExit(Policy):
    name = "none"
    summary = "nobody exits: full depth"
    heads_every_layer = False
    refill = False
    reads_uncertainty = False

    @classmethod
    def halt(cls, cfg, taus, layer, unc, pred, active, word_mask, state):
        return torch.zeros_like(active)


@register
class Static(Policy):
    name = "static"
    summary = "everyone after the first k layers (static truncation)"
    settings = ("layer",)
    heads_every_layer = False
    refill = False
    reads_uncertainty = False

    @classmethod
    def validate(cls, cfg, num_layers):
        if not _integer(cfg.layer) or not 1 <= cfg.layer <= num_layers:
            raise ConfigError("exit.layer", f"static exit needs a layer between 1 and {num_layers}, got {cfg.layer!r}")

    @classmethod
    def depth(cls, cfg, num_layers):
        return cfg.layer

    @classmethod
    def halt(cls, cfg, taus, layer, unc, pred, active, word_mask, state):
        return torch.zeros_like(active)

    @classmethod
    def grid(cls, num_layers, size="default", kv="keep"):
        if size != "full":  # only the depths nearest the target speed-ups
            ks = sorted({min(max(round(num_layers / t), 1), num_layers - 1) for t in TARGETS})
        else:
            ks = range(1, num_layers)
        return [ExitConfig("static", layer=k) for k in ks]

    @classmethod
    def calibration_grid(cls, num_layers, kv="keep"):
        return [ExitConfig("static", layer=k) for k in range(1, num_layers + 1)]

    @classmethod
    def describe(cls, cfg):
        return f"static k={cfg.layer}"


class _ThresholdPolicy(Policy):
    """A policy that halts below a threshold per layer: one τ (the upper half of the layers at τ times
    ``upper_multiplier`` where ``upper_half``) or one τ per layer."""

    upper_half = False

    @classmethod
    def validate(cls, cfg, num_layers):
        _check_threshold(cfg, num_layers, per_layer=True)

    @classmethod
    def thresholds(cls, cfg, num_layers):
        if isinstance(cfg.threshold, list):
            taus = [float(t) for t in cfg.threshold]
        else:
            tau = float(cfg.threshold)
            half = num_layers // 2 if cls.upper_half else num_layers
            taus = [tau] * half + [tau * cfg.upper_multiplier] * (num_layers - half)
        floor = cfg.min_layer - 1  # layers 1..min_layer-1 (0-based 0..floor-1) halt nobody: uncertainty is never < 0
        return [0.0] * floor + taus[floor:]


@register
class SentenceExit(_ThresholdPolicy):
    name = "sentence"
    summary = "SENTEE: a sentence, when the max (--pool mean: mean) uncertainty of its words is below τ"
    settings = ("threshold", "pool", "criterion", "kv", "min_layer")

    @classmethod
    def halt(cls, cfg, taus, layer, unc, pred, active, word_mask, state):
        u = unc.masked_fill(~word_mask, 0.0)
        s = u.max(1).values if cfg.pool == "max" else u.sum(1) / word_mask.sum(1).clamp(min=1)
        return active & (s < taus[layer]).unsqueeze(1)

    @classmethod
    def grid(cls, num_layers, size="default", kv="keep"):
        return [ExitConfig("sentence", threshold=t, kv=kv) for t in BENCH_THRESHOLDS[size]]

    @classmethod
    def calibration_grid(cls, num_layers, kv="keep"):
        return [ExitConfig("sentence", threshold=t, kv=kv) for t in CALIBRATION_THRESHOLDS]

    @classmethod
    def describe(cls, cfg):
        return f"sentence τ={cfg.threshold}" + (" kv=drop" if cfg.kv == "drop" else "") + _floor(cfg)


@register
class TokenExit(_ThresholdPolicy):
    name = "token"
    summary = "TOKEE: word j, when the max uncertainty over words j-k..j+k is below τ_l"
    settings = ("threshold", "upper_multiplier", "window", "criterion", "kv", "halted", "min_layer")
    upper_half = True  # τ in the lower half of the layers, τ·upper_multiplier in the upper half (the authors')

    @classmethod
    def halt(cls, cfg, taus, layer, unc, pred, active, word_mask, state):
        # unc holds every word of the sentence: the active ones' new values and the halted ones' re-scored
        # (rescore) or halting (frozen) values, as the engine and the simulator maintain them
        return active & (window_max(unc, word_mask, cfg.window) < taus[layer])

    @classmethod
    def grid(cls, num_layers, size="default", kv="keep"):
        return [ExitConfig("token", threshold=t, window=2, kv=kv) for t in BENCH_THRESHOLDS[size]]

    @classmethod
    def calibration_grid(cls, num_layers, kv="keep"):
        return [ExitConfig("token", threshold=t, window=k, kv=kv) for k in (1, 2) for t in CALIBRATION_THRESHOLDS]

    @classmethod
    def describe(cls, cfg):
        # the halted rule is always named: its default changed between rounds, and results outlive defaults
        return (f"token τ={cfg.threshold} k={cfg.window}" + (" kv=drop" if cfg.kv == "drop" else "")
                + f" halted={cfg.halted}" + _floor(cfg))


def _floor(cfg: ExitConfig) -> str:
    return f" from layer {cfg.min_layer}" if cfg.min_layer != 1 else ""


@register
class Patience(Policy):
    name = "patience"
    summary = "PABEE for words: a word whose prediction has not changed for p layers"
    settings = ("patience", "patience_window", "window")
    reads_uncertainty = False

    @classmethod
    def init_state(cls, word_mask):
        return {"streak": torch.zeros(word_mask.shape, dtype=torch.long, device=word_mask.device),
                "prev": torch.full(word_mask.shape, -1, dtype=torch.long, device=word_mask.device)}

    @classmethod
    def halt(cls, cfg, taus, layer, unc, pred, active, word_mask, state):
        # count the layers over which the prediction stayed the same
        same = pred == state["prev"]
        streak = torch.where(active, torch.where(same, state["streak"] + 1, torch.zeros_like(state["streak"])),
                             state["streak"])
        state["streak"] = streak
        state["prev"] = torch.where(active, pred, state["prev"])
        if cfg.patience_window:
            big = torch.full_like(streak, 10 ** 6)
            halted_or_pad = ~active | ~word_mask  # halted words and padding don't hold their neighbours back
            s = torch.where(halted_or_pad, big, streak)
            k = min(cfg.window, s.shape[1])
            low = -F.max_pool1d(-s.unsqueeze(1).float(), 2 * k + 1, 1, k).squeeze(1) if k else s.float()
            return active & (low >= cfg.patience)
        return active & (streak >= cfg.patience)

    @classmethod
    def grid(cls, num_layers, size="default", kv="keep"):
        ps = (1, 2, 3, 4, 6) if size != "full" else range(1, max(num_layers - 1, 2))
        return [ExitConfig("patience", patience=p) for p in ps if p < num_layers]

    @classmethod
    def calibration_grid(cls, num_layers, kv="keep"):
        return [ExitConfig("patience", patience=p) for p in range(1, num_layers)] + [
            ExitConfig("patience", patience=p, patience_window=True, window=1) for p in range(1, num_layers)]

    @classmethod
    def describe(cls, cfg):
        return f"patience p={cfg.patience}" + (f" k={cfg.window}" if cfg.patience_window else "")


POLICIES = tuple(REGISTRY)


class ExitPolicy:
    """An :class:`ExitConfig` bound to a model depth: thresholds resolved, the policy's rule at hand."""

    def __init__(self, cfg: ExitConfig, num_layers: int):
        self.cfg = cfg.validated(num_layers)
        self.rule = cfg.rule
        self.num_layers = self.rule.depth(cfg, num_layers)  # layers that run
        self.taus = cfg.thresholds(num_layers) if cfg.threshold is not None else [0.0] * num_layers
        self.rescore = cfg.halted == "rescore" and self.rule.reads_uncertainty

    def needs_head(self, layer: int) -> bool:
        """Whether the head of ``layer`` runs (only the last one for none/static)."""
        return self.rule.heads_every_layer or layer == self.num_layers - 1

    def init_state(self, word_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-word state, one row per sentence (the engine compacts it with the batch)."""
        return self.rule.init_state(word_mask)

    def halt(self, layer: int, unc: torch.Tensor, pred: torch.Tensor, active: torch.Tensor,
             word_mask: torch.Tensor, state: dict[str, torch.Tensor]) -> torch.Tensor:
        """Words that halt after ``layer``: a subset of ``active (B, W)``; all of them at the last layer."""
        if layer >= self.num_layers - 1:
            return active
        return self.rule.halt(self.cfg, self.taus, layer, unc, pred, active, word_mask, state)


def simulate_exits(unc: torch.Tensor, pred: torch.Tensor, word_mask: torch.Tensor, cfg: ExitConfig) -> torch.Tensor:
    """Exit layer of every word for per-layer ``unc, pred (B, L, W)`` (e.g. cached from a full forward).

    The engine's rule: an active word takes layer l's values; a halted word keeps its prediction, and its
    uncertainty is layer l's value (``halted=rescore``, what the head says of it there) or the one it halted
    with (``frozen``). On outputs cached from a full-depth forward (self-sampling) the rescored value is the
    full-depth one, the same approximation the authors' simulation makes.
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
        cur_unc = unc[:, layer] if policy.rescore else torch.where(active, unc[:, layer], cur_unc)
        cur_pred = torch.where(active, pred[:, layer], cur_pred)
        halt = policy.halt(layer, cur_unc, cur_pred, active, word_mask, state)
        exit_layer[halt] = layer
        active = active & ~halt
    return exit_layer
