"""The early-exit loop: run the encoder layer by layer and let an :class:`ExitPolicy` stop words.

State of a batch (working rows = sentences still live; ``b`` of them, ``T`` sub-words, ``W`` words):

    h          (b, T, d)  hidden states; a halted token's row is simply not updated any more
    tok_mask   (b, T)     real sub-word tokens (not padding)
    active_w   (b, W)     words still climbing
    active_t   (b, T)     tokens computed at this layer: sub-words of active words + special tokens

One layer step, packed (the hot path; see docs/design.md):

    K, V = W_k·h, W_v·h                      every token of a live sentence is a key/value (kv=keep); on the
                                             real tokens' rows only where the group has padding
    x    = h[active_t]                       (N_a, d) active rows of the whole batch, one flat matrix
    Q    = W_q·x                             big GEMMs on the packed rows
    ctx  = attention(Q padded per sentence to its active count, K, V)   -> (N_a, d)
    h[active_t] = FFN/LN(W_o·ctx + x)        output projection, residuals, FFN: active rows only

When most positions are active the dense step (all rows, halted ones restored) is faster; the switch is
made per layer. Sentences whose words have all halted leave the batch. No Python loop runs over tokens
or words and nothing is read back per token: a layer costs a few host reads of sizes. Bookkeeping that
is not needed to decide (FLOPs, histograms, the outputs of halted words) is done once, after the loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ..data.batching import Batch
from ..errors import ConfigError
from ..model.adapters import LayerParts
from ..model.layers import attend, attend_unfused, finish, key_bias
from ..model.precision import (
    Int8Linear,
    OneDnnLinear,
    is_exact_gelu,
    onednn_linear,
    onednn_linear_add,
    onednn_linear_gelu,
    onednn_pack,
)
from .flops import ExitStats
from .plan import ExitPlan, active_tokens
from .policies import ExitConfig, ExitPolicy, label_scores

if TYPE_CHECKING:
    from ..model.tagger import EarlyExitTagger


@dataclass
class EngineOutput:
    pred: torch.Tensor  # (B, W) label id each word exited with
    score: torch.Tensor  # (B, W) probability of that label
    exit_layer: torch.Tensor  # (B, W) 0-based layer each word exited at, -1 on padding
    stats: ExitStats
    flops: torch.Tensor  # (B,) FLOPs spent on each sentence
    flops_full: torch.Tensor  # (B,) FLOPs each sentence costs at full depth
    trace: torch.Tensor | None = None  # (B, L, W) uncertainty the policy saw after each layer (NaN: not live)
    plan: ExitPlan | None = None  # who was active where (the statistics and FLOPs come from it); None where a
    # one-sentence batch climbed in one ONNX Runtime call, whose graph counted them (plan.sentence_counts)


def bucket_rows(n: int) -> int:
    """``n`` rounded up to one of 8 sizes per power of two (at most 12.5% more rows): the GEMMs of a packed step
    then see a few shapes again and again instead of a new one at almost every step."""
    if n <= 16:
        return n
    step = 1 << (n.bit_length() - 4)
    return -(-n // step) * step


class _FusedLayer:
    """Inference copies of one layer's projections with Q/K/V fused, rebuilt when the weights change.

    ``qkv(x)``, ``q(x)``, ``kv(x)`` and ``finish(ctx, x)`` run in the layer's precision: plain Linear weights in the
    model's dtype (fp32, bf16, fp16), or :class:`~earlytag.model.precision.Int8Linear` rows joined exactly. With
    ``bucket`` their rows are padded to :func:`bucket_rows`: oneDNN prepares a bf16/fp16 GEMM per shape, and the
    packed step would show it a new shape at almost every step (scripts/gemm_shapes.py measures the difference;
    docs/design.md says what it found). ``bucket_dense`` pads the dense steps' rows too (every ``(b, T)``
    position; ``F.linear``'s bf16 products, not the onednn backend's prepacked ones). fp32 and int8 products are
    not padded."""

    def __init__(self, parts: LayerParts, bucket: bool = False, bucket_dense: bool | None = None):
        self.parts = parts
        self.bucket = bucket  # pad the rows of a packed step's products
        self.bucket_dense = bucket if bucket_dense is None else bucket_dense  # and of a dense step's (b·T rows)
        self.version = self._version()
        self._finish = self._plain_finish  # output projection, residual + LN, FFN, residual + LN (finish)
        q, k, v = parts.query, parts.key, parts.value
        if isinstance(q, Int8Linear):
            self._q = q
            self._kv = Int8Linear.cat([k, v])
            self._qkv = Int8Linear.cat([q, k, v])
            return
        with torch.no_grad():
            wq, bq = q.weight.detach(), q.bias.detach()
            wkv, bkv = torch.cat([k.weight, v.weight]).detach(), torch.cat([k.bias, v.bias]).detach()
            wqkv, bqkv = torch.cat([q.weight, k.weight, v.weight]).detach(), torch.cat([q.bias, k.bias, v.bias]).detach()
        if isinstance(q, OneDnnLinear):  # the onednn backend: the fused weights prepacked once
            pq, pkv, pqkv = (onednn_pack(w) for w in (wq, wkv, wqkv))
            self._q = lambda x: onednn_linear(x, pq, bq)
            self._kv = lambda x: onednn_linear(x, pkv, bkv)
            self._qkv = lambda x: onednn_linear(x, pqkv, bqkv)
            if (isinstance(parts.attn_out, OneDnnLinear) and isinstance(parts.ffn_in, OneDnnLinear)
                    and isinstance(parts.ffn_out, OneDnnLinear) and is_exact_gelu(parts.act)):
                self._finish = self._onednn_finish  # the residual sums and GELU inside the products
            return
        self._q = lambda x: F.linear(x, wq, bq)
        self._kv = lambda x: F.linear(x, wkv, bkv)
        self._qkv = lambda x: F.linear(x, wqkv, bqkv)

    def _rows(self, fn, *xs: torch.Tensor, dense: bool = False) -> torch.Tensor:
        if not (self.bucket_dense if dense else self.bucket):
            return fn(*xs)
        lead = xs[0].shape[:-1]
        n = xs[0].numel() // xs[0].shape[-1]
        nb = bucket_rows(n)
        flat = [x.reshape(n, x.shape[-1]) for x in xs]
        if nb != n:
            flat = [torch.cat([f, f.new_zeros(nb - n, f.shape[1])]) for f in flat]
        y = fn(*flat)[:n]
        return y.view(*lead, y.shape[-1])

    def q(self, x: torch.Tensor) -> torch.Tensor:
        return self._rows(self._q, x)

    def kv(self, x: torch.Tensor, dense: bool = False) -> torch.Tensor:
        return self._rows(self._kv, x, dense=dense)

    def qkv(self, x: torch.Tensor, dense: bool = False) -> torch.Tensor:
        return self._rows(self._qkv, x, dense=dense)

    def finish(self, ctx: torch.Tensor, residual: torch.Tensor, dense: bool = False) -> torch.Tensor:
        """Output projection, residual + LayerNorm, FFN, residual + LayerNorm (``model.layers.finish``). ``dense``:
        rows of every ``(b, T)`` position, whose count repeats from layer to layer (``bucket_dense`` pads them)."""
        return self._rows(self._finish, ctx, residual, dense=dense)

    def _plain_finish(self, ctx: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return finish(self.parts, ctx, residual)

    def _onednn_finish(self, ctx: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """:func:`~earlytag.model.layers.finish` with each residual sum and the FFN's GELU done by oneDNN as the
        product writes its output (two passes over the rows and one over the FFN's wide activations saved)."""
        p = self.parts
        x = p.attn_norm(onednn_linear_add(ctx, residual, p.attn_out.packed(), p.attn_out.bias))  # (N, d)
        wide = onednn_linear_gelu(x, p.ffn_in.packed(), p.ffn_in.bias)  # (N, d_ff)
        return p.ffn_norm(onednn_linear_add(wide, x, p.ffn_out.packed(), p.ffn_out.bias))  # (N, d)

    def _version(self) -> tuple:
        p = self.parts
        return tuple((t.data_ptr(), t._version) for m in (p.query, p.key, p.value)
                     for t in ((m.weight, m.bias) if isinstance(m, nn.Linear) else (m.int8_weight,)))

    def stale(self) -> bool:
        return self._version() != self.version


class _Group:
    """The working state of live sentences that climb together (one input batch, or several merged).

    ``origin`` (b, 2) holds each row's input batch and row there; ``layer`` is the next layer to run.
    """

    per_row = ("origin", "h", "tok_mask", "token_word", "word_pos", "word_mask", "active_w", "unc", "pred", "score",
               "exit", "emit")
    pad_values = {"token_word": -1, "exit": -1}  # padding when groups of different sizes are merged

    def __init__(self, layer: int, state: dict[str, torch.Tensor], batches: set[int], **tensors: torch.Tensor):
        self.__dict__.update(tensors)
        self.layer = layer
        self.state = state
        self.batches = batches  # input batches with rows in this group
        self._derive()

    def _derive(self) -> None:
        """Tensors that only change when the group is compacted or merged."""
        b, t = self.tok_mask.shape
        self.word_flat = (self.word_pos + torch.arange(b, device=self.h.device)[:, None] * t).view(-1)  # (b*W,)
        self.total_tokens = int(self.tok_mask.sum())
        self.padded = self.total_tokens < self.tok_mask.numel()
        self.real_rows: torch.Tensor | None = None  # (N_real,) flat indices of the real tokens, when first needed
        self.pad_bias = key_bias(self.tok_mask, self.h.dtype) if self.padded else None  # (b, 1, 1, T)
        self.words_flat = self.word_mask.view(-1).nonzero().squeeze(1)  # (N_w,) every real word (rescoring)
        self.active_t: torch.Tensor | None = None

    @property
    def size(self) -> int:
        return self.h.shape[0]

    def active_tokens(self) -> torch.Tensor:
        """``(b, T)`` tokens computed at the next layer (:func:`earlytag.engine.plan.active_tokens`)."""
        if self.active_t is None:
            self.active_t = active_tokens(self.active_w, self.token_word, self.tok_mask)
        return self.active_t

    def keep(self, keep: torch.Tensor) -> None:
        for name in self.per_row:
            setattr(self, name, getattr(self, name).index_select(0, keep))
        self.state = {k: v.index_select(0, keep) for k, v in self.state.items()}
        if len(self.batches) > 1:
            self.batches = set(self.origin[:, 0].unique().tolist())
        t_live = int(self.tok_mask.sum(1).max())
        if t_live < self.h.shape[1]:  # drop padding columns no live sentence needs
            self.h = self.h[:, :t_live].contiguous()
            self.tok_mask, self.token_word = self.tok_mask[:, :t_live], self.token_word[:, :t_live]
        self._derive()

    @classmethod
    def merge(cls, a: _Group, b: _Group) -> _Group:
        """Two groups at the same layer become one (padded to the longer sentences and word lists)."""
        t = max(a.h.shape[1], b.h.shape[1])
        w = max(a.word_pos.shape[1], b.word_pos.shape[1])
        tensors = {}
        for name in cls.per_row:
            x, y = getattr(a, name), getattr(b, name)
            if name != "origin":
                size = t if name in ("h", "tok_mask", "token_word") else w
                x, y = (_pad_dim1(z, size, cls.pad_values.get(name, 0)) for z in (x, y))
            tensors[name] = torch.cat([x, y])
        state = {k: torch.cat([_pad_dim1(a.state[k], w, 0), _pad_dim1(b.state[k], w, 0)]) for k in a.state}
        return cls(a.layer, state, a.batches | b.batches, **tensors)


def _pad(values: list, size: int) -> list:
    return values + [0] * (size - len(values))


def _pad_dim1(x: torch.Tensor, size: int, value) -> torch.Tensor:
    if x.shape[1] == size:
        return x
    pad = x.new_full((x.shape[0], size - x.shape[1], *x.shape[2:]), value)
    return torch.cat([x, pad], 1)


class _Outputs:
    """Outputs of one input batch, filled as its sentences finish (in whatever group they finish)."""

    def __init__(self, batch: Batch, index: int, num_layers: int):
        self.batch = batch
        self.index = index
        self.stats = ExitStats(num_layers, sentences=batch.word_pos.shape[0])  # words and tokens: from the plan
        self.pred = self.score = self.exit = None  # (B, W) each; the whole climb hands over its own
        self.counts = None  # the whole climb's statistics (plan.sentence_counts); None: counted after the climb

    def allocate(self) -> None:
        """Buffers that finished rows of layer-by-layer groups are copied into."""
        big_b, w = self.batch.word_pos.shape
        dev = self.batch.input_ids.device
        self.pred = torch.zeros((big_b, w), dtype=torch.long, device=dev)
        self.score = torch.zeros((big_b, w), device=dev)
        self.exit = torch.full((big_b, w), -1, dtype=torch.long, device=dev)


class Engine:
    """Early-exit inference over :class:`Batch` objects for one :class:`EarlyExitTagger`.

    :meth:`run` tags one batch. :meth:`run_many` tags a sequence of batches and, under early exit, keeps the
    later layers busy: when the sentences still climbing in a batch leave fewer than ``refill_tokens``
    active tokens at a layer, they wait there for the survivors of the next batch and climb on together
    (results are the same; GEMMs on a handful of rows are inefficient).
    """

    def __init__(self, model: EarlyExitTagger, dense_above: float = 0.9, refill_tokens: int = 384, layers=None,
                 single=None, kv_real_below: float = 1.0):
        self.model = model
        self.layers = layers  # None: torch computes the steps; else a backend (earlytag.engine.backends)
        # what climbs a one-sentence batch in one call where it can (OnnxLayers.climb): the layer backend, or one
        # of its own (backend "auto": torch for batches, ONNX Runtime for single sentences); None: the layer loop
        self.single = layers if single is None else single
        first = next(model.encoder.parameters())
        half = first.device.type == "cpu" and first.dtype in (torch.bfloat16, torch.float16)
        # bf16/fp16 GEMMs on a CPU are prepared per shape: pad their rows to a few sizes (see _FusedLayer). The
        # onednn backend's prepacked products pad the packed steps' rows only (new counts at almost every step): a
        # dense step's b·T rows repeat from layer to layer, and padding them only slowed it, warm and on a first
        # pass (scripts/onednn_bf16_ab.py)
        self.bucket = half
        self.bucket_dense = half and not isinstance(model.adapter.layers[0].query, OneDnnLinear)
        # attention of the layer steps: torch's fused kernel, except in bf16/fp16 on a CPU, where three plain
        # operators ran the engine faster at full depth and with token exit (scripts/attention_ab.py; not in fp32)
        self.attend = attend_unfused if half else attend
        # run a layer densely when this share of the group's positions is active (packed steps keep the padding out
        # of every product but the attention; 0.9 was no slower than 0.8 or 1.0 on either model and faster on MPNet:
        # scripts/kv_rows_ab.py --knob dense_above)
        self.dense_above = dense_above
        self.refill_tokens = refill_tokens
        # a packed step computes keys/values of the real tokens only, not of every (b, T) position, when real tokens
        # are less than this share of the positions (sentences of different lengths, merged groups): 1.0, whenever
        # the group has padding (the gather and scatter cost less than the padding's rows in the K/V product:
        # scripts/kv_rows_ab.py); 0, never
        self.kv_real_below = kv_real_below
        self._fused: list[_FusedLayer | None] = [None] * model.num_layers

    @property
    def adapter(self):
        """The model's adapter, read each time: slimming and int8 give the model new layer modules."""
        return self.model.adapter

    def _layer(self, i: int) -> _FusedLayer:
        fused = self._fused[i]
        if fused is None or fused.parts is not self.adapter.layers[i] or fused.stale():
            fused = self._fused[i] = _FusedLayer(self.adapter.layers[i], self.bucket, self.bucket_dense)
        return fused

    @torch.inference_mode()
    def run(self, batch: Batch, cfg: ExitConfig, trace: bool = False) -> EngineOutput:
        """Tag one batch. ``trace=True`` also returns the uncertainty the policy saw after each layer."""
        return self._run([batch], cfg, refill=False, trace=trace)[0]

    @torch.inference_mode()
    def run_many(self, batches: list[Batch], cfg: ExitConfig, refill: bool = True) -> list[EngineOutput]:
        """Tag several batches; with ``refill`` thin later layers wait for the next batch's survivors."""
        return self._run(batches, cfg, refill=refill and cfg.rule.refill)

    def _run(self, batches: list[Batch], cfg: ExitConfig, refill: bool, trace: bool = False) -> list[EngineOutput]:
        policy = ExitPolicy(cfg, self.model.num_layers)
        if self.model.head.structured and policy.rescore and "halted" in policy.rule.settings:
            raise ConfigError("exit.halted", "a CRF head keeps each halted word's emission: use halted=frozen")
        if self.layers is not None and cfg.kv != "keep":
            raise ConfigError("exit.kv", "the onnxruntime backend runs kv=keep; use --backend torch for kv=drop")
        outs = [_Outputs(b, i, self.model.num_layers) for i, b in enumerate(batches)]
        traces = ([torch.full((b.word_pos.shape[0], self.model.num_layers, b.word_pos.shape[1]), float("nan"),
                              device=b.input_ids.device) for b in batches] if trace else None)
        parked: dict[int, _Group] = {}  # layer -> sentences waiting there for company
        for i, batch in enumerate(batches):
            if traces is None and self.single is not None and self.single.climbs(policy, batch):
                self._whole_climb(batch, policy, outs[i])  # one sentence: one graph call, no host loop
                continue
            outs[i].allocate()
            self._climb(self._start(batch, i, policy), policy, cfg, outs, traces, parked if refill else None)
        while parked:  # no more batches: the waiting groups finish, lowest layer first (merging on the way up)
            group = parked.pop(min(parked))
            self._climb(group, policy, cfg, outs, traces, parked, final=True)
        return [self._finish(o, cfg, policy, None if traces is None else traces[i]) for i, o in enumerate(outs)]

    def _whole_climb(self, batch: Batch, policy: ExitPolicy, out: _Outputs) -> None:
        """A one-sentence batch through the backend's whole-climb graph (``OnnxLayers.climb``)."""
        out.pred, out.score, out.exit, out.counts = self.single.climb(batch, policy)  # (1, W) each, counts

    def _start(self, batch: Batch, index: int, policy: ExitPolicy) -> _Group:
        big_b, w = batch.word_pos.shape
        dev = batch.input_ids.device
        origin = torch.stack([torch.full((big_b,), index, dtype=torch.long, device=dev),
                              torch.arange(big_b, device=dev)], 1)  # (B, 2)
        return _Group(0, policy.init_state(batch.word_mask), {index}, origin=origin, h=self.model.embed(batch.input_ids),
                      tok_mask=batch.attention_mask.bool(), token_word=batch.token_word, word_pos=batch.word_pos,
                      word_mask=batch.word_mask, active_w=batch.word_mask.clone(),
                      unc=torch.zeros((big_b, w), device=dev), pred=torch.zeros((big_b, w), dtype=torch.long, device=dev),
                      score=torch.zeros((big_b, w), device=dev), exit=torch.full((big_b, w), -1, dtype=torch.long, device=dev),
                      # a structured (CRF) head keeps every word's current emission (b, W, C); softmax: nothing
                      emit=torch.zeros((big_b, w, self.model.config.num_labels if self.model.head.structured else 0),
                                       device=dev))

    def _climb(self, g: _Group, policy: ExitPolicy, cfg: ExitConfig, outs: list[_Outputs], traces,
               parked: dict[int, _Group] | None, final: bool = False) -> None:
        """Run ``g`` up the layers until its sentences are done or it parks to wait for company."""
        while True:
            alive = g.active_w.any(1)  # (b,)
            if not bool(alive.all()):  # finished sentences leave the group
                self._emit(g, (~alive).nonzero().squeeze(1), outs)
                keep = alive.nonzero().squeeze(1)
                if keep.numel() == 0:
                    return
                g.keep(keep)
            if g.layer >= policy.num_layers:
                return
            if parked is not None:
                if g.layer in parked:
                    g = _Group.merge(parked.pop(g.layer), g)
                elif not final and g.layer > 0 and int(g.active_tokens().sum()) < self.refill_tokens:
                    parked[g.layer] = g
                    return
            self._step(g, policy, cfg, outs, traces)

    def _step(self, g: _Group, policy: ExitPolicy, cfg: ExitConfig, outs: list[_Outputs], traces) -> None:
        """One layer for group ``g``: the layer, the exit head, the policy."""
        layer = g.layer
        d = self.adapter.hidden_size
        active_t = g.active_tokens()  # (b, T)
        total_act = int(active_t.sum())
        fused = self._layer(layer) if self.layers is None else layer
        dense = total_act >= self.dense_above * g.h.shape[0] * g.h.shape[1]
        parts = self.adapter.layers[layer]
        if dense:
            g.h = self._dense_step(fused, parts, g, active_t, total_act, cfg.kv)
        else:
            g.h = self._packed_step(fused, parts, g, active_t, active_t.sum(1), cfg.kv)
        counted = outs[min(g.batches)].stats  # a step of merged batches is one step: counted once
        counted.dense_layers += dense
        counted.packed_layers += not dense
        g.layer += 1
        if not policy.needs_head(layer):
            return
        # exit head on the first sub-word of the active words, or (rescore) of every word of the live sentences
        rows = g.words_flat if policy.rescore else g.active_w.view(-1).nonzero().squeeze(1)  # (N_w,) flat words
        hw = g.h.view(-1, d).index_select(0, g.word_flat.index_select(0, rows))  # (N_w, d)
        if self.model.head.structured:
            self._structured_scores(g, layer, rows, hw, cfg.criterion)
        else:
            if self.layers is not None:
                score, pred, unc = self.layers.head(layer, hw, cfg.criterion)
            else:
                score, pred, unc = self._head(layer, hw, cfg.criterion)
            self._word_scores(g, rows, score, pred, unc, policy.rescore)
        if traces is not None:  # tests only: a loop over rows is fine here
            for r, (i, row) in enumerate(g.origin.tolist()):
                traces[i][row, layer] = g.unc[r, : traces[i].shape[2]]
        halt = policy.halt(layer, g.unc, g.pred, g.active_w, g.word_mask, g.state)  # (b, W)
        g.exit.masked_fill_(halt, layer)
        g.active_w = g.active_w & ~halt
        g.active_t = None

    def _head(self, layer: int, hw: torch.Tensor, criterion: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Layer ``layer``'s exit head on the words' rows ``hw (N_w, d)`` -> score, label, uncertainty ``(N_w,)``
        float32 each. The logits are written labels first, ``(C, N_w)``, for :func:`label_scores`."""
        head = self.model.heads[layer].linear  # float32, whatever the encoder's precision
        cols = torch.addmm(head.bias[:, None], head.weight, hw.to(head.weight.dtype).t())  # (C, N_w)
        return label_scores(cols, criterion)

    @staticmethod
    def _word_scores(g: _Group, rows: torch.Tensor, score: torch.Tensor, pred: torch.Tensor, unc: torch.Tensor,
                     rescore: bool) -> None:
        """Store an independent head's scores of the flat words ``rows``."""
        g.unc.view(-1).index_copy_(0, rows, unc)
        if rescore:  # halted words keep the prediction they halted with
            still = g.active_w.view(-1).index_select(0, rows)
            pred = torch.where(still, pred, g.pred.view(-1).index_select(0, rows))
            score = torch.where(still, score, g.score.view(-1).index_select(0, rows))
        g.pred.view(-1).index_copy_(0, rows, pred)
        g.score.view(-1).index_copy_(0, rows, score)

    def _structured_scores(self, g: _Group, layer: int, rows: torch.Tensor, hw: torch.Tensor, criterion: str) -> None:
        """A CRF head: the active words' new emissions join the halted words' kept ones, and the layer's
        marginals over whole sentences give the active words' uncertainty (halted words keep theirs)."""
        linear = self.model.heads[layer].linear
        c = g.emit.shape[-1]
        g.emit.view(-1, c).index_copy_(0, rows, linear(hw.to(linear.weight.dtype)).float())  # (N_w, C) rows
        score, pred, unc = self.model.head.layer_scores(layer, g.emit, g.word_mask, criterion)  # (b, W) each
        g.unc = torch.where(g.active_w, unc, g.unc)
        g.pred = torch.where(g.active_w, pred, g.pred)
        g.score = torch.where(g.active_w, score, g.score)

    def _emit(self, g: _Group, idx: torch.Tensor, outs: list[_Outputs]) -> None:
        """Copy the finished rows ``idx`` of ``g`` into the outputs of their input batches."""
        origin = g.origin.index_select(0, idx)
        if self.model.head.structured:  # the labels of a CRF come from whole sentences, decoded once they are done
            pred, score = self.model.head.decode(g.emit.index_select(0, idx), g.word_mask.index_select(0, idx),
                                                 g.exit.index_select(0, idx))
            g.pred.index_copy_(0, idx, pred)
            g.score.index_copy_(0, idx, score)
        for i in g.batches:
            sel = idx if len(g.batches) == 1 else idx[origin[:, 0] == i]
            rows = g.origin.index_select(0, sel)[:, 1]
            o = outs[i]
            w = o.pred.shape[1]
            o.pred.index_copy_(0, rows, g.pred.index_select(0, sel)[:, :w])
            o.score.index_copy_(0, rows, g.score.index_select(0, sel)[:, :w])
            o.exit.index_copy_(0, rows, g.exit.index_select(0, sel)[:, :w])

    def _finish(self, o: _Outputs, cfg: ExitConfig, policy: ExitPolicy, trace) -> EngineOutput:
        """Bookkeeping, once per input batch, from the exit layers alone (:class:`ExitPlan`): nothing is recorded
        during the climb."""
        if o.counts is not None:  # the whole climb counted itself in its graph
            return self._counted(o)
        a, c = self.adapter, self.model.config.num_labels
        batch, stats = o.batch, o.stats
        plan = ExitPlan(o.exit, batch.word_mask, batch.token_word, batch.attention_mask.bool(), policy.num_layers,
                        cfg.kv, policy.rescore, [policy.needs_head(i) for i in range(policy.num_layers)])
        flops = plan.flops(a.hidden_size, a.attn_sizes, a.ffn_sizes, c)  # (B,)
        flops_full = plan.flops_full(a.hidden_size, a.attn_sizes, a.ffn_sizes, c)  # (B,)
        stats.words, stats.tokens = int(plan.words.sum()), int(plan.tokens.sum())
        stats.active_tokens = _pad(plan.active_counts.sum(0).tolist(), stats.num_layers)
        stats.words_exited = _pad(plan.words_exited.tolist(), stats.num_layers)
        stats.exit_layer_sum = plan.exit_layer_sum
        stats.flops = float(flops.sum())
        stats.flops_full = float(flops_full.sum())
        return EngineOutput(o.pred, o.score, o.exit, stats, torch.from_numpy(flops), torch.from_numpy(flops_full),
                            trace, plan)

    @staticmethod
    def _counted(o: _Outputs) -> EngineOutput:
        """A one-sentence batch's output from the statistics its whole-climb graph returned (no :class:`ExitPlan`)."""
        counts = o.counts.tolist()  # flops, flops_full, Σ exit layers, tokens per layer, words exited per layer
        stats, layers = o.stats, o.stats.num_layers
        depth = (len(counts) - 3) // 2
        stats.flops, stats.flops_full, stats.exit_layer_sum = counts[:3]
        stats.active_tokens = _pad([int(x) for x in counts[3:3 + depth]], layers)
        stats.words_exited = _pad([int(x) for x in counts[3 + depth:]], layers)
        stats.words, stats.tokens = o.pred.shape[1], o.batch.input_ids.shape[1]
        stats.packed_layers = sum(x > 0 for x in stats.active_tokens)
        flops = torch.from_numpy(o.counts)
        return EngineOutput(o.pred, o.score, o.exit, stats, flops[0:1], flops[1:2])

    # ------------------------------------------------------------------ layer steps

    def _position_bias(self, parts: LayerParts, t: int, device) -> torch.Tensor | None:
        """``(h, T, T)`` the encoder's position bias for this layer's heads (a slim layer keeps some), or None."""
        pos = self.adapter.position_bias(t, device)
        if pos is not None and parts.head_index is not None:
            pos = pos.index_select(0, parts.head_index.to(pos.device))
        return pos

    def _dense_step(self, fl: _FusedLayer | int, parts: LayerParts, s: _Group, active_t: torch.Tensor, total_act: int,
                    kv: str) -> torch.Tensor:
        h = s.h
        da = parts.attn_size  # Q/K/V width: d, or fewer heads' in a slim layer
        if self.layers is None:
            q, k, v = fl.qkv(h, dense=True).split(da, -1)  # (b, T, da) each
        all_active = total_act == s.total_tokens
        if kv == "keep" or all_active:
            bias = s.pad_bias
        else:
            bias = key_bias(active_t, h.dtype)
        pos = self._position_bias(parts, h.shape[1], h.device)  # (h, T, T) or None
        if pos is not None:
            bias = pos[None] if bias is None else bias + pos[None]
        if self.layers is not None:
            out = self.layers.dense(fl, h, bias)
        else:
            out = fl.finish(self.attend(q, k, v, bias, parts.num_heads), h, dense=True)  # (b, T, d)
        if not all_active:  # halted tokens keep their state
            out = torch.where(active_t.unsqueeze(-1), out, h)
        return out

    def _keys_values(self, fl: _FusedLayer, s: _Group, da: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(b, T, da)`` keys and values of every token of the group's sentences; where real tokens are less than
        ``kv_real_below`` of the ``(b, T)`` positions (by default: wherever the group has padding), computed on the
        real tokens' rows only and scattered back (padding keys: zero, masked by the group's key bias)."""
        h = s.h
        b, t, d = h.shape
        if s.total_tokens >= self.kv_real_below * b * t:
            return fl.kv(h, dense=True).split(da, -1)
        if s.real_rows is None:
            s.real_rows = s.tok_mask.reshape(-1).nonzero().squeeze(1)  # (N_real,) (the mask may be a column slice)
        kv = fl.kv(h.view(-1, d).index_select(0, s.real_rows))  # (N_real, 2·da)
        full = kv.new_zeros(b * t, kv.shape[1]).index_copy_(0, s.real_rows, kv)  # (b·T, 2·da)
        return full.view(b, t, -1).split(da, -1)

    def _packed_step(self, fl: _FusedLayer | int, parts: LayerParts, s: _Group, active_t: torch.Tensor,
                     n_act: torch.Tensor, kv: str) -> torch.Tensor:
        h = s.h
        b, t, d = h.shape
        heads, da = parts.num_heads, parts.attn_size
        pos = self._position_bias(parts, t, h.device)  # (h, T, T) or None
        flat = active_t.view(-1).nonzero().squeeze(1)  # (N_a,) index into the (b*T) rows
        x = h.view(-1, d).index_select(0, flat)  # (N_a, d)
        if b == 1:  # one sentence: no padding to manage
            if self.layers is not None:
                slot = torch.arange(flat.shape[0], device=h.device)
                bias = None if pos is None else pos[:, flat][None]  # (1, h, N_a, T)
                h.view(-1, d).index_copy_(0, flat, self.layers.packed(fl, x, h, slot, flat.shape[0], bias))
                return h
            if kv == "keep":
                q = fl.q(x)
                k, v = fl.kv(h[0]).split(da, -1)  # (T, da): halted tokens are keys too
                bias = None if pos is None else pos[:, flat][None]  # (1, h, N_a, T)
            else:
                q, k, v = fl.qkv(x).split(da, -1)  # (N_a, da)
                bias = None if pos is None else pos[:, flat][:, :, flat][None]  # (1, h, N_a, N_a)
            ctx = self.attend(q[None], k[None], v[None], bias, heads)[0]  # (N_a, d)
            y = fl.finish(ctx, x)
            h.view(-1, d).index_copy_(0, flat, y)  # in place: the group owns h, K/V are already computed
            return h

        ta = int(n_act.max())
        bi, ti = flat // t, flat % t
        slot = bi * ta + (active_t.cumsum(1) - 1).view(-1).index_select(0, flat)  # row in the (b*Ta) padding
        query_pos = None
        if pos is not None:
            query_pos = torch.zeros(b * ta, dtype=torch.long, device=h.device).index_copy_(0, slot, ti).view(b, ta)

        def pad(rows: torch.Tensor) -> torch.Tensor:  # (N_a, d) -> (b, Ta, d)
            return rows.new_zeros(b * ta, rows.shape[-1]).index_copy_(0, slot, rows).view(b, ta, -1)

        if kv == "keep":
            bias = s.pad_bias  # (b, 1, 1, T)
            if pos is not None:
                pb = pos[:, query_pos].permute(1, 0, 2, 3)  # (b, h, Ta, T)
                bias = pb if bias is None else bias + pb
            if self.layers is not None:
                h.view(-1, d).index_copy_(0, flat, self.layers.packed(fl, x, h, slot, ta, bias))
                return h
            q = fl.q(x)  # (N_a, d)
            k, v = self._keys_values(fl, s, da)  # (b, T, da) each: halted tokens are keys too
        else:
            q, k, v = fl.qkv(x).split(da, -1)  # (N_a, da): only active tokens are keys
            k, v = pad(k), pad(v)
            bias = key_bias(torch.arange(ta, device=h.device)[None, :] < n_act[:, None], h.dtype)  # (b, 1, 1, Ta)
            if pos is not None:
                pb = pos[:, query_pos]  # (h, b, Ta, T)
                pb = pb.gather(3, query_pos[None, :, None, :].expand(pb.shape[0], -1, ta, -1))  # (h, b, Ta, Ta)
                bias = bias + pb.permute(1, 0, 2, 3)
        ctx = self.attend(pad(q), k, v, bias, heads)  # (b, Ta, da)
        y = fl.finish(ctx.reshape(-1, da).index_select(0, slot), x)  # (N_a, d)
        h.view(-1, d).index_copy_(0, flat, y)  # in place: the group owns h, K/V are already computed
        return h
