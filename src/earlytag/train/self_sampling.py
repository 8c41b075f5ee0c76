"""Self-sampling fine-tuning (stage 2): train every layer on the words that would still be active there.

As the authors' code runs it (``further_train.py``, ``Sample_Stop_Update_Callback``, ``simulate_ee``):

1. Run the stage-1 model once over the training windows and cache each word's per-layer uncertainty,
   prediction and cross-entropy (:func:`cache_layer_outputs`).
2. For every sentence of a batch, draw a window k (windows of 5..15 words) and a threshold τ from
   {0.01, 0.03, 0.05, 0.1, 0.15, 0.2, 0.25} and simulate the token-exit rule on the cache
   (:func:`sample_exits`, the engine's own :func:`~earlytag.engine.simulate_exits`). In every batch 40% of the
   sentences stay at full depth and 20% get the smallest window or the largest τ (a coin flip between the two;
   ``--sandwich_full 4 --sandwich_small 2`` of 10 in the authors' commands).
3. The forward freezes a word's hidden states from its exit layer on (``EarlyExitTagger.forward(word_exit=...)``);
   a layer's loss sums the cross-entropy of the words still active there and divides by all words of the batch,
   and each word's loss at each layer is flooded at its own stage-1 loss there (``|l - b| + b``).

The choices of earlytag 0.1 remain as options (:data:`RECIPES`): τ uniform in a range, 12.5% full and 12.5% with
both the smallest window and the largest τ, the per-layer mean over active words, one flooding level per batch.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..data.batching import Window, collate
from ..defaults import HALTED_DEFAULT
from ..engine.policies import ExitConfig, simulate_exits
from ..errors import ConfigError
from ..model.tagger import EarlyExitTagger

AUTHORS_THRESHOLDS = (0.01, 0.03, 0.05, 0.1, 0.15, 0.2, 0.25)
AUTHORS_WINDOWS = (2, 3, 4, 5, 6, 7)  # k: windows of 5, 7, ..., 15 words


@dataclass
class LayerCache:
    """Per window, from the stage-1 model at full depth: ``unc``, ``pred`` and ``loss`` (cross-entropy of the
    gold label) of shape ``(L, W)``."""

    unc: list[torch.Tensor]
    pred: list[torch.Tensor]
    loss: list[torch.Tensor | None]
    mean_loss: float  # the stage-1 training loss (the level of batch flooding)


@torch.inference_mode()
def cache_layer_outputs(model: EarlyExitTagger, windows: Sequence[Window], pad_id: int, batch_size: int = 64,
                        criterion: str = "entropy", progress=None, layer_weights: str = "depth") -> LayerCache:
    """``layer_weights``: the training's weighting of the layers, so that the stage-1 loss (the level of batch
    flooding) is the loss being trained."""
    model.eval()
    device = next(model.parameters()).device
    n = len(windows)
    unc: list[torch.Tensor] = [None] * n  # type: ignore[list-item]
    pred: list[torch.Tensor] = [None] * n  # type: ignore[list-item]
    loss: list[torch.Tensor | None] = [None] * n
    order = sorted(range(n), key=lambda i: len(windows[i]))
    total_loss, n_batches = 0.0, 0
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        batch = collate([windows[i] for i in idx], pad_id).to(device)
        out = model(batch.input_ids, batch.attention_mask, batch.word_pos, labels=batch.labels,
                    layer_weights=layer_weights)
        logits = torch.stack(out.logits, 1)  # (B, L, W, C)
        # what the engine's exit rule reads after each layer (a CRF: its marginals over the sentence)
        scored = [model.head.layer_scores(i, lg, batch.word_mask, criterion) for i, lg in enumerate(out.logits)]
        p, u = torch.stack([x[1] for x in scored], 1), torch.stack([x[2] for x in scored], 1)  # (B, L, W) each
        ce = None
        if batch.labels is not None:
            target = batch.labels[:, None, :].expand(-1, logits.shape[1], -1)  # (B, L, W)
            ce = F.cross_entropy(logits.float().flatten(0, 2), target.flatten(), ignore_index=-100,
                                 reduction="none").view(target.shape).cpu()
        p, u = p.cpu(), u.cpu()
        for row, i in enumerate(idx):
            k = windows[i].num_words
            unc[i], pred[i] = u[row, :, :k].clone(), p[row, :, :k].clone()
            loss[i] = None if ce is None else ce[row, :, :k].clone()
        if out.loss is not None:
            total_loss += float(out.loss)
            n_batches += 1
        if progress is not None:
            progress.update(len(idx))
    return LayerCache(unc, pred, loss, total_loss / max(n_batches, 1))


@dataclass
class SamplingConfig:
    windows: tuple[int, ...] = AUTHORS_WINDOWS  # k drawn from these
    thresholds: tuple[float, ...] = AUTHORS_THRESHOLDS  # τ drawn from these
    threshold_range: tuple[float, float] | None = None  # instead: τ uniform in [lo, hi] (earlytag 0.1)
    full_share: float = 0.4  # share of each batch kept at full depth
    small_share: float = 0.2  # share with the smallest window or (and, with small_rule=both) the largest τ
    small_rule: str = "either"  # either (the authors': a coin flip) | both (earlytag 0.1)
    upper_multiplier: float = 2.0
    criterion: str = "entropy"
    halted: str = HALTED_DEFAULT  # how the simulation treats halted words (as the engine will)

    def validate(self) -> SamplingConfig:
        if not self.windows or any(not isinstance(k, int) or k < 0 for k in self.windows):
            raise ConfigError("sample_windows", f"must be integers >= 0, got {self.windows!r}")
        if self.threshold_range is None and (not self.thresholds or any(t < 0 for t in self.thresholds)):
            raise ConfigError("sample_thresholds", f"must be numbers >= 0, got {self.thresholds!r}")
        if not (0 <= self.full_share <= 1 and 0 <= self.small_share <= 1 and self.full_share + self.small_share <= 1):
            raise ConfigError("full_share", "full and small shares must be in [0, 1] and add up to at most 1")
        if self.small_rule not in ("either", "both"):
            raise ConfigError("small_rule", f"expected either or both, got {self.small_rule!r}")
        return self

    @property
    def largest_threshold(self) -> float:
        return self.threshold_range[1] if self.threshold_range else max(self.thresholds)

    def draw(self, rng: random.Random, role: str) -> tuple[int, float]:
        """``(k, τ)`` for one sentence of the given role (sampled | small)."""
        k = rng.choice(self.windows)
        tau = rng.uniform(*self.threshold_range) if self.threshold_range else rng.choice(self.thresholds)
        if role == "small":
            if self.small_rule == "both":
                return min(self.windows), self.largest_threshold
            if rng.random() < 0.5:
                return min(self.windows), tau
            return k, self.largest_threshold
        return k, tau


@dataclass
class Recipe:
    """How stage 2 samples and weighs (see the module docstring)."""

    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    layer_loss: str = "batch-sum"  # Σ over active words / all words of the batch | active-mean (earlytag 0.1)
    flooding: str = "token"  # token: each word's loss at its stage-1 loss | batch: one level | off
    flood_level: float = 1.0  # multiplier of the stage-1 loss


RECIPES = {
    "authors": lambda: Recipe(),
    "earlytag-0.1": lambda: Recipe(SamplingConfig(windows=AUTHORS_WINDOWS, threshold_range=(0.01, 0.25),
                                                  full_share=0.125, small_share=0.125, small_rule="both"),
                                   layer_loss="active-mean", flooding="off"),
}


def sample_exits(cache: LayerCache, idx: Sequence[int], num_words: int, cfg: SamplingConfig,
                 rng: random.Random) -> torch.Tensor:
    """Exit layers ``(B, W)`` for the windows ``idx`` of one batch (padded to ``num_words``)."""
    num_layers = cache.unc[idx[0]].shape[0]
    out = torch.full((len(idx), num_words), num_layers - 1, dtype=torch.long)
    n_full = round(cfg.full_share * len(idx))
    n_small = round(cfg.small_share * len(idx))
    roles = ["full"] * n_full + ["small"] * n_small + ["sampled"] * (len(idx) - n_full - n_small)
    rng.shuffle(roles)
    for row, (i, role) in enumerate(zip(idx, roles)):
        k = cache.unc[i].shape[1]
        if role == "full" or k == 0:
            continue
        window, tau = cfg.draw(rng, role)
        exit_cfg = ExitConfig(policy="token", threshold=tau, window=window, upper_multiplier=cfg.upper_multiplier,
                              criterion=cfg.criterion, halted=cfg.halted)
        mask = torch.ones((1, k), dtype=torch.bool)
        out[row, :k] = simulate_exits(cache.unc[i][None], cache.pred[i][None], mask, exit_cfg)[0]
    return out


def flood_levels(cache: LayerCache, idx: Sequence[int], num_words: int, level: float) -> torch.Tensor:
    """``(B, L, W)`` each word's flooding level at each layer: ``level`` × its stage-1 loss there."""
    num_layers = cache.unc[idx[0]].shape[0]
    out = torch.zeros((len(idx), num_layers, num_words))
    for row, i in enumerate(idx):
        if cache.loss[i] is None:
            raise ConfigError("flooding", "token flooding needs the stage-1 losses of labelled training data")
        out[row, :, : cache.loss[i].shape[1]] = cache.loss[i] * level
    return out
