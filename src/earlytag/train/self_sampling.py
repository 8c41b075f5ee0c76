"""Self-sampling fine-tuning (stage 2): train every layer on the tokens that would still be active there.

1. Run the stage-1 model once over the training windows and cache each word's per-layer uncertainty and
   prediction (:func:`cache_layer_outputs`).
2. For every sentence of a batch, sample a window k and a threshold τ and simulate the token-exit rule
   on the cache (:func:`sample_exits`, the same :func:`~earlytag.engine.simulate_exits` the engine's
   policy uses); a share of each batch stays at full depth and a share gets the most aggressive setting.
3. The forward freezes a word's hidden states from its exit layer on and a layer's loss counts only the
   words still active there (``EarlyExitTagger.forward(word_exit=...)``).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..data.batching import Window, collate
from ..engine.policies import ExitConfig, head_scores, simulate_exits
from ..model.tagger import EarlyExitTagger


@dataclass
class LayerCache:
    """Per window: ``unc`` and ``pred`` of shape ``(L, W)`` from the stage-1 model at full depth."""

    unc: list[torch.Tensor]
    pred: list[torch.Tensor]
    loss: float  # mean stage-1 training loss (the flooding level)


@torch.inference_mode()
def cache_layer_outputs(model: EarlyExitTagger, windows: Sequence[Window], pad_id: int, batch_size: int = 64,
                        criterion: str = "entropy", progress=None) -> LayerCache:
    model.eval()
    device = next(model.parameters()).device
    unc: list[torch.Tensor] = [None] * len(windows)  # type: ignore[list-item]
    pred: list[torch.Tensor] = [None] * len(windows)  # type: ignore[list-item]
    order = sorted(range(len(windows)), key=lambda i: len(windows[i]))
    total_loss, n_batches = 0.0, 0
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = collate([windows[i] for i in idx], pad_id).to(device)
        out = model(batch.input_ids, batch.attention_mask, batch.word_pos, labels=batch.labels)
        _, p, u = head_scores(torch.stack(out.logits, 1), criterion)  # (B, L, W) each
        p, u = p.cpu(), u.cpu()
        for row, i in enumerate(idx):
            k = windows[i].num_words
            unc[i], pred[i] = u[row, :, :k].clone(), p[row, :, :k].clone()
        if out.loss is not None:
            total_loss += float(out.loss)
            n_batches += 1
        if progress is not None:
            progress.update(len(idx))
    return LayerCache(unc, pred, total_loss / max(n_batches, 1))


@dataclass
class SamplingConfig:
    window: tuple[int, int] = (2, 7)  # k; windows of 5..15 words as in the paper
    threshold: tuple[float, float] = (0.01, 0.25)
    full_share: float = 0.125  # share of each batch kept at full depth
    aggressive_share: float = 0.125  # share with the smallest window and largest threshold
    upper_multiplier: float = 2.0
    criterion: str = "entropy"


def sample_exits(cache: LayerCache, idx: Sequence[int], num_words: int, cfg: SamplingConfig,
                 rng: random.Random) -> torch.Tensor:
    """Exit layers ``(B, W)`` for the windows ``idx`` of one batch (padded to ``num_words``)."""
    num_layers = cache.unc[idx[0]].shape[0]
    out = torch.full((len(idx), num_words), num_layers - 1, dtype=torch.long)
    n_full = round(cfg.full_share * len(idx))
    n_aggr = round(cfg.aggressive_share * len(idx))
    roles = ["full"] * n_full + ["aggressive"] * n_aggr + ["sampled"] * (len(idx) - n_full - n_aggr)
    rng.shuffle(roles)
    for row, (i, role) in enumerate(zip(idx, roles)):
        k = cache.unc[i].shape[1]
        if role == "full" or k == 0:
            continue
        if role == "aggressive":
            window, tau = cfg.window[0], cfg.threshold[1]
        else:
            window, tau = rng.randint(*cfg.window), rng.uniform(*cfg.threshold)
        exit_cfg = ExitConfig(policy="token", threshold=tau, window=window, upper_multiplier=cfg.upper_multiplier,
                              criterion=cfg.criterion)
        mask = torch.ones((1, k), dtype=torch.bool)
        out[row, :k] = simulate_exits(cache.unc[i][None], cache.pred[i][None], mask, exit_cfg)[0]
    return out
