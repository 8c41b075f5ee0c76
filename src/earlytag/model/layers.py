"""The arithmetic of one encoder layer, split where early exit needs to split it.

A post-LayerNorm transformer layer is ``attention -> output projection + residual + LN -> FFN + residual
+ LN``. Every function here works on whatever rows it is given: a dense ``(B, T, d)`` batch, or the packed
``(N_active, d)`` rows of the token-exit engine. Weights are read from :class:`LayerParts`, i.e. from the
installed transformers modules.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .adapters import EncoderAdapter, LayerParts


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``(B, T, d) -> (B, h, T, d/h)``"""
    b, t, d = x.shape
    return x.view(b, t, num_heads, d // num_heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``(B, h, T, d/h) -> (B, T, d)``"""
    b, h, t, dh = x.shape
    return x.transpose(1, 2).reshape(b, t, h * dh)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None, num_heads: int,
           dropout_p: float = 0.0) -> torch.Tensor:
    """Scaled dot-product attention. ``q (B, Tq, d)``, ``k, v (B, Tk, d)``, ``bias`` additive and
    broadcastable to ``(B, h, Tq, Tk)``; returns ``(B, Tq, d)``."""
    out = F.scaled_dot_product_attention(
        split_heads(q, num_heads), split_heads(k, num_heads), split_heads(v, num_heads),
        attn_mask=bias, dropout_p=dropout_p,
    )  # (B, h, Tq, d/h)
    return merge_heads(out)


def attend_unfused(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
                   num_heads: int) -> torch.Tensor:
    """:func:`attend` as three plain operators over ``(B·h)`` rows: ``baddbmm`` (the scores with the bias added in
    the product) -> ``softmax`` -> ``bmm``. For inference (no dropout). On a CPU in bf16/fp16 torch's fused attention
    runs slower than these at the engine's shapes (scripts/attention_ab.py); in fp32 it does not."""
    b, tq, d = q.shape
    tk, dh = k.shape[1], d // num_heads
    qh = split_heads(q, num_heads).reshape(b * num_heads, tq, dh)  # (B·h, Tq, dh)
    kh = split_heads(k, num_heads).reshape(b * num_heads, tk, dh)  # (B·h, Tk, dh)
    vh = split_heads(v, num_heads).reshape(b * num_heads, tk, dh)
    if bias is None:
        scores = torch.bmm(qh, kh.transpose(1, 2)).mul_(dh ** -0.5)  # (B·h, Tq, Tk)
    else:
        # baddbmm's input only has to broadcast to the scores: a key mask (B, 1, 1, Tk) becomes (B·h, 1, Tk), not a
        # copy of the scores' size (less memory; 1.01x / 1.02x faster in bf16 at full depth / with token exit:
        # scripts/attention_ab.py)
        bq = bias.shape[2]  # 1 (a key mask) or Tq (a position bias)
        rows = bias.to(q.dtype).expand(b, num_heads, bq, tk).reshape(b * num_heads, bq, tk)  # (B·h, 1|Tq, Tk)
        scores = torch.baddbmm(rows, qh, kh.transpose(1, 2), alpha=dh ** -0.5)  # (B·h, Tq, Tk)
    out = torch.bmm(softmax_(scores), vh)  # (B·h, Tq, dh)
    return out.view(b, num_heads, tq, dh).transpose(1, 2).reshape(b, tq, d)


SOFTMAX_CHUNK = 1 << 18  # elements of a float32 piece of softmax_: 1 MiB, a piece that stays in the CPU's cache


def softmax_(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension of ``scores (N, Tq, Tk)``, written into ``scores`` where it is bf16/fp16.
    torch's CPU softmax of half-precision input is slower than taking it in float32 and rounding back (the engine
    ran 1.03x / 1.06x faster at full depth / with token exit: scripts/attention_ab.py), but a float32 copy of a
    long batch's scores is large enough to come as fresh pages from the kernel at every call: the rows go through
    float32 in pieces of at most SOFTMAX_CHUNK."""
    if scores.dtype == torch.float32:
        return scores.softmax(-1)
    per = max(1, SOFTMAX_CHUNK // max(1, scores.shape[1] * scores.shape[2]))
    for piece in scores.split(per):
        piece.copy_(piece.softmax(-1, dtype=torch.float32))
    return scores


def finish(parts: LayerParts, ctx: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """Output projection, residual + LayerNorm, FFN, residual + LayerNorm. ``(..., d) -> (..., d)``

    Dropout runs only in training mode (in inference the calls are skipped: this is the hot path)."""
    out = parts.attn_out(ctx)
    if parts.attn_out.training:
        out = parts.attn_out_dropout(out)
    x = parts.attn_norm(out + residual)
    out = parts.ffn_out(parts.act(parts.ffn_in(x)))
    if parts.ffn_out.training:
        out = parts.ffn_dropout(out)
    return parts.ffn_norm(out + x)


def dense_layer(parts: LayerParts, h: torch.Tensor, bias: torch.Tensor | None, num_heads: int) -> torch.Tensor:
    """One full layer over every row of ``h (B, T, d)``; dropout follows the modules' training mode."""
    dropout_p = parts.attn_dropout if parts.attn_out.training else 0.0
    ctx = attend(parts.query(h), parts.key(h), parts.value(h), bias, num_heads, dropout_p)  # (B, T, d)
    return finish(parts, ctx, h)


def key_bias(key_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``(B, Tk)`` bool (True = attend) -> additive ``(B, 1, 1, Tk)`` bias, 0 or the dtype's minimum."""
    bias = torch.zeros(key_mask.shape, dtype=dtype, device=key_mask.device)
    bias.masked_fill_(~key_mask, torch.finfo(dtype).min)
    return bias[:, None, None, :]


def attention_bias(adapter: EncoderAdapter, key_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Dense additive bias ``(B, 1|h, T, T)``: masked keys plus the encoder's position bias, if any."""
    bias = key_bias(key_mask, dtype)  # (B, 1, 1, T)
    pos = adapter.position_bias(key_mask.shape[1], key_mask.device)
    return bias if pos is None else bias + pos[None].to(dtype)  # (B, h, T, T)


def heads_of(bias: torch.Tensor | None, parts: LayerParts) -> torch.Tensor | None:
    """A per-head bias ``(B, h, Tq, Tk)`` cut to the heads a slim layer kept (a shared one stays as it is)."""
    if bias is None or parts.head_index is None or bias.shape[1] == 1:
        return bias
    return bias.index_select(1, parts.head_index.to(bias.device))
