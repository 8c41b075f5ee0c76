"""The early-exit loop: run the encoder layer by layer and let an :class:`ExitPolicy` stop words.

State of a batch (working rows = sentences still live; ``b`` of them, ``T`` sub-words, ``W`` words):

    h          (b, T, d)  hidden states; a halted token's row is simply not updated any more
    tok_mask   (b, T)     real sub-word tokens (not padding)
    active_w   (b, W)     words still climbing
    active_t   (b, T)     tokens computed at this layer: sub-words of active words + special tokens

One layer step, packed (the hot path; see docs/design.md):

    K, V = W_k·h, W_v·h                      every token of a live sentence is a key/value (kv=keep)
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

import torch
import torch.nn.functional as F

from ..data.batching import Batch
from ..model.adapters import LayerParts
from ..model.layers import attend, finish, key_bias
from ..model.tagger import EarlyExitTagger
from .flops import ExitStats, head_flops, layer_flops
from .policies import ExitConfig, ExitPolicy, head_scores


@dataclass
class EngineOutput:
    pred: torch.Tensor  # (B, W) label id each word exited with
    score: torch.Tensor  # (B, W) probability of that label
    exit_layer: torch.Tensor  # (B, W) 0-based layer each word exited at, -1 on padding
    stats: ExitStats
    flops: torch.Tensor  # (B,) FLOPs spent on each sentence
    flops_full: torch.Tensor  # (B,) FLOPs each sentence costs at full depth
    trace: torch.Tensor | None = None  # (B, L, W) uncertainty the policy saw after each layer (NaN: not live)


class _FusedLayer:
    """Inference copies of one layer's projections with Q/K/V fused, rebuilt when the weights change."""

    def __init__(self, parts: LayerParts):
        self.parts = parts
        self.version = self._version()
        q, k, v = parts.query, parts.key, parts.value
        with torch.no_grad():
            self.wq, self.bq = q.weight.detach(), q.bias.detach()
            self.wkv = torch.cat([k.weight, v.weight]).detach()
            self.bkv = torch.cat([k.bias, v.bias]).detach()
            self.wqkv = torch.cat([q.weight, k.weight, v.weight]).detach()
            self.bqkv = torch.cat([q.bias, k.bias, v.bias]).detach()

    def _version(self) -> tuple:
        p = self.parts
        return tuple((t.data_ptr(), t._version) for m in (p.query, p.key, p.value) for t in (m.weight, m.bias))

    def stale(self) -> bool:
        return self._version() != self.version


class _Rows:
    """The working state of the live sentences, compacted together when sentences finish."""

    names = ("rows", "h", "tok_mask", "token_word", "word_pos", "word_mask", "active_w", "unc", "pred", "score",
             "exit")

    def __init__(self, **tensors: torch.Tensor):
        self.__dict__.update(tensors)
        self.state: dict[str, torch.Tensor] = {}
        self._derive()

    def _derive(self) -> None:
        """Tensors that only change when the batch is compacted."""
        b, t = self.tok_mask.shape
        self.special = self.token_word < 0  # (b, T)
        self.token_word_c = self.token_word.clamp(min=0)
        self.word_flat = (self.word_pos + torch.arange(b, device=self.h.device)[:, None] * t).view(-1)  # (b*W,)
        self.n_tokens = self.tok_mask.sum(1)  # (b,)
        self.padded = not bool(self.tok_mask.all())
        self.pad_bias = key_bias(self.tok_mask, self.h.dtype) if self.padded else None  # (b, 1, 1, T)

    def keep(self, keep: torch.Tensor) -> None:
        for name in self.names:
            setattr(self, name, getattr(self, name).index_select(0, keep))
        self.state = {k: v.index_select(0, keep) for k, v in self.state.items()}
        t_live = int(self.tok_mask.sum(1).max())
        if t_live < self.h.shape[1]:  # drop padding columns no live sentence needs
            self.h = self.h[:, :t_live].contiguous()
            self.tok_mask, self.token_word = self.tok_mask[:, :t_live], self.token_word[:, :t_live]
        self._derive()


