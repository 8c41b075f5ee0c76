"""What a speed-seeking user would run instead of earlytag, on the same fine-tuned weights: the peers of
``earlytag bench --compare``.

- ``hf-pipeline``: Hugging Face ``pipeline("token-classification")`` on a ``*ForTokenClassification`` built from the
  fine-tuned encoder and the last exit head (full depth). It gets raw text and does its own tokenisation and
  post-processing, as a user's code would; each word takes the label of its first sub-word.
- ``ort-fp32`` / ``ort-int8``: the same full-depth model exported to ONNX and run by ONNX Runtime, in float32 or
  with dynamic int8 quantisation (per channel) by ``onnxruntime.quantization.quantize_dynamic``. They get the same
  pre-built batches as earlytag's engine.

Every peer gives word-level tags for the score and a function that tags one timing unit (a list of batches).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .data.batching import Batch, collate, length_sorted_batches, merge_windows
from .errors import ConfigError
from .model.layers import attention_bias, dense_layer

PEERS = ("hf-pipeline", "ort-fp32", "ort-int8")


class FullDepth(nn.Module):
    """The tagger at full depth as one module: embeddings, every layer, the last exit head. ``(B, T) -> (B, T, C)``"""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        m = self.model
        h = m.embed(input_ids)  # (B, T, d)
        bias = attention_bias(m.adapter, attention_mask.bool(), h.dtype)
        for parts in m.adapter.layers:
            h = dense_layer(parts, h, bias, m.adapter.num_heads)
        return m.heads[-1].linear(h)  # (B, T, C)


def ort_session(path: str | os.PathLike, threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def export_onnx(module: nn.Module, args: tuple, path: Path, names: Sequence[str], outputs: Sequence[str],
                dynamic: dict[str, dict[int, str]]) -> Path:
    """Export with the TorchScript exporter (dynamic shapes, opset 17); quiet about tracing."""
    import warnings

    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), input_names=list(names), output_names=list(outputs),
                          dynamic_axes=dynamic, opset_version=17, dynamo=False)
    return path


def quantize_onnx(src: Path, dst: Path, keep_float: Sequence[str] = ()) -> Path:
    """Dynamic int8 of every MatMul (but the nodes named in ``keep_float``), weights per output channel
    (onnxruntime.quantization)."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its advice to pre-process the graph is printed for every graph
    try:
        quantize_dynamic(str(src), str(dst), per_channel=True, weight_type=QuantType.QInt8,
                         nodes_to_exclude=list(keep_float))
    finally:
        root.setLevel(level)
    return dst


def _first_piece_logits(logits: np.ndarray, batch: Batch) -> np.ndarray:
    """``(B, T, C)`` -> ``(B, W, C)`` at each word's first sub-word."""
    idx = batch.word_pos.numpy()
    return np.take_along_axis(logits, idx[:, :, None], axis=1)


class OrtPeer:
    """The full-depth model in ONNX Runtime (fp32, or int8 with ``quantize=True``)."""

    def __init__(self, tagger, quantize: bool, workdir: Path, threads: int | None = None):
        if tagger.precision != "fp32":
            raise ConfigError("compare", "the ONNX peers are exported from the fp32 model")
        self.tagger = tagger
        self.name = "ort-int8" if quantize else "ort-fp32"
        ids = torch.tensor([[tagger.featurizer.pad_id + 1] * 6])
        path = export_onnx(FullDepth(tagger.model).eval(), (ids, torch.ones_like(ids)), workdir / "full.onnx",
                           ["input_ids", "attention_mask"], ["logits"],
                           {"input_ids": {0: "b", 1: "t"}, "attention_mask": {0: "b", 1: "t"}, "logits": {0: "b", 1: "t"}})
        if quantize:
            path = quantize_onnx(path, workdir / "full-int8.onnx")
        self.session = ort_session(path, threads)

    def run_batch(self, batch: Batch) -> np.ndarray:
        logits = self.session.run(None, {"input_ids": batch.input_ids.numpy(),
                                         "attention_mask": batch.attention_mask.numpy()})[0]
        return _first_piece_logits(logits, batch).argmax(-1)  # (B, W)

    def unit_runner(self) -> Callable[[list], Any]:
        def run(unit):
            for b in unit:
                self.run_batch(b)
        return run

    def predict_tags(self, docs: Sequence[Sequence[str]], batch_size: int) -> list[list[str]]:
        t = self.tagger
        windows = t.featurizer.windows(docs)
        ids: list[list[int]] = [[] for _ in windows]
        for idx in length_sorted_batches(windows, batch_size):
            batch = collate([windows[i] for i in idx], t.featurizer.pad_id)
            pred = self.run_batch(batch)
            for row, i in enumerate(idx):
                ids[i] = pred[row, : windows[i].num_words].tolist()
        merged = merge_windows(windows, [len(d) for d in docs], ids)
        return [t._decode(x) for x in merged]


