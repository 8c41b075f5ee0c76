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
or words, and there is no per-token ``.item()``: a layer costs a handful of host syncs for its sizes.
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
from .policies import ExitConfig, ExitPolicy, uncertainty


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

        # outputs for the whole batch, filled as words exit
        out_pred = torch.zeros((big_b, w), dtype=torch.long, device=dev)
        out_score = torch.zeros((big_b, w), device=dev)
        out_exit = torch.full((big_b, w), -1, dtype=torch.long, device=dev)
        trace_t = torch.full((big_b, num_layers, w), float("nan"), device=dev) if trace else None

        # working state of live sentences
        rows = torch.arange(big_b, device=dev)  # batch row of each working row
        tok_mask = batch.attention_mask.bool()
        token_word, word_pos, word_mask = batch.token_word, batch.word_pos, batch.word_mask
        active_w = word_mask.clone()
        unc = torch.zeros((big_b, w), device=dev)
        cur_pred = torch.zeros((big_b, w), dtype=torch.long, device=dev)
        cur_score = torch.zeros((big_b, w), device=dev)
        state = policy.init_state(word_mask)
        h = model.embed(batch.input_ids)  # (B, T, d)

        n_tokens = tok_mask.sum(1)  # (B,)
        n_words = word_mask.sum(1)  # (B,)
        stats = ExitStats(num_layers, sentences=big_b, words=int(n_words.sum()), tokens=int(n_tokens.sum()))
        flops_full = num_layers * layer_flops(n_tokens, n_tokens, d, f) + head_flops(n_words, d, c)  # (B,)
        flops = torch.zeros(big_b, dtype=torch.float64, device=dev)  # (B,)
        exit_sum = torch.zeros((), dtype=torch.float64)

        for layer in range(policy.num_layers):
            alive = active_w.any(1)  # (b,)
            if not bool(alive.all()):  # finished sentences leave the batch
                keep = alive.nonzero().squeeze(1)
                if keep.numel() == 0:
                    break
                rows, h, tok_mask, token_word, word_pos, word_mask, active_w, unc, cur_pred, cur_score = (
                    t.index_select(0, keep) for t in
                    (rows, h, tok_mask, token_word, word_pos, word_mask, active_w, unc, cur_pred, cur_score))
                state = {k: v.index_select(0, keep) for k, v in state.items()}
                t_live = int(tok_mask.sum(1).max())
                if t_live < h.shape[1]:
                    h, tok_mask, token_word = h[:, :t_live].contiguous(), tok_mask[:, :t_live], token_word[:, :t_live]

            # sub-words follow their word; special tokens stay active while their sentence is live
            word_active_t = active_w.gather(1, token_word.clamp(min=0))  # (b, T)
            active_t = tok_mask & ((token_word < 0) | word_active_t)
            n_act = active_t.sum(1)  # (b,)
            total_act = int(n_act.sum())
            stats.active_tokens[layer] += total_act
            kv_rows = tok_mask.sum(1) if cfg.kv == "keep" else n_act
            flops.index_add_(0, rows, layer_flops(kv_rows, n_act, d, f, cfg.kv))

            fused = self._layer(layer)
            if total_act >= self.dense_above * h.shape[0] * h.shape[1]:
                stats.dense_layers += 1
                h = self._dense_step(fused, h, tok_mask, active_t, total_act, cfg.kv)
            else:
                stats.packed_layers += 1
                h = self._packed_step(fused, h, tok_mask, active_t, n_act, cfg.kv)

            if not policy.needs_head(layer):
                continue
            # exit head on the first sub-word of every active word (packed)
            b_live, t_len = tok_mask.shape
            widx = active_w.view(-1).nonzero().squeeze(1)  # (N_w,) flat word index
            tok = word_pos.view(-1).index_select(0, widx) + (widx // w) * t_len
            head = model.heads[layer].linear
            probs = F.linear(h.view(-1, d).index_select(0, tok), head.weight, head.bias).softmax(-1)  # (N_w, C)
            flops.index_add_(0, rows, head_flops(active_w.sum(1), d, c))
            score, pred = probs.max(-1)
            unc.view(-1).index_copy_(0, widx, uncertainty(probs, cfg.criterion))
            cur_pred.view(-1).index_copy_(0, widx, pred)
            cur_score.view(-1).index_copy_(0, widx, score)
            if trace_t is not None:
                trace_t[:, layer].index_copy_(0, rows, unc)

            halt = policy.halt(layer, unc, cur_pred, active_w, word_mask, state)  # (b, W)
            hidx = halt.view(-1).nonzero().squeeze(1)
            if hidx.numel():
                hb, hw = rows.index_select(0, hidx // w), hidx % w
                out_pred[hb, hw] = cur_pred.view(-1).index_select(0, hidx)
                out_score[hb, hw] = cur_score.view(-1).index_select(0, hidx)
                out_exit[hb, hw] = layer
                stats.words_exited[layer] += hidx.numel()
                exit_sum += hidx.numel() * (layer + 1)
                active_w = active_w & ~halt

        stats.flops = float(flops.sum())
        stats.flops_full = float(flops_full.sum())
        stats.exit_layer_sum = float(exit_sum)
        return EngineOutput(out_pred, out_score, out_exit, stats, flops, flops_full, trace_t)

    # ------------------------------------------------------------------ layer steps

    def _bias(self, key_mask: torch.Tensor, dtype: torch.dtype, query_pos: torch.Tensor | None = None,
              key_pos: torch.Tensor | None = None, full_len: int | None = None) -> torch.Tensor | None:
        """Additive attention bias: masked keys, plus the encoder's position bias (MPNet) where it has one.

        ``query_pos (b, Tq)`` / ``key_pos (b, Tk)`` are the sequence positions of packed queries/keys.
        """
        pos = self.adapter.position_bias(full_len or key_mask.shape[1], key_mask.device)
        bias = None if bool(key_mask.all()) else key_bias(key_mask, dtype)  # (b, 1, 1, Tk)
        if pos is None:
            return bias
        if query_pos is not None:
            pos = pos[:, query_pos]  # (h, b, Tq, T)
            pos = pos.gather(3, key_pos[None, :, None, :].expand(pos.shape[0], -1, pos.shape[2], -1)) \
                if key_pos is not None else pos
            pos = pos.permute(1, 0, 2, 3)  # (b, h, Tq, Tk)
        else:
            pos = pos[None]  # (1, h, T, T)
        return pos if bias is None else bias + pos

    def _dense_step(self, fl: _FusedLayer, h, tok_mask, active_t, total_act: int, kv: str) -> torch.Tensor:
        d = h.shape[-1]
        q, k, v = F.linear(h, fl.wqkv, fl.bqkv).split(d, -1)  # (b, T, d) each
        key_mask = tok_mask if kv == "keep" else active_t
        ctx = attend(q, k, v, self._bias(key_mask, h.dtype), self.adapter.num_heads)  # (b, T, d)
        out = finish(fl.parts, ctx, h)
        if total_act < int(tok_mask.sum()):  # halted tokens keep their state
            out = torch.where(active_t.unsqueeze(-1), out, h)
        return out

    def _packed_step(self, fl: _FusedLayer, h, tok_mask, active_t, n_act, kv: str) -> torch.Tensor:
        b, t, d = h.shape
        flat = active_t.view(-1).nonzero().squeeze(1)  # (N_a,) index into the (b*T) rows
        x = h.view(-1, d).index_select(0, flat)  # (N_a, d)
        ta = int(n_act.max())
        bi, ti = flat // t, flat % t
        slot = bi * ta + (active_t.cumsum(1) - 1).view(-1).index_select(0, flat)  # row in the (b*Ta) padding
        query_pos = None
        if self.adapter.has_position_bias:
            query_pos = torch.zeros(b * ta, dtype=torch.long, device=h.device).index_copy_(0, slot, ti).view(b, ta)
        packed_mask = torch.arange(ta, device=h.device)[None, :] < n_act[:, None]  # (b, Ta)

        def pad(rows: torch.Tensor) -> torch.Tensor:  # (N_a, d) -> (b, Ta, d)
            return rows.new_zeros(b * ta, rows.shape[-1]).index_copy_(0, slot, rows).view(b, ta, -1)

        if kv == "keep":
            q = F.linear(x, fl.wq, fl.bq)  # (N_a, d)
            k, v = F.linear(h, fl.wkv, fl.bkv).split(d, -1)  # (b, T, d): halted tokens are keys too
            bias = self._bias(tok_mask, h.dtype, query_pos, None, t)
        else:
            q, k, v = F.linear(x, fl.wqkv, fl.bqkv).split(d, -1)  # (N_a, d): only active tokens are keys
            k, v = pad(k), pad(v)
            bias = self._bias(packed_mask, h.dtype, query_pos, query_pos, t)
        ctx = attend(pad(q), k, v, bias, self.adapter.num_heads)  # (b, Ta, d)
        y = finish(fl.parts, ctx.reshape(-1, d).index_select(0, slot), x)  # (N_a, d)
        return h.view(-1, d).index_copy(0, flat, y).view(b, t, d)
