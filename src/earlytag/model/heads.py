"""How a tagger turns each layer's per-word emission scores into labels, exit uncertainty and a training loss.

Every layer has an exit head (dropout + linear, :class:`earlytag.model.tagger.ExitHead`) giving emission scores
``(B, W, C)`` from the first sub-word of each word. A *head* decides what those scores mean:

- :class:`SoftmaxHead` (the paper's): an independent softmax per word; cross-entropy loss; the uncertainty of a
  word is the normalised entropy of its softmax.
- :class:`CRFHead`: a linear-chain CRF over the words (``earlytag train --head crf``): a learned transition
  matrix (shared by the layers or one per layer) with start/end scores; loss = CRF negative log-likelihood +
  cross-entropy of the unrolled mean-field marginals (so mean-field can replace Viterbi at inference); decoding
  by Viterbi (exact, sequential over positions), mean-field (parallel, ``iters`` updates), or blockwise
  (mean-field's labels, then the exact best labels of every run of words where mean-field doubts or breaks the
  tag scheme, between the words it is sure of: :func:`earlytag.model.crf.refine_runs`). Under early exit a
  word's emission is the one of the layer it exited at, and the uncertainty that decides exits comes from the
  layer's CRF marginals (``uncertainty``: meanfield | exact | emission, see docs/results.md).

The training forward calls :meth:`loss`; the engine calls :meth:`layer_scores` after each layer and
:meth:`decode` when a sentence is done. All of it runs in float32, whatever the encoder's precision.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..defaults import CRF_UNCERTAINTIES, DECODERS
from ..engine.policies import head_scores
from ..errors import ConfigError
from . import crf

CRF_DEFAULTS = {"transitions": "shared", "decode": "viterbi", "meanfield_iters": 3, "uncertainty": "meanfield",
                "block_below": 0.9, "blockwise_from": 64}
# settings of earlier versions, accepted in a saved config.json and dropped: block_words (blockwise decoded fixed
# blocks of that many words; it now decodes whole runs of doubtful words)
CRF_RETIRED = ("block_words",)


LAYER_WEIGHTS = ("depth", "uniform")  # (l+1) per layer, the paper's | 1 per layer


def layer_weighted(sums: list[torch.Tensor], counts: list[torch.Tensor], total: torch.Tensor, reduction: str,
                   weights: str = "depth"):
    """Σ_l w_l·L_l / Σ_l w_l from per-layer loss sums and the number of words counted in each; ``w_l = l+1``
    (``depth``, the paper's) or 1 (``uniform``: the lower heads count as much as the last)."""
    if weights not in LAYER_WEIGHTS:
        raise ConfigError("layer_weights", f"expected one of {', '.join(LAYER_WEIGHTS)}, got {weights!r}")
    count = torch.stack(counts)  # (L,)
    layers = torch.arange(1, len(sums) + 1, device=count.device)
    if weights == "uniform":
        layers = torch.ones_like(layers)
    if reduction == "batch-sum":
        layer_losses = torch.stack(sums) / total.clamp(min=1)  # (L,)
        weights = layers
    else:
        layer_losses = torch.stack(sums) / count.clamp(min=1)  # (L,)
        weights = layers * (count > 0)  # layers with nothing count 0
    loss = (layer_losses * weights).sum() / weights.sum().clamp(min=1)
    return loss, layer_losses.detach()


def self_distillation(logits: list[torch.Tensor], labels: torch.Tensor, temperature: float = 1.0,
                      weights: str = "depth") -> torch.Tensor:
    """Σ_l w_l·KL_l / Σ_l w_l over the layers below the last (``--distill``): ``KL_l`` is the mean over the
    labelled words of T²·KL(p_last ‖ p_l), both softmaxes at temperature T, the last layer's detached (a teacher,
    not a student). It pulls every lower head towards what full depth will say, which is what an exit needs: a
    word that exits early should get the label it would get at the top. ``w_l`` as in :func:`layer_weighted`."""
    if len(logits) < 2:  # one layer: nothing below the last
        _check_temperature(temperature)
        return logits[-1].sum() * 0.0
    return distillation(logits[:-1], logits[-1], labels, temperature, weights)


def distillation(logits: list[torch.Tensor], teacher: torch.Tensor, labels: torch.Tensor,
                 temperature: float = 1.0, weights: str = "depth") -> torch.Tensor:
    """Σ_l w_l·KL_l / Σ_l w_l: every head of ``logits`` (each ``(B, W, C)``, layer l at index l) pulled towards the
    ``teacher``'s softmax ``(B, W, C)`` (detached), ``KL_l`` the mean over the labelled words of
    T²·KL(p_teacher ‖ p_l), both softmaxes at temperature T; ``w_l`` as in :func:`layer_weighted`. The teacher is
    the student's own last head (:func:`self_distillation`) or another model's (``earlytag train --teacher``)."""
    _check_temperature(temperature)
    mask = (labels != -100).flatten()  # (B·W,)
    target = F.log_softmax(teacher.detach().float().flatten(0, 1) / temperature, -1)  # (B·W, C)
    sums = []
    for lg in logits:
        student = F.log_softmax(lg.float().flatten(0, 1) / temperature, -1)
        kl = (target.exp() * (target - student)).sum(-1)  # (B·W,)
        sums.append((kl * mask).sum() * temperature ** 2)
    n = mask.sum()
    loss, _ = layer_weighted(sums, [n] * len(sums), n, "active-mean", weights)
    return loss


def _check_temperature(temperature: float) -> None:
    if temperature <= 0:
        raise ConfigError("distill_temperature", f"must be > 0, got {temperature}")


def _check_reduction(reduction: str) -> None:
    if reduction not in ("active-mean", "batch-sum"):
        raise ConfigError("loss_reduction", f"expected active-mean or batch-sum, got {reduction!r}")


class SoftmaxHead(nn.Module):
    """An independent softmax per word (no parameters of its own: the per-layer linears are the exit heads)."""

    kind: ClassVar[str] = "softmax"
    structured: ClassVar[bool] = False  # the engine scores words one by one (flat rows)

    def loss(self, logits: list[torch.Tensor], labels: torch.Tensor, word_exit: torch.Tensor | None = None,
             reduction: str = "active-mean", flood: torch.Tensor | None = None, weights: str = "depth"):
        """Σ_l (l+1)·L_l / Σ_l (l+1), with ``L_l`` the cross-entropy of layer l's head (``weights="uniform"``: the
        plain mean over layers, :func:`layer_weighted`).

        With ``word_exit`` a layer only counts the words still active there: ``active-mean`` averages over them
        (a layer without any counts 0 and leaves the weighting), ``batch-sum`` sums over them and divides by all
        words of the batch (the authors' self-sampling loss). ``flood (B, L, W)`` floods each word's loss at
        each layer at its own level: ``|l - b| + b``. Without ``word_exit`` and ``flood`` both reductions are the
        plain joint loss."""
        _check_reduction(reduction)
        sums, counts = [], []
        for layer, lg in enumerate(logits):
            target = labels if word_exit is None else labels.masked_fill(word_exit < layer, -100)
            ce = F.cross_entropy(lg.float().flatten(0, 1), target.flatten(), ignore_index=-100, reduction="none")
            if flood is not None:
                level = flood[:, layer].flatten()
                ce = torch.where(target.flatten() != -100, (ce - level).abs() + level, 0.0)
            sums.append(ce.sum())
            counts.append((target != -100).sum())
        return layer_weighted(sums, counts, (labels != -100).sum(), reduction, weights)

    def layer_scores(self, layer: int, emit: torch.Tensor, word_mask: torch.Tensor, criterion: str = "entropy"):
        """``score, pred, unc (B, W)`` of every word from its own softmax (the engine's flat path computes the same
        on the active words' rows only: :func:`earlytag.engine.policies.head_scores`)."""
        return head_scores(emit, criterion)

    def predict_layer(self, layer: int, emit: torch.Tensor, word_mask: torch.Tensor) -> torch.Tensor:
        """Labels ``(B, W)`` of one layer's emissions alone (the per-layer table)."""
        return emit.max(-1).indices

    def describe(self) -> str:
        return "softmax"


class CRFHead(nn.Module):
    """A linear-chain CRF on the exit heads' emissions. Parameters ``transitions (T, C, C)``, ``start``/``end
    (T, C)`` with ``T = 1`` (shared by every layer) or one per layer. Runtime settings (not parameters):
    ``decode`` (viterbi | meanfield | blockwise), ``meanfield_iters``, ``uncertainty`` (what decides exits),
    ``block_below``, ``blockwise_from`` (blockwise: the mean-field probability below which a word is decoded
    again, with the doubtful words next to it; the sentence length from which a batch is refined at all: shorter
    batches get Viterbi, which is then as fast and exact; docs/results.md section 8)."""

    kind: ClassVar[str] = "crf"
    structured: ClassVar[bool] = True  # the engine scores whole sentences (b, W, C)

    def __init__(self, labels: list[str], task: str, scheme: str | None, num_layers: int,
                 settings: dict[str, Any] | None = None):
        super().__init__()
        s = crf_settings(settings)
        self.shared = s["transitions"] == "shared"
        t = 1 if self.shared else num_layers
        c = len(labels)
        self.transitions = nn.Parameter(torch.zeros(t, c, c))  # zero: the CRF starts as the softmax head
        self.start = nn.Parameter(torch.zeros(t, c))
        self.end = nn.Parameter(torch.zeros(t, c))
        ok_trans, ok_first, ok_last = crf.allowed(labels, task, scheme)
        self.register_buffer("penalty", (~ok_trans).float() * crf.NEG, persistent=False)  # (C, C)
        self.register_buffer("start_penalty", (~ok_first).float() * crf.NEG, persistent=False)
        self.register_buffer("end_penalty", (~ok_last).float() * crf.NEG, persistent=False)
        self.decode_with = s["decode"]
        self.meanfield_iters = s["meanfield_iters"]
        self.uncertainty = s["uncertainty"]
        self.block_below, self.blockwise_from = s["block_below"], s["blockwise_from"]

    def configure(self, decode: str | None = None, meanfield_iters: int | None = None,
                  uncertainty: str | None = None) -> CRFHead:
        """Change the runtime settings (None keeps one); validated like the saved ones."""
        s = crf_settings({"transitions": "shared" if self.shared else "per-layer",
                          "decode": decode or self.decode_with,
                          "meanfield_iters": self.meanfield_iters if meanfield_iters is None else meanfield_iters,
                          "uncertainty": uncertainty or self.uncertainty,
                          "block_below": self.block_below, "blockwise_from": self.blockwise_from})
        self.decode_with, self.meanfield_iters, self.uncertainty = s["decode"], s["meanfield_iters"], s["uncertainty"]
        return self

    def _all(self, constrained: bool):
        """``trans (T, C, C), start (T, C), end (T, C)`` in float32; ``constrained`` adds the scheme's forbidden
        transitions as :data:`earlytag.model.crf.NEG`."""
        tr, st, en = self.transitions.float(), self.start.float(), self.end.float()
        if constrained:
            tr, st, en = tr + self.penalty, st + self.start_penalty, en + self.end_penalty
        return tr, st, en

    def params(self, layer: int, constrained: bool = False):
        """``trans (C, C), start (C,), end (C,)`` of ``layer`` (see :meth:`_all`)."""
        i = 0 if self.shared else layer
        return tuple(x[i] for x in self._all(constrained))

    def _params_at(self, exit_layer: torch.Tensor, word_mask: torch.Tensor, constrained: bool):
        """Transitions for a sentence whose words come from different layers: each step takes the deeper of its
        two words' layers, the start/end scores the first/last word's. Shared transitions: one matrix."""
        if self.shared:
            return self.params(0, constrained)
        tr, st, en = self._all(constrained)
        e = exit_layer.clamp(min=0)  # (B, W)
        deeper = torch.maximum(e, torch.cat([e[:, :1], e[:, :-1]], 1))  # (B, W): step from t-1 to t
        last = e.gather(1, (word_mask.sum(1) - 1).clamp(min=0).unsqueeze(1)).squeeze(1)  # (B,)
        return tr[deeper], st[e[:, 0]], en[last]  # (B, W, C, C), (B, C), (B, C)

    # ------------------------------------------------------------------ training

    def loss(self, logits: list[torch.Tensor], labels: torch.Tensor, word_exit: torch.Tensor | None = None,
             reduction: str = "active-mean", flood: torch.Tensor | None = None, weights: str = "depth"):
        """Per layer: CRF negative log-likelihood of the gold sequence + cross-entropy of the mean-field
        marginals, each per word; weighted over layers like the softmax loss.

        With ``word_exit`` (self-sampling) layer l sees every word that has halted before it with the emission
        of its exit layer (as the engine decodes it); the NLL counts the sentences with a word still active at
        l, the mean-field term the active words."""
        _check_reduction(reduction)
        if flood is not None:
            raise ConfigError("flooding", "token flooding floods each word's cross-entropy; a CRF head's loss is "
                                          "per sentence: use --flooding batch or --flooding off")
        mask = labels != -100  # (B, W)
        if bool((mask[:, 1:] & ~mask[:, :-1]).any()):
            raise ConfigError("labels", "a CRF head needs every word of a sentence labelled (-100 only as padding)")
        tags = labels.masked_fill(~mask, 0)
        stacked = torch.stack(logits, 1).float() if word_exit is not None else None  # (B, L, W, C)
        sums, counts = [], []
        for layer, lg in enumerate(logits):
            emit = lg.float()
            counted = mask
            if word_exit is not None:
                active = word_exit >= layer
                at_exit = stacked.gather(1, word_exit.clamp(0, layer)[:, None, :, None]
                                         .expand(-1, 1, -1, emit.shape[-1])).squeeze(1)  # (B, W, C)
                emit = torch.where(active.unsqueeze(-1), emit, at_exit)
                counted = mask & active
            trans, start, end = self.params(layer)
            live = counted.any(1)  # (B,) sentences this layer is trained on
            sent_nll = crf.nll(emit, tags, mask, trans, start, end)  # (B,)
            logq = crf.meanfield(emit, mask, trans, start, end, self.meanfield_iters)  # (B, W, C)
            mf = -logq.gather(2, tags.unsqueeze(2)).squeeze(2)  # (B, W)
            n = counted.sum()
            nll_part = (sent_nll * live).sum()
            if reduction == "active-mean" and word_exit is not None:  # per word of the sentences it counts
                nll_part = nll_part * n / (mask.sum(1) * live).sum().clamp(min=1)
            sums.append(nll_part + (mf * counted).sum())
            counts.append(n)
        return layer_weighted(sums, counts, mask.sum(), reduction, weights)

    # ------------------------------------------------------------------ inference

    def layer_scores(self, layer: int, emit: torch.Tensor, word_mask: torch.Tensor, criterion: str = "entropy"):
        """After ``layer``: ``score, pred, unc (B, W)`` of every word from the CRF's marginals over ``emit``
        (each word's current emission); what decides exits. float32."""
        emit = emit.float()
        if self.uncertainty == "emission":
            logq = emit.transpose(1, 2).log_softmax(1)  # (B, C, W): labels first, as the mean-field runs
        else:
            trans, start, end = self.params(layer, constrained=self.uncertainty == "exact")
            if self.uncertainty == "exact":
                logq = crf.marginals(emit, word_mask, trans, start, end).clamp(min=1e-30).log().transpose(1, 2)
            else:
                logq = crf.meanfield_labels_first(emit, word_mask, trans, start, end, self.meanfield_iters)
        best, pred = crf.best_labels(logq, 1)  # (B, W)
        score = best.exp()
        unc = 1.0 - score if criterion == "maxprob" else crf.normalised_entropy(logq, dim=1)
        return score, pred, unc

    def decode(self, emit: torch.Tensor, word_mask: torch.Tensor, exit_layer: torch.Tensor):
        """Labels and scores ``(B, W)`` of finished sentences: each word's emission from its exit layer.
        Viterbi and blockwise labels come with the mean-field probability of the chosen label as their score."""
        emit = emit.float()
        trans, start, end = self._params_at(exit_layer, word_mask, constrained=False)
        best, pred, probs = crf.meanfield_probs(emit, word_mask, trans, start, end, self.meanfield_iters)
        if self.decode_with == "meanfield":
            return pred, best
        trans, start, end = self._params_at(exit_layer, word_mask, constrained=True)
        if self.decode_with == "blockwise" and emit.shape[1] >= self.blockwise_from:
            pred = crf.refine_runs(emit, word_mask, trans, start, end, pred, best, self.block_below,
                                   whole_if_cheaper=True)
        else:
            pred, _ = crf.viterbi(emit, word_mask, trans, start, end)
        return pred, probs.gather(1, pred.unsqueeze(1)).squeeze(1)  # (B, W)

    def predict_layer(self, layer: int, emit: torch.Tensor, word_mask: torch.Tensor) -> torch.Tensor:
        """Labels ``(B, W)`` of one layer's emissions and transitions alone (the per-layer table)."""
        full = torch.full(word_mask.shape, layer, dtype=torch.long, device=emit.device)
        return self.decode(emit, word_mask, full)[0]

    def describe(self) -> str:
        mf = f" M={self.meanfield_iters}"
        blocks = (f" below {self.block_below:g} from {self.blockwise_from} words"
                  if self.decode_with == "blockwise" else "")
        return (f"crf ({'shared' if self.shared else 'per-layer'} transitions), decode {self.decode_with}"
                + (mf if self.decode_with != "viterbi" else "") + blocks + f", exits by {self.uncertainty}"
                + (mf if self.uncertainty == "meanfield" and self.decode_with == "viterbi" else ""))


def crf_settings(settings: dict[str, Any] | None) -> dict[str, Any]:
    """The CRF settings with defaults filled in, each checked with an error naming it."""
    s = dict(CRF_DEFAULTS)
    for k, v in (settings or {}).items():
        if k in CRF_RETIRED:
            continue
        if k not in CRF_DEFAULTS:
            raise ConfigError(f"crf.{k}", f"unknown CRF setting; known: {', '.join(CRF_DEFAULTS)}")
        if v is not None:
            s[k] = v
    if s["transitions"] not in ("shared", "per-layer"):
        raise ConfigError("crf.transitions", f"expected shared or per-layer, got {s['transitions']!r}")
    if s["decode"] not in DECODERS:
        raise ConfigError("crf.decode", f"expected one of {', '.join(DECODERS)}, got {s['decode']!r}")
    if s["uncertainty"] not in CRF_UNCERTAINTIES:
        raise ConfigError("crf.uncertainty", f"expected one of {', '.join(CRF_UNCERTAINTIES)}, got {s['uncertainty']!r}")
    for key, low, high in (("meanfield_iters", 0, 50), ("blockwise_from", 0, None)):
        v = s[key]
        if not isinstance(v, int) or isinstance(v, bool) or v < low or (high is not None and v > high):
            bounds = f"between {low} and {high}" if high is not None else f"of at least {low}"
            raise ConfigError(f"crf.{key}", f"must be an integer {bounds}, got {v!r}")
    below = s["block_below"]
    if not isinstance(below, (int, float)) or isinstance(below, bool) or not 0.0 <= below <= 1.0:
        raise ConfigError("crf.block_below", f"must be a probability between 0 and 1, got {below!r}")
    return s


def build_head(config, num_layers: int) -> nn.Module:
    """The head a :class:`~earlytag.model.config.TaggerConfig` describes."""
    if config.head == "softmax":
        return SoftmaxHead()
    return CRFHead(config.labels, config.task, config.label_scheme if config.is_chunking else None, num_layers,
                   config.crf)
