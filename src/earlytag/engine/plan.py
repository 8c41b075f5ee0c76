"""Who is active where: the one home of the rule that turns exit layers into computed tokens, heads and FLOPs.

The rule: a word is active at layers ``0..exit`` and its sub-words with it; a sentence is live up to the last
exit of its words, and while it is live its special tokens are active and (``kv=keep``) all its tokens are
keys/values. With ``halted=rescore`` the head of a layer scores every word of the live sentences, halted ones
included; with ``frozen`` only the active words.

- :func:`active_tokens` applies the rule to the words active now (the engine's climb, one layer at a time);
- :class:`ExitPlan` applies it to known exit layers: the training forward of self-sampling freezes tokens by
  it (torch, on the model's device), and the engine derives its statistics and FLOPs from it once per batch,
  after the climb (counted in numpy: tiny arrays, where each torch call would cost more than the arithmetic);
- :func:`sentence_counts` is the same count for one sentence with halted words frozen, in torch, traced into the
  ONNX Runtime backend's whole-climb graphs: a one-sentence batch comes back from its one session call with its
  statistics, and no host code counts anything (tests hold it to :class:`ExitPlan`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import numpy as np
import torch

from .flops import head_flops, layer_coefficients, layer_flops


def active_tokens(active_words: torch.Tensor, token_word: torch.Tensor, tok_mask: torch.Tensor) -> torch.Tensor:
    """``(B, T)`` tokens computed now: sub-words of the ``active_words (B, W)``, and the special tokens of
    sentences with any active word (``token_word`` is -1 on special tokens and padding)."""
    live = active_words.any(1, keepdim=True)  # (B, 1)
    own = active_words.gather(1, token_word.clamp(min=0))  # (B, T) the word's state, for sub-words
    return tok_mask & torch.where(token_word >= 0, own, live)


def sentence_counts(exit_layer: torch.Tensor, token_word: torch.Tensor, layers: int, d: int, da, f,
                    num_labels: int, heads_every_layer: bool) -> torch.Tensor:
    """One sentence's statistics, halted words frozen and ``kv=keep``: ``exit_layer (W,)`` of its words (all real,
    W ≥ 1), ``token_word (T,)`` (-1 on special tokens; no padding), ``layers`` the depth of the setting, ``da``/``f``
    every layer's Q/K/V and FFN widths -> ``(3 + 2·layers,)`` float64: FLOPs, FLOPs at full depth, Σ of the words'
    1-based exit layers, tokens computed at each layer, words exited at each layer.

    The rule of :class:`ExitPlan` for one sentence in torch, to be traced into a graph, in few operations (each is
    a node that costs a few microseconds per call): a sentence is live, all its ``t`` tokens keys/values, at
    every layer where any of its tokens is active, so ``layer_flops`` sums to ``t·Σ per_kv + a·(per_active +
    t·per_pair)`` over the layers it is live at (``layer_coefficients``)."""
    da, f = torch.as_tensor(da, dtype=torch.float64), torch.as_tensor(f, dtype=torch.float64)  # (L_model,) each
    per_kv, per_active, per_pair = layer_coefficients(d, f, da)  # (L_model,) each
    at = torch.arange(layers)  # (L,)
    t = torch.ones_like(token_word, dtype=torch.float64).sum()  # tensors: the lengths vary per call
    w = torch.ones_like(exit_layer, dtype=torch.float64).sum()
    last = exit_layer.max()  # the sentence is live up to here
    token_exit = torch.where(token_word >= 0, exit_layer.index_select(0, token_word.clamp(min=0)), last)  # (T,)
    active = (token_exit[:, None] >= at).sum(0).double()  # (L,)
    exited = (exit_layer[:, None] == at).sum(0).double()  # (L,)
    exit_sum = (exited * (at + 1)).sum()  # Σ 1-based exit layers
    head_words = exit_sum if heads_every_layer else w  # a word is scored at layers 0..exit, or once at the last
    flops = (t * (per_kv[:layers] * (active > 0)).sum() + (active * (per_active[:layers] + t * per_pair[:layers])).sum()
             + head_flops(head_words, d, num_labels))
    full = t * per_kv.sum() + t * per_active.sum() + t * t * per_pair.sum() + head_flops(w, d, num_labels)
    return torch.cat([torch.stack([flops, full, exit_sum]), active, exited])


def word_mask_of(token_word: torch.Tensor, num_words: int) -> torch.Tensor:
    """``(B, W)`` words that have at least one sub-word."""
    mask = torch.zeros((token_word.shape[0], num_words), dtype=torch.long, device=token_word.device)
    return mask.scatter_reduce_(1, token_word.clamp(min=0), (token_word >= 0).long(), reduce="amax").bool()


class _Counts(NamedTuple):
    """An :class:`ExitPlan` in numpy, for the engine's counts."""

    word_exit: np.ndarray  # (B, W), -1 on padding
    word_mask: np.ndarray  # (B, W) bool
    token_exit: np.ndarray  # (B, T) last layer each token is computed at, -1 on padding
    sentence_exit: np.ndarray  # (B,) last layer each sentence is live at, -1: never run
    tokens: np.ndarray  # (B,) real tokens of each sentence
    words: np.ndarray  # (B,) real words of each sentence
    layers: np.ndarray  # (L,) 0..L-1