class HFPipelinePeer:
    """transformers' token-classification pipeline on the same weights (full depth)."""

    name = "hf-pipeline"

    def __init__(self, tagger, threads: int | None = None):
        from transformers import AutoModelForTokenClassification, pipeline

        from .model.tagger import quiet_transformers

        model = tagger.model
        if tagger.precision != "fp32":
            raise ConfigError("compare", "the pipeline peer is built from the fp32 model")
        config = model.encoder_config.__class__.from_dict(model.encoder_config.to_dict())
        config.num_labels = len(model.config.labels)
        config.id2label = dict(enumerate(model.config.labels))
        config.label2id = {lab: i for i, lab in enumerate(model.config.labels)}
        with quiet_transformers():
            hf = AutoModelForTokenClassification.from_config(config)
        base = getattr(hf, hf.base_model_prefix)
        missing, unexpected = base.load_state_dict(model.encoder.state_dict(), strict=False)
        if [k for k in missing if "pooler" not in k] or unexpected:
            raise ConfigError("compare", f"cannot build the pipeline model (missing {missing[:3]}, "
                                         f"unexpected {unexpected[:3]})")
        with torch.no_grad():
            hf.classifier.weight.copy_(model.heads[-1].linear.weight)
            hf.classifier.bias.copy_(model.heads[-1].linear.bias)
        hf.eval()
        self.tagger = tagger
        self.pipe = pipeline("token-classification", model=hf, tokenizer=tagger.tokenizer, device="cpu",
                             aggregation_strategy="none", ignore_labels=[])

    def _texts(self, docs: Sequence[Sequence[str]]) -> tuple[list[str], list[list[int]]]:
        texts, starts = [], []
        for words in docs:
            pos, s = 0, []
            for w in words:
                s.append(pos)
                pos += len(w) + 1
            texts.append(" ".join(words))
            starts.append(s)
        return texts, starts

    def predict_tags(self, docs: Sequence[Sequence[str]], batch_size: int) -> list[list[str]]:
        texts, starts = self._texts(docs)
        out = []
        for words_at, result in zip(starts, self.pipe(texts, batch_size=batch_size)):
            first = {}
            for tok in result:
                first.setdefault(tok["start"], tok["entity"])
            out.append([first.get(s, "O") for s in words_at])
        return [self.tagger._decode([self.tagger.labels.index(t) for t in tags]) for tags in out]

    def unit_runner(self, docs_of_unit: Callable[[int], list[list[str]]], batch_size: int) -> Callable[[int], Any]:
        def run(unit_index):
            texts, _ = self._texts(docs_of_unit(unit_index))
            list(self.pipe(texts, batch_size=batch_size))
        return run


def make_peer(name: str, tagger, workdir: str | os.PathLike | None = None, threads: int | None = None):
    if name not in PEERS:
        raise ConfigError("compare", f"unknown peer {name!r}; expected one of {', '.join(PEERS)}")
    if name == "hf-pipeline":
        return HFPipelinePeer(tagger, threads)
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise ConfigError("compare", "the ONNX Runtime peers need onnxruntime and onnx: pip install "
                                     "'earlytag[onnx]'") from None
    workdir = Path(workdir or tempfile.mkdtemp(prefix="earlytag-onnx-")) / name
    return OrtPeer(tagger, quantize=name == "ort-int8", workdir=workdir, threads=threads)
