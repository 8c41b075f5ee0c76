"""The early-exit tagger: an installed Hugging Face encoder plus one exit head per layer.

Built from its config alone (``EarlyExitTagger(config, encoder_config)``), like a transformers model;
``forward`` returns a :class:`TaggerOutput` and computes the loss only when labels are given (``-100`` marks
ignored positions). Heads read the first sub-word of each word: the batch carries ``word_pos (B, W)``,
the index of that sub-word, and labels are per word ``(B, W)``.

Saved as a directory a transformers user recognises: ``config.json`` (the encoder's config plus an
``"earlytag"`` section), ``model.safetensors`` (encoder weights under the encoder's usual prefix, so
``AutoModel.from_pretrained(dir)`` loads the fine-tuned encoder, and ``exit_heads.*``), tokenizer files.
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..engine.plan import ExitPlan, word_mask_of
from ..errors import ConfigError, EarlytagError
from ..storage import atomic_write_text, require_model_dir, save_dir
from .adapters import adapter_for
from .card import CARD_NAME, render_card
from .config import TaggerConfig
from .heads import build_head, self_distillation
from .layers import attention_bias, dense_layer, heads_of

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
HEAD_PREFIX = "exit_heads"
CRF_PREFIX = "crf"


@dataclass
class TaggerOutput:
    logits: list[torch.Tensor]  # one (B, W, C) per layer that ran
    loss: torch.Tensor | None = None  # weighted sum over layers, Σ (l+1)·CE_l / Σ (l+1)
    layer_losses: torch.Tensor | None = None  # (L,) mean cross-entropy of each layer (0 where nothing counted)
    distill_loss: torch.Tensor | None = None  # the self-distillation term (``distill`` > 0), before its weight


class ExitHead(nn.Module):
    """Dropout + linear classifier on one layer's hidden states."""

    def __init__(self, hidden_size: int, num_labels: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(hidden_size, num_labels)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.linear(self.dropout(h))


@contextmanager
def quiet_transformers():
    """Silence transformers' load-time chatter (unused pooler weights and the like)."""
    from transformers.utils import logging as hf_logging

    logger = logging.getLogger("transformers")
    level = logger.level
    bars = hf_logging.is_progress_bar_enabled()
    logger.setLevel(logging.ERROR)
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        logger.setLevel(level)
        if bars:
            hf_logging.enable_progress_bar()


def max_positions(encoder_config) -> int:
    """Sub-word tokens (special tokens included) the encoder's position embeddings can take.

    RoBERTa-style and MPNet position ids start after the padding index, so two slots are not usable.
    """
    n = getattr(encoder_config, "max_position_embeddings", 512)
    if encoder_config.model_type in ("roberta", "xlm-roberta", "camembert", "mpnet"):
        n -= encoder_config.pad_token_id + 1
    return n


def _drop_pooler(encoder: nn.Module) -> nn.Module:
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None
    return encoder


def read_tagger_config(directory: str | os.PathLike) -> TaggerConfig:
    """The ``earlytag`` section of a saved model's config.json; errors name the file."""
    directory = require_model_dir(directory)
    config_path = directory / CONFIG_NAME
    if not config_path.is_file():
        raise EarlytagError(f"{directory}: not an earlytag model directory (no {CONFIG_NAME})")
    try:
        raw = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise EarlytagError(f"{config_path}: invalid JSON ({err})") from None
    if not isinstance(raw, dict) or "earlytag" not in raw:
        raise EarlytagError(f"{config_path}: no 'earlytag' section; this is not an earlytag model")
    try:
        return TaggerConfig.from_dict(raw["earlytag"])
    except ConfigError as err:
        raise EarlytagError(f"{config_path}: earlytag.{err}") from None
    except TypeError as err:
        raise EarlytagError(f"{config_path}: earlytag: {err}") from None


class EarlyExitTagger(nn.Module):
    def __init__(self, config: TaggerConfig, encoder_config, encoder: nn.Module | None = None):
        super().__init__()
        from transformers import AutoModel

        self.config = config
        if encoder is None:
            with quiet_transformers():
                encoder = AutoModel.from_config(encoder_config)
        self.encoder = _drop_pooler(encoder)
        if config.slim:  # a slim model: the encoder's layers cut to their saved sizes before the weights load
            from .slim import shrink

            shrink(self.encoder, config.slim)
        self.encoder_config = self.encoder.config
        config.max_length = min(config.max_length, max_positions(self.encoder_config))
        self.adapter = adapter_for(self.encoder)
        self.heads = nn.ModuleList(
            ExitHead(self.adapter.hidden_size, config.num_labels, config.head_dropout)
            for _ in range(self.adapter.num_layers)
        )
        self.head = build_head(config, self.adapter.num_layers)  # softmax or CRF: loss, exit scores, decoding

    precision = "fp32"  # see earlytag.model.precision.apply_precision

    @property
    def num_layers(self) -> int:
        return self.adapter.num_layers

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.adapter.embed(input_ids)  # (B, T, d)

    def forward(
        self,
        input_ids: torch.Tensor,  # (B, T)
        attention_mask: torch.Tensor,  # (B, T) 1 = token, 0 = padding
        word_pos: torch.Tensor,  # (B, W) index of each word's first sub-word
        labels: torch.Tensor | None = None,  # (B, W) label ids, -100 = ignore
        word_exit: torch.Tensor | None = None,  # (B, W) layer after which each word halts (self-sampling)
        token_word: torch.Tensor | None = None,  # (B, T) word of each sub-word, -1 for special tokens/padding
        kv: str = "keep",  # halted tokens stay keys/values ("keep") or leave attention ("drop")
        num_layers: int | None = None,  # run only the first k layers (static truncation)
        loss_reduction: str = "active-mean",  # per layer: mean over active words | batch-sum: Σ active / all words
        flood: torch.Tensor | None = None,  # (B, L, W) per-word flooding levels of the loss (self-sampling)
        layer_weights: str = "depth",  # the loss's weight of layer l: l+1 (the paper's) | uniform
        distill: float = 0.0,  # weight of the lower heads' self-distillation from the last head (stage 1)
        distill_temperature: float = 1.0,
    ) -> TaggerOutput:
        n_run = self.num_layers if num_layers is None else num_layers
        if not 1 <= n_run <= self.num_layers:
            raise ConfigError("num_layers", f"must be between 1 and {self.num_layers}, got {n_run}")
        mask = attention_mask.bool()
        h = self.embed(input_ids)  # (B, T, d)
        plan = None
        if word_exit is not None:
            if token_word is None:
                raise ConfigError("token_word", "needed with word_exit")
            plan = ExitPlan(word_exit, word_mask_of(token_word, word_exit.shape[1]), token_word, mask, n_run, kv)
        bias = attention_bias(self.adapter, mask, h.dtype)
        gather_idx = word_pos.unsqueeze(-1).expand(-1, -1, h.shape[-1])  # (B, W, d)
        logits = []
        for layer, parts in enumerate(self.adapter.layers[:n_run]):
            if plan is None:
                h = dense_layer(parts, h, heads_of(bias, parts), parts.num_heads)
            else:
                active = plan.active(layer)  # (B, T): who computes here; the others keep their state
                layer_bias = bias if kv == "keep" else attention_bias(self.adapter, mask & active, h.dtype)
                h = torch.where(active.unsqueeze(-1), dense_layer(parts, h, heads_of(layer_bias, parts),
                                                                  parts.num_heads), h)
            head = self.heads[layer]  # float32 whatever the encoder's precision
            logits.append(head(h.gather(1, gather_idx).to(head.linear.weight.dtype)))  # (B, W, C)
        out = TaggerOutput(logits=logits)
        if labels is not None:
            out.loss, out.layer_losses = self.loss(logits, labels, word_exit, loss_reduction, flood, layer_weights)
            if distill:
                if self.head.structured or word_exit is not None:
                    raise ConfigError("distill", "self-distillation trains softmax heads in stage 1 (joint); not "
                                                 "with a CRF head or in self-sampling")
                out.distill_loss = self_distillation(logits, labels, distill_temperature, layer_weights)
                out.loss = out.loss + distill * out.distill_loss
        return out

    def loss(self, logits: list[torch.Tensor], labels: torch.Tensor, word_exit: torch.Tensor | None = None,
             reduction: str = "active-mean", flood: torch.Tensor | None = None, weights: str = "depth"):
        """The head's joint loss Σ_l (l+1)·L_l / Σ_l (l+1) (:meth:`earlytag.model.heads.SoftmaxHead.loss`)."""
        return self.head.loss(logits, labels, word_exit, reduction, flood, weights)

    # ----------------------------------------------------------------- save / load

    def save_pretrained(self, directory: str | os.PathLike, tokenizer=None, overwrite: bool = False,
                        extra_files: dict[str, str] | None = None) -> Path:
        """Write config, weights and tokenizer (and ``extra_files``: name -> text) crash-safely: at every instant
        ``directory`` holds a loadable model, the old one or the new one (:func:`earlytag.storage.save_dir`).
        An existing model is replaced only with ``overwrite=True``; files earlytag did not write are kept."""
        if self.precision != "fp32":
            raise ConfigError("precision", f"a {self.precision} tagger is for inference; save the fp32 model")

        def write(tmp: Path) -> list[str]:
            config = self.encoder_config.to_dict()
            config["id2label"] = {str(i): lab for i, lab in enumerate(self.config.labels)}
            config["label2id"] = {lab: i for i, lab in enumerate(self.config.labels)}
            config["earlytag"] = self.config.to_dict()
            (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            (tmp / CARD_NAME).write_text(render_card(config), encoding="utf-8")
            save_file(self._export_state(), str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
            names = [CONFIG_NAME, CARD_NAME, WEIGHTS_NAME]
            if tokenizer is not None:
                names += [Path(f).name for f in tokenizer.save_pretrained(str(tmp))]
            for name, text in (extra_files or {}).items():
                (tmp / name).write_text(text, encoding="utf-8")
                names.append(name)
            return names

        return save_dir(directory, write, overwrite=overwrite)

    def _export_state(self) -> dict[str, torch.Tensor]:
        prefix = self.encoder.base_model_prefix
        state = {f"{prefix}.{k}": v.detach().contiguous().clone() for k, v in self.encoder.state_dict().items()}
        for i, head in enumerate(self.heads):
            state[f"{HEAD_PREFIX}.{i}.weight"] = head.linear.weight.detach().contiguous().clone()
            state[f"{HEAD_PREFIX}.{i}.bias"] = head.linear.bias.detach().contiguous().clone()
        for name, p in self.head.named_parameters():
            state[f"{CRF_PREFIX}.{name}"] = p.detach().float().contiguous().clone()
        return state

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> EarlyExitTagger:
        """Load a saved tagger. Reads JSON and safetensors only: nothing in the directory is executed."""
        from transformers import AutoConfig

        directory = require_model_dir(directory)
        config_path = directory / CONFIG_NAME
        tagger_config = read_tagger_config(directory)
        try:
            with quiet_transformers():
                encoder_config = AutoConfig.from_pretrained(str(directory), trust_remote_code=False)
        except (ValueError, OSError, KeyError, TypeError) as err:
            raise EarlytagError(f"{config_path}: cannot build the encoder config: {err}") from None
        try:
            model = cls(tagger_config, encoder_config)
        except EarlytagError as err:
            raise EarlytagError(f"{config_path}: {err}") from None
        except (ValueError, TypeError, AttributeError, RuntimeError) as err:
            raise EarlytagError(f"{config_path}: the encoder config is not usable: {type(err).__name__}: "
                                f"{str(err).splitlines()[0] if str(err) else ''}") from None
        weights = directory / WEIGHTS_NAME
        if not weights.is_file():
            raise EarlytagError(f"{directory}: missing {WEIGHTS_NAME}")
        try:
            state = load_file(str(weights))
        except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
            raise EarlytagError(f"{weights}: not a readable safetensors file ({type(err).__name__})") from None
        model._import_state(state, weights)
        model.eval()
        return model

    def _import_state(self, state: dict[str, torch.Tensor], source) -> None:
        prefix = self.encoder.base_model_prefix + "."
        encoder_state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        own = self.encoder.state_dict()
        wrong = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in encoder_state.items()
                 if k in own and v.shape != own[k].shape]
        if wrong:
            name, got, expected = wrong[0]
            raise EarlytagError(f"{source}: {prefix}{name} has shape {got} but config.json describes {expected} "
                                f"({len(wrong)} tensor(s) differ): the weights do not belong to this config")
        missing, unexpected = self.encoder.load_state_dict(encoder_state, strict=False)
        missing = [k for k in missing if not k.endswith(("position_ids", "token_type_ids"))]
        if missing or unexpected:
            raise EarlytagError(f"{source}: encoder weights do not fit the config "
                                f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
        for i, head in enumerate(self.heads):
            try:
                w, b = state[f"{HEAD_PREFIX}.{i}.weight"], state[f"{HEAD_PREFIX}.{i}.bias"]
            except KeyError:
                raise EarlytagError(f"{source}: no weights for exit head {i}") from None
            if w.shape != head.linear.weight.shape or b.shape != head.linear.bias.shape:
                raise EarlytagError(f"{source}: exit head {i} has shape {tuple(w.shape)}, "
                                    f"expected {tuple(head.linear.weight.shape)}")
            with torch.no_grad():
                head.linear.weight.copy_(w)
                head.linear.bias.copy_(b)
        for name, p in self.head.named_parameters():
            key = f"{CRF_PREFIX}.{name}"
            if key not in state:
                raise EarlytagError(f"{source}: no weights for the CRF ({key})")
            if state[key].shape != p.shape:
                raise EarlytagError(f"{source}: {key} has shape {tuple(state[key].shape)}, expected {tuple(p.shape)}")
            with torch.no_grad():
                p.copy_(state[key])


def update_saved_config(directory: str | os.PathLike, settings: dict) -> None:
    """Update keys of the ``earlytag`` section of a saved model's config.json (atomically)."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise EarlytagError(f"{directory}: not an earlytag model directory (no {CONFIG_NAME})")
    raw = json.loads(path.read_text(encoding="utf-8"))
    raw.setdefault("earlytag", {}).update(settings)
    card = render_card(raw)  # before anything is written: a card that cannot be rendered leaves both as they were
    atomic_write_text(path, json.dumps(raw, indent=2, sort_keys=True) + "\n")
    atomic_write_text(Path(directory) / CARD_NAME, card)  # the card says what the config says