@dataclass
class ExitPlan:
    """Exit layers of a batch and everything that follows from them (all tensors per sentence)."""

    word_exit: torch.Tensor  # (B, W) 0-based exit layer of each word; ignored on padding
    word_mask: torch.Tensor  # (B, W) real words
    token_word: torch.Tensor  # (B, T) word of each sub-word, -1 for special tokens and padding
    tok_mask: torch.Tensor  # (B, T) real tokens
    num_layers: int  # layers that may run (the depth of the setting)
    kv: str = "keep"  # halted tokens stay keys/values (keep) or leave attention (drop)
    rescore: bool = True  # heads score every word of a live sentence (halted ones too), or active words only
    heads: list[bool] | None = None  # layers whose head runs (None: every layer)

    @cached_property
    def exits(self) -> torch.Tensor:
        """``(B, W)`` the exit layers with -1 on padding (torch; the training forward's side of the plan)."""
        return torch.where(self.word_mask, self.word_exit, -1)

    @cached_property
    def sentence_exit(self) -> torch.Tensor:
        """``(B,)`` last layer each sentence is live at (-1: it has no words and is never run)."""
        return self.exits.max(1).values if self.exits.shape[1] else torch.full(
            self.exits.shape[:1], -1, dtype=torch.long, device=self.exits.device)

    @cached_property
    def token_exit(self) -> torch.Tensor:
        """``(B, T)`` last layer each token is computed at: its word's exit for a sub-word, the sentence's for a
        special token, -1 for padding."""
        own = self.exits.gather(1, self.token_word.clamp(min=0))
        out = torch.where(self.token_word >= 0, own, self.sentence_exit[:, None])
        return out.masked_fill(~self.tok_mask, -1)

    def active(self, layer: int) -> torch.Tensor:
        """``(B, T)`` tokens computed at ``layer`` (queries, attention output, FFN)."""
        return self.token_exit >= layer

    # ---- the engine's bookkeeping, once per input batch: counted in numpy on the CPU, where a few dozen torch calls
    # on (B, W)-sized tensors cost more than a short sentence's whole climb in ONNX Runtime (about 1 ms at batch 1)

    @cached_property
    def _np(self) -> _Counts:
        """The plan's tensors as numpy arrays, and what every count below starts from. Few and plain numpy calls:
        between two climbs their code is cold, and each costs several times what it does in a tight loop."""
        wm = self.word_mask.numpy(force=True).astype(bool, copy=False)
        tw = self.token_word.numpy(force=True)
        tm = self.tok_mask.numpy(force=True).astype(bool, copy=False)
        we = np.where(wm, self.word_exit.numpy(force=True), -1)
        b, w = we.shape
        sent = we.max(1) if w else np.full(b, -1, dtype=we.dtype)
        # a sub-word takes its word's exit, a special token its sentence's, padding -1
        own = np.take_along_axis(we, np.maximum(tw, 0), 1) if w else np.zeros_like(tw)
        tok_exit = np.where(tm, np.where(tw >= 0, own, sent[:, None]), -1)
        return _Counts(we, wm, tok_exit, sent, tm.sum(1), wm.sum(1), np.arange(self.num_layers))

    @property
    def tokens(self) -> np.ndarray:
        """``(B,)`` real tokens of each sentence."""
        return self._np.tokens

    @property
    def words(self) -> np.ndarray:
        """``(B,)`` real words of each sentence."""
        return self._np.words

    @cached_property
    def active_counts(self) -> np.ndarray:
        """``(B, L)`` tokens computed at each layer."""
        c = self._np
        return (c.token_exit[:, :, None] >= c.layers).sum(1)

    @cached_property
    def live_counts(self) -> np.ndarray:
        """``(B, L)`` tokens of each live sentence (its keys/values under kv=keep), 0 once it has left."""
        c = self._np
        return c.tokens[:, None] * (c.sentence_exit[:, None] >= c.layers)

    @cached_property
    def head_words(self) -> np.ndarray:
        """``(B, L)`` words a layer's head scores: all words of live sentences (rescore) or the active ones."""
        c = self._np
        if self.rescore:
            counts = c.words[:, None] * (c.sentence_exit[:, None] >= c.layers)
        else:
            counts = (c.word_exit[:, :, None] >= c.layers).sum(1)
        if self.heads is not None:
            counts = counts * np.asarray(self.heads)
        return counts

    @cached_property
    def words_exited(self) -> np.ndarray:
        """``(L,)`` how many words exited at each layer."""
        return np.bincount(self._np.word_exit.ravel() + 1, minlength=self.num_layers + 1)[1:]  # padding is -1

    @property
    def exit_layer_sum(self) -> float:
        """Σ over words of their 1-based exit layer."""
        return float((self._np.word_exit + 1).sum())  # padding adds 0

    def flops(self, d: int, da, f, num_labels: int) -> np.ndarray:
        """``(B,)`` FLOPs of each sentence (docs/design.md); ``da``, ``f``: ``(L,)`` Q/K/V and FFN widths of the
        model's layers (those that ran are read)."""
        layers = self.live_counts.shape[1]
        da, f = np.asarray(da, dtype=np.float64), np.asarray(f, dtype=np.float64)
        return (layer_flops(self.live_counts, self.active_counts, d, f[:layers], self.kv, da[:layers]).sum(1)
                + head_flops(self.head_words.sum(1), d, num_labels))

    def flops_full(self, d: int, da, f, num_labels: int) -> np.ndarray:
        """``(B,)`` FLOPs of each sentence at full depth (every token, every layer of ``da``/``f``, one head at the
        last layer); a sentence without words is never run and costs 0."""
        n, words = self._np.tokens[:, None], self._np.words  # (B, 1), (B,)
        da, f = np.asarray(da, dtype=np.float64), np.asarray(f, dtype=np.float64)
        return layer_flops(n, n, d, f, "keep", da).sum(1) * (words > 0) + head_flops(words, d, num_labels)