class Engine:
    """Early-exit inference over :class:`Batch` objects for one :class:`EarlyExitTagger`."""

    def __init__(self, model: EarlyExitTagger, dense_above: float = 0.8):
        self.model = model
        self.adapter = model.adapter
        self.dense_above = dense_above  # run a layer densely when this share of positions is active
        self._fused: list[_FusedLayer | None] = [None] * model.num_layers

    def _layer(self, i: int) -> _FusedLayer:
        fused = self._fused[i]
        if fused is None or fused.stale():
            fused = self._fused[i] = _FusedLayer(self.adapter.layers[i])
        return fused

    @torch.inference_mode()
    def run(self, batch: Batch, cfg: ExitConfig, trace: bool = False) -> EngineOutput:
        model = self.model
        num_layers = model.num_layers
        policy = ExitPolicy(cfg, num_layers)
        d, f, c = self.adapter.hidden_size, self.adapter.intermediate_size, model.config.num_labels
        big_b, w = batch.word_pos.shape
        dev = batch.input_ids.device

        # outputs for the whole batch, written when sentences leave the batch
        out_pred = torch.zeros((big_b, w), dtype=torch.long, device=dev)
        out_score = torch.zeros((big_b, w), device=dev)
        out_exit = torch.full((big_b, w), -1, dtype=torch.long, device=dev)
        trace_t = torch.full((big_b, num_layers, w), float("nan"), device=dev) if trace else None

        word_mask = batch.word_mask
        s = _Rows(rows=torch.arange(big_b, device=dev), h=model.embed(batch.input_ids),  # h: (B, T, d)
                  tok_mask=batch.attention_mask.bool(), token_word=batch.token_word, word_pos=batch.word_pos,
                  word_mask=word_mask, active_w=word_mask.clone(), unc=torch.zeros((big_b, w), device=dev),
                  pred=torch.zeros((big_b, w), dtype=torch.long, device=dev), score=torch.zeros((big_b, w), device=dev),
                  exit=torch.full((big_b, w), -1, dtype=torch.long, device=dev))
        s.state = policy.init_state(word_mask)
        stats = ExitStats(num_layers, sentences=big_b, words=int(word_mask.sum()), tokens=int(s.n_tokens.sum()))
        counts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []  # per layer, for FLOPs

        def flush(idx: torch.Tensor) -> None:  # working rows idx -> outputs
            rows = s.rows.index_select(0, idx)
            out_pred.index_copy_(0, rows, s.pred.index_select(0, idx))
            out_score.index_copy_(0, rows, s.score.index_select(0, idx))
            out_exit.index_copy_(0, rows, s.exit.index_select(0, idx))

        for layer in range(policy.num_layers):
            alive = s.active_w.any(1)  # (b,)
            if not bool(alive.all()):  # finished sentences leave the batch
                flush((~alive).nonzero().squeeze(1))
                keep = alive.nonzero().squeeze(1)
                if keep.numel() == 0:
                    break
                s.keep(keep)

            # sub-words follow their word; special tokens stay active while their sentence is live
            active_t = s.tok_mask & (s.special | s.active_w.gather(1, s.token_word_c))  # (b, T)
            n_act = active_t.sum(1)  # (b,)
            total_act = int(n_act.sum())
            stats.active_tokens[layer] += total_act

            fused = self._layer(layer)
            if total_act >= self.dense_above * s.h.shape[0] * s.h.shape[1]:
                stats.dense_layers += 1
                s.h = self._dense_step(fused, s, active_t, total_act, cfg.kv)
            else:
                stats.packed_layers += 1
                s.h = self._packed_step(fused, s, active_t, n_act, cfg.kv)

            words_before = s.active_w.sum(1)  # (b,) words whose head runs at this layer
            counts.append((s.rows, s.n_tokens if cfg.kv == "keep" else n_act, n_act,
                           words_before if policy.needs_head(layer) else torch.zeros_like(words_before)))
            if not policy.needs_head(layer):
                continue
            # exit head on the first sub-word of every active word (packed)
            widx = s.active_w.view(-1).nonzero().squeeze(1)  # (N_w,) flat word index
            head = model.heads[layer].linear
            hw = s.h.view(-1, d).index_select(0, s.word_flat.index_select(0, widx))  # (N_w, d)
            score, pred, unc = head_scores(F.linear(hw, head.weight, head.bias), cfg.criterion)
            s.unc.view(-1).index_copy_(0, widx, unc)
            s.pred.view(-1).index_copy_(0, widx, pred)
            s.score.view(-1).index_copy_(0, widx, score)
            if trace_t is not None:
                trace_t[:, layer].index_copy_(0, s.rows, s.unc)

            halt = policy.halt(layer, s.unc, s.pred, s.active_w, s.word_mask, s.state)  # (b, W)
            s.exit.masked_fill_(halt, layer)
            s.active_w = s.active_w & ~halt
        flush(torch.arange(s.rows.shape[0], device=dev))

        # bookkeeping, once per batch
        rows, kv_rows, act, words = (torch.cat(x) for x in zip(*counts))
        flops = torch.zeros(big_b, dtype=torch.float64, device=dev)
        flops.index_add_(0, rows, layer_flops(kv_rows, act, d, f, cfg.kv) + head_flops(words, d, c))
        n_tokens, n_words = batch.attention_mask.sum(1), word_mask.sum(1)
        flops_full = num_layers * layer_flops(n_tokens, n_tokens, d, f) + head_flops(n_words, d, c)
        exited = out_exit[word_mask]
        hist = torch.bincount(exited, minlength=num_layers)
        stats.words_exited = hist.tolist()
        stats.exit_layer_sum = float((exited + 1).sum())
        stats.flops = float(flops.sum())
        stats.flops_full = float(flops_full.sum())
        return EngineOutput(out_pred, out_score, out_exit, stats, flops, flops_full, trace_t)

    # ------------------------------------------------------------------ layer steps

    def _dense_step(self, fl: _FusedLayer, s: _Rows, active_t: torch.Tensor, total_act: int, kv: str) -> torch.Tensor:
        h = s.h
        d = h.shape[-1]
        q, k, v = F.linear(h, fl.wqkv, fl.bqkv).split(d, -1)  # (b, T, d) each
        all_active = total_act == int(s.n_tokens.sum())
        if kv == "keep" or all_active:
            bias = s.pad_bias
        else:
            bias = key_bias(active_t, h.dtype)
        pos = self.adapter.position_bias(h.shape[1], h.device)  # (h, T, T) or None
        if pos is not None:
            bias = pos[None] if bias is None else bias + pos[None]
        out = finish(fl.parts, attend(q, k, v, bias, self.adapter.num_heads), h)  # (b, T, d)
        if not all_active:  # halted tokens keep their state
            out = torch.where(active_t.unsqueeze(-1), out, h)
        return out

    def _packed_step(self, fl: _FusedLayer, s: _Rows, active_t: torch.Tensor, n_act: torch.Tensor,
                     kv: str) -> torch.Tensor:
        h = s.h
        b, t, d = h.shape
        heads = self.adapter.num_heads
        pos = self.adapter.position_bias(t, h.device)  # (h, T, T) or None
        flat = active_t.view(-1).nonzero().squeeze(1)  # (N_a,) index into the (b*T) rows
        x = h.view(-1, d).index_select(0, flat)  # (N_a, d)
        if b == 1:  # one sentence: no padding to manage
            if kv == "keep":
                q = F.linear(x, fl.wq, fl.bq)
                k, v = F.linear(h[0], fl.wkv, fl.bkv).split(d, -1)  # (T, d): halted tokens are keys too
                bias = None if pos is None else pos[:, flat][None]  # (1, h, N_a, T)
            else:
                q, k, v = F.linear(x, fl.wqkv, fl.bqkv).split(d, -1)  # (N_a, d)
                bias = None if pos is None else pos[:, flat][:, :, flat][None]  # (1, h, N_a, N_a)
            ctx = attend(q[None], k[None], v[None], bias, heads)[0]  # (N_a, d)
            y = finish(fl.parts, ctx, x)
            return h.view(-1, d).index_copy(0, flat, y).view(b, t, d)

        ta = int(n_act.max())
        bi, ti = flat // t, flat % t
        slot = bi * ta + (active_t.cumsum(1) - 1).view(-1).index_select(0, flat)  # row in the (b*Ta) padding
        query_pos = None
        if pos is not None:
            query_pos = torch.zeros(b * ta, dtype=torch.long, device=h.device).index_copy_(0, slot, ti).view(b, ta)

        def pad(rows: torch.Tensor) -> torch.Tensor:  # (N_a, d) -> (b, Ta, d)
            return rows.new_zeros(b * ta, rows.shape[-1]).index_copy_(0, slot, rows).view(b, ta, -1)

        if kv == "keep":
            q = F.linear(x, fl.wq, fl.bq)  # (N_a, d)
            k, v = F.linear(h, fl.wkv, fl.bkv).split(d, -1)  # (b, T, d): halted tokens are keys too
            bias = s.pad_bias  # (b, 1, 1, T)
            if pos is not None:
                pb = pos[:, query_pos].permute(1, 0, 2, 3)  # (b, h, Ta, T)
                bias = pb if bias is None else bias + pb
        else:
            q, k, v = F.linear(x, fl.wqkv, fl.bqkv).split(d, -1)  # (N_a, d): only active tokens are keys
            k, v = pad(k), pad(v)
            bias = key_bias(torch.arange(ta, device=h.device)[None, :] < n_act[:, None], h.dtype)  # (b, 1, 1, Ta)
            if pos is not None:
                pb = pos[:, query_pos]  # (h, b, Ta, T)
                pb = pb.gather(3, query_pos[None, :, None, :].expand(pb.shape[0], -1, ta, -1))  # (h, b, Ta, Ta)
                bias = bias + pb.permute(1, 0, 2, 3)
        ctx = attend(pad(q), k, v, bias, heads)  # (b, Ta, d)
        y = finish(fl.parts, ctx.reshape(-1, d).index_select(0, slot), x)  # (N_a, d)
        return h.view(-1, d).index_copy(0, flat, y).view(b, t, d)
