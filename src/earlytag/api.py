"""The Python API: ``Tagger.from_pretrained(dir)``, ``tagger(text)``, ``tagger.pipe(texts)``, ``tagger.evaluate(path)``.

The CLI verbs and the HTTP service are thin wrappers over these methods; they return plain data (dicts and
lists) that serialise to the JSON documents the CLI prints.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import random
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .data import schemes
from .data.batching import Featurizer, check_text, collate, length_sorted_batches, merge_windows, split_words
from .data.datasets import Dataset, load_dataset, map_labels
from .data.segmentation import word_spans
from .data.types import Sentence
from .defaults import BACKENDS, ONEDNN_PRECISIONS
from .engine import Engine, ExitConfig, ExitStats
from .engine.control import LengthProfile, SpeedController, exit_report
from .errors import ConfigError, DataError, EarlytagError
from .metrics import task_scores
from .model.precision import apply_precision, check_precision, onednn_bf16_available, use_onednn
from .model.tagger import EarlyExitTagger

ExitLike = ExitConfig | SpeedController | dict | str | None


@dataclass
class Prediction:
    """Predictions for a list of word sequences, in input order."""

    tags: list[list[str]]  # IOB2 for chunk tasks
    scores: list[list[float]]
    exit_layers: list[list[int]]  # 1-based
    stats: ExitStats
    model_seconds: float  # time in the engine (encoder + heads), tokenisation excluded
    doc_flops: list[float]  # FLOPs spent on each document
    doc_flops_full: list[float]  # FLOPs each document costs at full depth

    def flops_speedup(self, docs: Sequence[int] | None = None) -> float:
        """FLOPs speed-up over all documents, or over the documents with the given indices."""
        idx = range(len(self.doc_flops)) if docs is None else docs
        spent = sum(self.doc_flops[i] for i in idx)
        return sum(self.doc_flops_full[i] for i in idx) / spent if spent else 1.0


class Tagger:
    def __init__(self, model: EarlyExitTagger, tokenizer, device: str | torch.device | None = None,
                 batch_size: int = 32, refill: bool = True, precision: str = "fp32", backend: str = "torch",
                 decode: str | None = None, meanfield_iters: int | None = None, crf_uncertainty: str | None = None):
        self.device = torch.device(device or "cpu")
        check_precision(precision, self.device)
        if backend not in BACKENDS:
            raise ConfigError("backend", f"expected one of {', '.join(BACKENDS)}, got {backend!r}")
        self.backend = backend
        self.model = apply_precision(model.to(self.device).eval(), precision if backend != "onnxruntime" else "fp32")
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.refill = refill  # let thin later layers of a batch wait for the next batch (Engine.run_many)
        cfg = model.config
        self.featurizer = Featurizer(tokenizer, cfg.max_length, cfg.window_overlap)
        layers, single = self._layer_backend(precision, backend)
        self.engine = Engine(self.model, layers=layers, single=single)
        self.set_decoding(decode, meanfield_iters, crf_uncertainty)

    def set_decoding(self, decode: str | None = None, meanfield_iters: int | None = None,
                     uncertainty: str | None = None) -> None:
        """How a CRF model decodes (viterbi | meanfield), its mean-field iterations, and which marginals decide
        exits (meanfield | exact | emission); None keeps the model's setting. A softmax model takes none."""
        given = {k: v for k, v in (("decode", decode), ("meanfield_iters", meanfield_iters),
                                   ("crf_uncertainty", uncertainty)) if v is not None}
        if not self.model.head.structured:
            if given:
                raise ConfigError(next(iter(given)), "the model has a softmax head; decoding settings are for CRF "
                                                     "models (earlytag train --head crf)")
            return
        self.model.head.configure(decode, meanfield_iters, uncertainty)

    @property
    def decoding(self) -> str:
        """What turns emissions into labels, in words (for reports)."""
        return self.model.head.describe()

    # ------------------------------------------------------------------ loading / saving

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: str | None = None, batch_size: int = 32,
                        precision: str = "fp32", backend: str = "torch", decode: str | None = None,
                        meanfield_iters: int | None = None, crf_uncertainty: str | None = None) -> Tagger:
        """Load a saved model; ``precision``: fp32 | bf16 | fp16 | int8 (earlytag.model.precision);
        ``backend``: torch | onnxruntime (what runs the layer steps and heads: earlytag.engine.backends);
        ``decode``, ``meanfield_iters``, ``crf_uncertainty``: a CRF model's decoding (:meth:`set_decoding`)."""
        from transformers import AutoTokenizer

        from .model.encoders import check_tokenizer

        model = EarlyExitTagger.from_pretrained(directory)
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(directory), use_fast=True)
        except (OSError, ValueError, TypeError) as err:
            raise EarlytagError(f"{directory}: cannot load the tokenizer: {err}") from None
        check_tokenizer(tokenizer, model.encoder_config, directory)
        tagger = cls(model, tokenizer, device, batch_size, precision=precision, backend=backend, decode=decode,
                     meanfield_iters=meanfield_iters, crf_uncertainty=crf_uncertainty)
        tagger.source = Path(directory)
        return tagger

    def save_pretrained(self, directory: str | os.PathLike, overwrite: bool = False,
                        extra_files: dict[str, str] | None = None) -> Path:
        """Save the model and tokenizer; an existing model is replaced only with ``overwrite=True``."""
        return self.model.save_pretrained(directory, self.tokenizer, overwrite=overwrite, extra_files=extra_files)

    @property
    def config(self):
        return self.model.config

    @property
    def num_layers(self) -> int:
        return self.model.num_layers

    @property
    def precision(self) -> str:
        return self.model.precision if self.backend != "onnxruntime" else self._precision

    @property
    def single_sentence_backend(self) -> str:
        """What tags a one-sentence batch: ``onnxruntime`` (one graph call for the whole climb) or ``torch``."""
        return "onnxruntime" if self.engine.single is not None and self.engine.single.whole_sentence else "torch"

    def _layer_backend(self, precision: str, backend: str):
        """(what runs the layer steps, what climbs a one-sentence batch in one call): ``torch`` (None, None),
        ``onednn`` (torch, its fp32/bf16 Linears in oneDNN with prepacked weights: :func:`~earlytag.model.precision.use_onednn`),
        ``onnxruntime`` (its sessions for both), ``auto`` (torch steps; ONNX Runtime's whole-climb graph for single
        sentences when onnxruntime is installed, the model is fp32 and on the CPU — else torch alone)."""
        self._precision = precision
        if backend == "torch":
            return None, None
        if backend == "onednn":  # torch's engine, its fp32/bf16 products in oneDNN with prepacked weights
            if precision not in ONEDNN_PRECISIONS or self.device.type != "cpu":
                raise ConfigError("backend", f"onednn runs fp32 or bf16 on a CPU, not {precision} on "
                                             f"{self.device.type}: use --backend torch")
            if precision == "bf16" and not onednn_bf16_available():
                raise ConfigError("backend", "this CPU has no oneDNN bfloat16 products: use --backend torch, or "
                                             "--backend onednn with --precision fp32")
            use_onednn(self.model)
            return None, None
        from .engine.backends import OnnxLayers

        if backend == "auto":
            if precision != "fp32" or self.device.type != "cpu" or importlib.util.find_spec("onnxruntime") is None:
                return None, None
            return None, OnnxLayers(self.model, "fp32")
        layers = OnnxLayers(self.model, precision)
        return layers, layers

    @property
    def labels(self) -> list[str]:
        return self.model.config.labels

    # ------------------------------------------------------------------ exit settings

    @property
    def default_exit(self) -> ExitConfig:
        """The model's stored exit setting (``earlytag.exit`` in config.json), or full depth."""
        return ExitConfig.from_dict(self.config.exit).validated(self.num_layers)

    def exit_config(self, exit: ExitLike = None, **overrides: Any) -> ExitConfig:
        """Normalise ``exit`` (config, dict, policy name or None = the stored default) plus overrides."""
        if exit is None:
            base = self.default_exit.to_dict() if not overrides.get("policy") else {}
        elif isinstance(exit, ExitConfig):
            base = exit.to_dict()
        elif isinstance(exit, str):
            base = {"policy": exit}
        elif isinstance(exit, dict):
            base = dict(exit)
        else:
            raise ConfigError("exit", f"expected a policy name, dict or ExitConfig, got {type(exit).__name__}")
        base.update({k: v for k, v in overrides.items() if v is not None})
        target = base.pop("target_speedup", None)
        if target is not None:
            return self.setting_for_speedup(target, base.get("policy"))
        return ExitConfig.from_dict(base).validated(self.num_layers)

    def setting_for_speedup(self, target: float, policy: str | None = None) -> ExitConfig:
        """The best-scoring setting that reached ``target`` in the model's stored calibration table
        (written by ``earlytag calibrate``); the fastest one if none reached it."""
        if isinstance(target, bool) or not isinstance(target, (int, float)) or not 1.0 <= target <= 100:
            raise ConfigError("exit.target_speedup", f"must be a number between 1 and 100, got {target!r}")
        table = (self.config.exit_calibration or {}).get("table")
        if not table:
            raise ConfigError("exit.target_speedup", "this model has no calibration table; run "
                                                     "`earlytag calibrate MODEL DEV --target-speedup X` once")
        rows = [r for r in table if policy in (None, "none") or r["exit"]["policy"] == policy] or table
        reaching = [r for r in rows if r["flops_speedup"] >= target]
        best = (max(reaching, key=lambda r: (r["score"], r["flops_speedup"])) if reaching
                else max(rows, key=lambda r: r["flops_speedup"]))
        return ExitConfig.from_dict(best["exit"]).validated(self.num_layers)

    def set_default_exit(self, exit: ExitLike, save_to: str | os.PathLike | None = None) -> ExitConfig:
        """Make ``exit`` the model's default; with ``save_to`` also rewrite that directory's config.json."""
        cfg = self.exit_config(exit)
        self.config.exit = cfg.to_dict()
        if save_to is not None:
            from .model.tagger import update_saved_config

            update_saved_config(save_to, {"exit": self.config.exit})
        return cfg

    # ------------------------------------------------------------------ prediction

    def speed_controller(self, target: float, policy: str | None = None, **options: Any) -> SpeedController:
        """A controller that holds ``target`` FLOPs speed-up on the text it sees, starting from the setting the
        model's calibration table gives for it (``earlytag calibrate``). ``options``: SpeedController's."""
        base = self.setting_for_speedup(target, policy)
        if "profile" not in options:  # the calibration table's speed-up per input length, where it has one
            options["profile"] = LengthProfile.from_table(self.config.exit_calibration["table"], base)
        return SpeedController(base, target, **options)

    def resolve_exit(self, exit: ExitLike) -> ExitConfig | SpeedController:
        """``exit`` as the engine takes it: a fixed setting, or a controller for ``{"target_speedup": X}``."""
        if isinstance(exit, SpeedController):
            return exit
        if isinstance(exit, dict) and exit.get("target_speedup") is not None:
            return self.speed_controller(exit["target_speedup"], exit.get("policy"))
        return self.exit_config(exit)

    def predict_words(self, docs: Sequence[Sequence[str]], exit: ExitLike = None,
                      batch_size: int | None = None) -> Prediction:
        """Tag word sequences with early exit; long ones are windowed and merged back. ``exit`` may be a
        :class:`SpeedController`: its thresholds then move between engine calls to hold its target speed-up."""
        exit = self.resolve_exit(exit)
        control = exit if isinstance(exit, SpeedController) else None
        cfg = exit if control is None else exit.current().validated(self.num_layers)
        batch_size = batch_size or self.batch_size
        windows = self.featurizer.windows(docs)
        preds: list[list[int]] = [[] for _ in windows]
        scores: list[list[float]] = [[] for _ in windows]
        exits: list[list[int]] = [[] for _ in windows]
        stats = ExitStats(self.num_layers)
        doc_flops = [0.0] * len(docs)
        doc_flops_full = [0.0] * len(docs)
        order = list(length_sorted_batches(windows, batch_size))
        if control is not None:
            # batches of similar length, taken in a fixed random order: sorted by length, the stream would drift
            # from short to long sentences within the call and the controller would trail that drift all along
            random.Random(0).shuffle(order)
        batches = [collate([windows[i] for i in idx], self.featurizer.pad_id).to(self.device) for idx in order]
        start = time.perf_counter()
        if control is not None:  # a few batches at a time, the thresholds moving in between
            outs = []
            step = control.batches_per_step
            # τ is chosen for the lengths of the whole call, not of each batch: one τ for all of a call's
            # sentences (moved only by the feedback between batches) spends the FLOPs where words are unsure;
            # a τ per batch that made every batch reach the target cost ~1 F1 at 3x (docs/results.md section 5)
            lengths = [len(w) for w in windows]
            for u in range(0, len(batches), step):
                done = self._run_batches(batches[u:u + step], control.current(lengths), batch_size)
                control.observe(sum(o.stats.flops for o in done), sum(o.stats.flops_full for o in done),
                                sum(o.stats.tokens for o in done))
                outs += done
        else:
            outs = self._run_batches(batches, cfg, batch_size)
        seconds = time.perf_counter() - start
        for idx, out in zip(order, outs):
            stats = stats + out.stats
            p, s, e = out.pred.tolist(), out.score.tolist(), out.exit_layer.tolist()
            fl, ff = out.flops.tolist(), out.flops_full.tolist()
            for row, i in enumerate(idx):
                k = windows[i].num_words
                preds[i], scores[i], exits[i] = p[row][:k], s[row][:k], [x + 1 for x in e[row][:k]]
                doc_flops[windows[i].doc] += fl[row]
                doc_flops_full[windows[i].doc] += ff[row]
        lengths = [len(d) for d in docs]
        merged = [merge_windows(windows, lengths, v) for v in (preds, scores, exits)]
        tags = [self._decode(ids) for ids in merged[0]]
        # words count once each, with the exit layer of the window their prediction comes from (overlapping
        # windows of long documents compute some words twice: that work stays in tokens, active tokens, FLOPs)
        word_exits = [e for doc in merged[2] for e in doc]
        stats.sentences = len(docs)
        stats.words = len(word_exits)
        stats.exit_layer_sum = float(sum(word_exits))
        stats.words_exited = [0] * self.num_layers
        for e in word_exits:
            stats.words_exited[e - 1] += 1
        return Prediction(tags, merged[1], merged[2], stats, seconds, doc_flops, doc_flops_full)

    def _run_batches(self, batches: list, cfg: ExitConfig, batch_size: int) -> list:
        if batch_size > 1:  # thin later layers of one batch wait for the next batch's survivors
            return self.engine.run_many(batches, cfg, refill=self.refill)
        return [self.engine.run(b, cfg) for b in batches]

    def unknown_gold_types(self, dataset: Dataset) -> dict[str, int]:
        """Gold chunk types (or POS tags) of ``dataset`` that the model has no label for, with their counts."""
        if self.config.is_chunking:
            have = {lab.split("-", 1)[1] for lab in self.labels if lab != "O"}
            kind = lambda t: t.split("-", 1)[1] if t != "O" else None  # noqa: E731
        else:
            have = set(self.labels)
            kind = lambda t: t  # noqa: E731
        counts: dict[str, int] = {}
        for sent in dataset.sentences:
            for tag in sent.tags or []:
                k = kind(tag)
                if k is not None and k not in have:
                    counts[k] = counts.get(k, 0) + 1
        return counts

    def layer_tags(self, docs: Sequence[Sequence[str]], batch_size: int | None = None) -> list[list[list[str]]]:
        """The prediction of every exit head at full depth: ``[layer][doc][word]`` (one forward per batch)."""
        batch_size = batch_size or self.batch_size
        windows = self.featurizer.windows(docs)
        per_layer: list[list[list[int]]] = [[[] for _ in windows] for _ in range(self.num_layers)]
        with torch.inference_mode():
            for idx in length_sorted_batches(windows, batch_size):
                batch = collate([windows[i] for i in idx], self.featurizer.pad_id).to(self.device)
                out = self.model(batch.input_ids, batch.attention_mask, batch.word_pos)
                for layer, logits in enumerate(out.logits):
                    ids = self.model.head.predict_layer(layer, logits, batch.word_mask).tolist()
                    for row, i in enumerate(idx):
                        per_layer[layer][i] = ids[row][: windows[i].num_words]
        lengths = [len(d) for d in docs]
        return [[self._decode(ids) for ids in merge_windows(windows, lengths, layer)] for layer in per_layer]

    def _decode(self, ids: Sequence[int]) -> list[str]:
        tags = [self.labels[i] for i in ids]
        if self.config.is_chunking and self.config.label_scheme not in (None, "iob2"):
            tags = schemes.to_iob2(tags, self.config.label_scheme)
        return tags

    def __call__(self, text: str | Sequence[str] | dict, exit: ExitLike = None) -> dict:
        return next(self.pipe([text], exit=exit))

    def pipe(self, texts: Iterable[str | Sequence[str] | dict], batch_size: int | None = None,
             exit: ExitLike = None, chunk_size: int = 2048, chunk_words: int = 50_000) -> Iterator[dict]:
        """Tag many texts; yields one document dict per input, in order. Inputs are raw strings, lists of
        words, or dicts with ``text`` or ``tokens``."""
        cfg = self.resolve_exit(exit)  # one controller for the whole stream with {"target_speedup": X}
        for chunk in chunked((self.to_sentence(item) for item in texts), chunk_size, chunk_words, len):
            yield from self.documents(chunk, cfg, batch_size)[0]

    def documents(self, sentences: Sequence[Sentence], exit: ExitLike = None,
                  batch_size: int | None = None) -> tuple[list[dict], Prediction]:
        pred = self.predict_words([s.tokens for s in sentences], exit, batch_size)
        docs = [self._document(s, t, sc, e) for s, t, sc, e in zip(sentences, pred.tags, pred.scores, pred.exit_layers)]
        return docs, pred

    def to_sentence(self, item: str | Sequence[str] | dict, where: str = "<input>") -> Sentence:
        """Raw text (split into words by the model's splitter), a list of words, or ``{"text"|"tokens": ...}``."""
        if isinstance(item, dict):
            if "tokens" in item:
                item = item["tokens"]
            elif "text" in item:
                item = item["text"]
            else:
                raise DataError("expected a 'text' or 'tokens' field", where)
        if isinstance(item, str):
            check_text(item, where)
            words = split_words(item, self.config.word_splitter)
            return Sentence([w for w, _, _ in words], text_override=item, token_offsets=[(s, e) for _, s, e in words])
        if isinstance(item, (list, tuple)) and all(isinstance(t, str) and t for t in item):
            for i, tok in enumerate(item):
                check_text(tok, f"{where}.tokens[{i}]")
            spaces = [self.config.word_splitter != "chars"] * len(item)
            return Sentence(list(item), spaces=spaces)
        raise DataError("a text must be a string or a list of non-empty strings", where)

    def _document(self, sent: Sentence, tags: list[str], scores: list[float], exits: list[int]) -> dict:
        text, offsets = sent.text, sent.offsets
        tokens = [
            {"text": tok, "start": s, "end": e, "tag": tag, "score": round(sc, 5), "exit_layer": ex}
            for tok, (s, e), tag, sc, ex in zip(sent.tokens, offsets, tags, scores, exits)
        ]
        doc: dict[str, Any] = {"text": text, "spans": [], "tokens": tokens}
        if self.config.is_chunking:
            for label, i, j in schemes.spans(tags):
                start, end = offsets[i][0], offsets[j - 1][1]
                doc["spans"].append({"start": start, "end": end, "label": label, "text": text[start:end],
                                     "score": round(sum(scores[i:j]) / (j - i), 5)})
        elif self.config.task == "cws":
            doc["words"] = [{"start": offsets[i][0], "end": offsets[j - 1][1],
                             "text": text[offsets[i][0]:offsets[j - 1][1]]} for i, j in word_spans(tags)]
        return doc

    # ------------------------------------------------------------------ evaluation

    def load(self, data: str | os.PathLike | Dataset, limit: int | None = None, **kwargs) -> Dataset:
        """``data`` as a :class:`Dataset` for this model's task (read with ``kwargs``, see :func:`load_dataset`);
        ``limit``: only its first ``limit`` sentences (None: all)."""
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ConfigError("limit", f"expected a number of sentences of at least 1, got {limit!r}")
        if not isinstance(data, Dataset):
            kwargs.setdefault("scheme", "auto")
            kwargs.setdefault("units", self.config.units)
            data = load_dataset(data, self.config.task, **kwargs)
        return data if limit is None else dataclasses.replace(data, sentences=data.sentences[:limit])

    def evaluate(self, data: str | os.PathLike | Dataset, exit: ExitLike = None, layer: int | None = None,
                 batch_size: int | None = None, per_layer: bool = False, mode: str = "default",
                 label_map: dict[str, str] | None = None, types: list[str] | None = None, **load_kwargs) -> dict:
        """Score ``data`` with the given exit setting (``layer=k``: static truncation to k layers; a
        ``{"target_speedup": X}`` exit or a :class:`SpeedController` holds that speed-up over the data, in order).

        ``per_layer`` adds the score of every exit head at full depth; at full depth with the torch backend it comes
        from the same pass (every head's prediction), otherwise it costs a second, full-depth pass.
        ``label_map`` renames gold types (``{"MISC": "O"}`` drops them); ``types`` scores only those types (gold
        and predicted). Gold types the model does not have are counted in ``warnings``: they can only be misses.
        ``limit=N`` (with the other ``load_kwargs``, see :meth:`load`) scores only the first N sentences.
        Returns ``{"f1", "precision", "recall", "accuracy", "per_type", "per_layer", "sentences", "tokens",
        "seconds", "exit", "flops_speedup", "mean_exit_layer", "inference_seconds", "controller", "warnings", ...}``.
        """
        start = time.perf_counter()
        dataset = self.load(data, **load_kwargs)
        warnings_: list[str] = []
        if label_map or types:
            changed = map_labels(dataset.sentences, self.config.task, label_map, types)
            if changed:
                warnings_.append("gold tags rewritten: " + ", ".join(f"{k}: {v}" for k, v in sorted(changed.items())))
        unknown = self.unknown_gold_types(dataset)
        if unknown:
            warnings_.append("gold types the model does not predict (each counts as a miss; --label-map TYPE=O or "
                             "--types to score the shared types): "
                             + ", ".join(f"{k} ({v} tags)" for k, v in sorted(unknown.items())))
        if dataset.report:
            warnings_.append(f"{dataset.path}: {dataset.report.describe()}")
        cfg = self.exit_config("static", layer=layer) if layer is not None else self.resolve_exit(exit)
        control = cfg if isinstance(cfg, SpeedController) else None
        docs = [s.tokens for s in dataset.sentences]
        gold = [s.tags for s in dataset.sentences]
        one_pass = per_layer and control is None and cfg.policy == "none" and self.backend != "onnxruntime"
        layers = None
        if one_pass:  # every head's prediction from one full-depth pass: the last one is the result
            t0 = time.perf_counter()
            layers = self.layer_tags(docs, batch_size)
            pred = _full_depth_prediction(self, docs, layers[-1], time.perf_counter() - t0)
        else:
            pred = self.predict_words(docs, cfg, batch_size)
            if per_layer:
                layers = self.layer_tags(docs, batch_size)
        if types and self.config.is_chunking:  # predicted chunks of other types do not count either
            keep = set(types)

            def only_kept(docs_tags: list[list[str]]) -> list[list[str]]:
                return [[t if t == "O" or t.split("-", 1)[1] in keep else "O" for t in tags] for tags in docs_tags]

            pred.tags = only_kept(pred.tags)
            if layers is not None:
                layers = [only_kept(layer) for layer in layers]
        result = task_scores(self.config.task, gold, pred.tags, mode)
        if layers is not None:
            result["per_layer"] = [{"layer": i + 1, **_brief(task_scores(self.config.task, gold, tags, mode))}
                                   for i, tags in enumerate(layers)]
        result.update({
            "sentences": len(docs),
            "tokens": sum(len(d) for d in docs),
            **exit_report(cfg),
            "flops_speedup": pred.stats.flops_speedup,
            "mean_exit_layer": pred.stats.mean_exit_layer,
            "inference_seconds": pred.model_seconds,
            "stats": pred.stats.to_dict(),
            "runtime": {"precision": self.precision, "backend": self.backend, "device": str(self.device),
                        "single_sentences": self.single_sentence_backend, "head": self.decoding},
            "data": str(dataset.path),
            "limit": load_kwargs.get("limit"),
            "scheme": dataset.scheme_note,
            "warnings": warnings_,
            "seconds": time.perf_counter() - start,
        })
        return result


