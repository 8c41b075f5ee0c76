"""Adapters: reach into an installed Hugging Face encoder without copying its modelling file.

The engine needs to run one layer at a time, on a subset of tokens, with the pieces of a layer called
separately (K/V of all live tokens, Q of the active ones, output projection and FFN of the active ones).
An adapter exposes exactly that for one encoder family:

- ``embed(input_ids)``: the encoder's own embedding module, ``(B, T) -> (B, T, d)``;
- ``layers``: one :class:`LayerParts` per encoder layer, pointing at the installed ``nn.Module`` objects
  (so trained weights, ``.train()``/``.eval()`` and dropout all behave as in transformers);
- ``position_bias(T)``: an additive attention bias shared by the layers (MPNet's relative position
  bias), or None.

``tests/test_adapters.py`` checks, for every family, that running the parts layer by layer equals the
installed model's own forward.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError


@dataclass
class LayerParts:
    """The modules of one post-LayerNorm transformer layer, by role."""

    query: nn.Linear
    key: nn.Linear
    value: nn.Linear
    attn_dropout: float  # dropout probability on the attention weights
    attn_out: nn.Linear
    attn_out_dropout: nn.Module
    attn_norm: nn.LayerNorm
    ffn_in: nn.Linear
    act: Callable[[torch.Tensor], torch.Tensor]
    ffn_out: nn.Linear
    ffn_dropout: nn.Module
    ffn_norm: nn.LayerNorm
    num_heads: int = 0  # attention heads of this layer (fewer than the config's in a slim model)
    head_index: torch.Tensor | None = None  # a slim layer's heads in the config's numbering (per-head biases)

    @property
    def attn_size(self) -> int:
        """Width of the layer's Q/K/V (heads × head size)."""
        return self.query.out_features

    @property
    def ffn_size(self) -> int:
        return self.ffn_in.out_features


class EncoderAdapter:
    """Base class; subclasses fill in :meth:`_layer_parts` (and :meth:`position_bias` if needed)."""

    model_types: tuple[str, ...] = ()
    has_position_bias = False

    def __init__(self, model: nn.Module):
        self.model = model
        cfg = model.config
        self.num_layers: int = cfg.num_hidden_layers
        self.hidden_size: int = cfg.hidden_size
        self.num_heads: int = cfg.num_attention_heads
        self.intermediate_size: int = cfg.intermediate_size
        self.layers: list[LayerParts] = []
        for layer in model.encoder.layer:
            parts = self._layer_parts(layer)
            attn = self.attention(layer)
            parts.num_heads = attn.num_attention_heads
            parts.head_index = getattr(attn, "earlytag_heads", None)  # set by earlytag.model.slim
            self.layers.append(parts)
        # (L,) Q/K/V and FFN widths of the layers, for the FLOPs count (a slim model's layers have their own)
        self.attn_sizes = torch.tensor([p.attn_size for p in self.layers], dtype=torch.float64)
        self.ffn_sizes = torch.tensor([p.ffn_size for p in self.layers], dtype=torch.float64)

    def attention(self, layer: nn.Module) -> nn.Module:
        """The module of ``layer`` that holds Q/K/V and the head count (earlytag.model.slim changes both)."""
        raise NotImplementedError

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embeddings(input_ids=input_ids)  # (B, T, d)

    def position_bias(self, length: int, device: torch.device | None = None) -> torch.Tensor | None:
        return None

    def traced_position_bias(self, h: torch.Tensor) -> torch.Tensor | None:
        """``(heads, T, T)`` position bias for hidden states ``h (1, T, d)``, computed from ``h``'s shape with tensor
        operations only (no cache keyed by a Python length): what an exported graph with a dynamic length needs."""
        return None

    def _layer_parts(self, layer: nn.Module) -> LayerParts:
        raise NotImplementedError


class BertAdapter(EncoderAdapter):
    """BERT and the encoders that share its layer layout: RoBERTa, XLM-R, CamemBERT, ELECTRA, MiniLM."""

    model_types = ("bert", "roberta", "xlm-roberta", "camembert", "electra")

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        h = self.model.embeddings(input_ids=input_ids)
        project = getattr(self.model, "embeddings_project", None)  # ELECTRA with embedding_size != hidden_size
        return project(h) if project is not None else h

    def attention(self, layer: nn.Module) -> nn.Module:
        return layer.attention.self

    def _layer_parts(self, layer: nn.Module) -> LayerParts:
        attn = layer.attention
        return LayerParts(
            query=attn.self.query,
            key=attn.self.key,
            value=attn.self.value,
            attn_dropout=attn.self.dropout.p,
            attn_out=attn.output.dense,
            attn_out_dropout=attn.output.dropout,
            attn_norm=attn.output.LayerNorm,
            ffn_in=layer.intermediate.dense,
            act=layer.intermediate.intermediate_act_fn,
            ffn_out=layer.output.dense,
            ffn_dropout=layer.output.dropout,
            ffn_norm=layer.output.LayerNorm,
        )


class MPNetAdapter(EncoderAdapter):
    """MPNet: BERT-like layers plus a relative position bias shared by all layers."""

    model_types = ("mpnet",)
    has_position_bias = True

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self._bias_cache: dict[tuple[int, str], torch.Tensor] = {}

    def attention(self, layer: nn.Module) -> nn.Module:
        return layer.attention.attn

    def _layer_parts(self, layer: nn.Module) -> LayerParts:
        attn = layer.attention
        return LayerParts(
            query=attn.attn.q,
            key=attn.attn.k,
            value=attn.attn.v,
            attn_dropout=attn.attn.dropout.p,
            attn_out=attn.attn.o,
            attn_out_dropout=attn.dropout,
            attn_norm=attn.LayerNorm,
            ffn_in=layer.intermediate.dense,
            act=layer.intermediate.intermediate_act_fn,
            ffn_out=layer.output.dense,
            ffn_dropout=layer.output.dropout,
            ffn_norm=layer.output.LayerNorm,
        )

    def traced_position_bias(self, h: torch.Tensor) -> torch.Tensor:
        return self.model.encoder.compute_position_bias(h)[0]  # (heads, T, T)

    def position_bias(self, length: int, device: torch.device | None = None) -> torch.Tensor:
        """``(heads, T, T)`` bias from the installed ``MPNetEncoder.compute_position_bias``.

        Cached per length for inference; the key includes the bias table's version counter, so an
        optimiser step (an in-place update) invalidates it.
        """
        encoder = self.model.encoder
        table = encoder.relative_attention_bias.weight
        if torch.is_grad_enabled() and table.requires_grad:
            return encoder.compute_position_bias(torch.empty(1, length, 0, device=device))[0]
        key = (length, str(device), table._version)
        bias = self._bias_cache.get(key)
        if bias is None:
            if len(self._bias_cache) > 64:
                self._bias_cache.clear()
            bias = encoder.compute_position_bias(torch.empty(1, length, 0, device=device))[0]  # (h, T, T)
            self._bias_cache[key] = bias
        return bias


ADAPTERS: tuple[type[EncoderAdapter], ...] = (BertAdapter, MPNetAdapter)


def adapter_for(model: nn.Module) -> EncoderAdapter:
    model_type = getattr(model.config, "model_type", None)
    for cls in ADAPTERS:
        if model_type in cls.model_types:
            return cls(model)
    supported = ", ".join(t for cls in ADAPTERS for t in cls.model_types)
    raise ConfigError("encoder", f"model type {model_type!r} is not supported; supported: {supported}")