def _full_depth_prediction(tagger: Tagger, docs: Sequence[Sequence[str]], tags: list[list[str]],
                           seconds: float) -> Prediction:
    """What :meth:`Tagger.predict_words` returns at full depth, for tags computed by :meth:`Tagger.layer_tags`:
    every word exits at the last layer, and the FLOPs are the full-depth FLOPs (the engine's count)."""
    from .engine.flops import head_flops, layer_flops

    L = tagger.num_layers
    a = tagger.model.adapter
    windows = tagger.featurizer.windows(docs)
    doc_flops = [0.0] * len(docs)
    for w in windows:
        n = torch.tensor([[len(w)]])
        if w.num_words:  # every layer at its own sizes (a slim model's differ)
            doc_flops[w.doc] += float(layer_flops(n, n, a.hidden_size, a.ffn_sizes, "keep", a.attn_sizes).sum()
                                      + head_flops(torch.tensor([w.num_words]), a.hidden_size, len(tagger.labels)))
    words = sum(len(d) for d in docs)
    stats = ExitStats(L, sentences=len(docs), words=words, tokens=sum(len(w) for w in windows),
                      flops=sum(doc_flops), flops_full=sum(doc_flops), exit_layer_sum=float(L * words))
    stats.words_exited[-1] = words
    return Prediction(tags, [[1.0] * len(d) for d in docs], [[L] * len(d) for d in docs], stats, seconds, doc_flops,
                      list(doc_flops))


def chunked(items: Iterable, max_items: int, max_words: int, words_of) -> Iterator[list]:
    """Consecutive lists of ``items`` with at most ``max_items`` items and ``max_words`` words (at least one
    item): what is tagged together, so memory is bounded by these, not by the whole input."""
    chunk: list = []
    words = 0
    for item in items:
        chunk.append(item)
        words += words_of(item)
        if len(chunk) >= max_items or words >= max_words:
            yield chunk
            chunk, words = [], 0
    if chunk:
        yield chunk


def _brief(scores: dict) -> dict:
    return {k: scores[k] for k in ("score", "f1", "precision", "recall", "accuracy") if k in scores}
