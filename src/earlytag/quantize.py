"""Choose, on dev data, which layers ``int8-mixed`` keeps partly in float32 (``earlytag quantize``).

Dynamic int8 quantizes every Linear's input per call. On some models most of its F1 loss comes from the FFN's
output projection, whose input (after the GELU) has the widest range, and from a few layers only
(docs/results.md section 4: on all-MiniLM-L6-v2 NER the first two layers' FFN outputs in float32 recover what all
six recover). Every float projection costs speed, so the choice is made per model on dev data:

1. score fp32, int8 and int8-mixed with every layer's FFN output float32 (full depth);
2. score int8 with one layer's FFN output float32, for each layer;
3. add layers in the order of those scores, best first, and keep the smallest set whose dev score is within
   ``tolerance`` of every layer's (int8 alone when it already is).

The choice is stored in the model's config.json under the backend it was made with (``int8_mixed.torch`` or
``int8_mixed.onnxruntime``): each backend quantizes activations its own way, and a choice made for one did not carry
to the other (docs/results.md section 4). ``--precision int8-mixed`` with that backend then keeps only those layers'
FFN outputs float32; without a choice for the backend it keeps all of them.
"""

from __future__ import annotations

import copy
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm

from .api import Tagger
from .calibrate import stored_path
from .data.datasets import Dataset
from .defaults import QUANTIZE_BACKENDS
from .engine import ExitConfig
from .errors import ConfigError
from .metrics import task_scores


@dataclass
class Int8Choice:
    float_ffn_out: list[int]  # layers (from 0) whose FFN output projection stays float32
    score: float  # the choice's dev score (0-1)
    scores: dict[str, float]  # dev score (0-1) of every quantization tried, by name
    tried: list[list[int]]  # the sets of float layers tried after the single layers, in order
    data: str
    sentences: int
    backend: str
    batch_size: int
    tolerance: float
    exit: dict | None = None  # the setting every quantization was scored at (None: full depth)

    def to_dict(self) -> dict:
        return asdict(self)


def smallest_sufficient(single: dict[int, float], score_of: Callable[[tuple[int, ...]], float], bound: float,
                        num_layers: int) -> tuple[tuple[int, ...], list[tuple[int, ...]]]:
    """Layers added best single score first (ties: the lower layer); the first set scoring ``>= bound``, or every
    layer. Returns (the chosen set sorted, every set tried in order)."""
    order = sorted(range(num_layers), key=lambda k: (-single[k], k))
    tried = []
    for n in range(1, num_layers):
        layers = tuple(sorted(order[:n]))
        tried.append(layers)
        if score_of(layers) >= bound:
            return layers, tried
    return tuple(range(num_layers)), tried


def choose_int8_mixed(directory: str | os.PathLike, dev: str | os.PathLike | Dataset, backend: str = "torch",
                      batch_size: int = 32, limit: int | None = 1000, tolerance: float = 0.0, save: bool = True,
                      progress: bool = False, exit: ExitConfig | dict | None = None, **load_kwargs) -> Int8Choice:
    """Choose the layers whose FFN output ``int8-mixed`` keeps float32, on ``dev`` (its first ``limit`` sentences,
    scored by ``backend`` at ``batch_size``: dynamic int8 quantizes activations per call, so both change the scores
    a little), at full depth or with the early exit setting ``exit`` (the one you serve with: under token exit the
    lower layers' heads decide most words, and which layers need float32 there differs from full depth,
    docs/results.md section 4). ``tolerance``: dev score points (0-100) the choice may lose against keeping every
    layer's. With ``save`` the choice goes into the model directory's config.json (``int8_mixed[backend]``; a choice
    for the other backend is kept)."""
    if backend not in QUANTIZE_BACKENDS:
        raise ConfigError("backend", f"expected {' or '.join(QUANTIZE_BACKENDS)}, got {backend!r}")
    if not 0 <= tolerance <= 100:
        raise ConfigError("tolerance", f"dev score points between 0 and 100, got {tolerance}")
    if batch_size < 1:
        raise ConfigError("batch_size", f"must be at least 1, got {batch_size}")
    if limit is not None and limit < 0:
        raise ConfigError("limit", f"dev sentences to use: 0 or more (0: all), got {limit}")
    base = Tagger.from_pretrained(directory)
    setting = base.exit_config(exit) if exit else ExitConfig()  # not the model's stored default: full depth
    dataset = base.load(dev, **load_kwargs)
    sentences = dataset.sentences[:limit] if limit else dataset.sentences
    if not sentences:
        raise ConfigError("dev", f"{dataset.path}: no sentences to score")
    docs, gold = [s.tokens for s in sentences], [s.tags for s in sentences]
    num_layers = base.num_layers
    every_layer = tuple(range(num_layers))
    scores: dict[str, float] = {}  # by name, as stored

    def name(layers: tuple[int, ...]) -> str:
        if not layers:
            return "int8"  # no FFN output float32: int8-mixed with an empty choice is int8
        if layers == every_layer:
            return "int8-mixed, every layer"
        return f"layer {layers[0]}" if len(layers) == 1 else "layers " + ",".join(map(str, layers))

    with tempfile.TemporaryDirectory(prefix="earlytag-quantize-") as tmp, \
            tqdm(total=2 + 2 * num_layers, desc=f"quantizing: scoring {len(sentences)} dev sentences",
                 disable=not progress, file=sys.stderr, leave=False) as bar:
        def score(precision: str, float_layers: tuple[int, ...] = ()) -> float:
            """Dev score at ``setting`` of ``precision`` (int8-mixed: the FFN output of ``float_layers`` float32)."""
            model = copy.deepcopy(base.model)
            model.config.int8_mixed = {backend: {"float_ffn_out": list(float_layers)}}
            tagger = Tagger(model, base.tokenizer, precision=precision, backend=backend)
            if backend == "onnxruntime":  # trial graphs go to a temporary cache, not the user's
                tagger.engine.layers.root = Path(tmp) / tagger.engine.layers.root.name
            pred = tagger.predict_words(docs, setting, batch_size)
            bar.update()
            return task_scores(base.config.task, gold, pred.tags)["score"]

        def score_set(layers: tuple[int, ...]) -> float:
            """Dev score with the FFN output of ``layers`` float32 (each set scored once)."""
            if name(layers) not in scores:
                scores[name(layers)] = score("int8-mixed", layers)
            return scores[name(layers)]

        scores["fp32"] = score("fp32")
        score_set(())
        bound = score_set(every_layer) - tolerance / 100
        single = {k: score_set((k,)) for k in range(num_layers)}
        if scores["int8"] >= bound:
            chosen, tried = (), []
        else:
            chosen, tried = smallest_sufficient(single, score_set, bound, num_layers)
    choice = Int8Choice(list(chosen), scores[name(chosen)], scores, [list(t) for t in tried],
                        stored_path(dataset.path, directory), len(sentences), backend, batch_size, tolerance,
                        None if setting.policy == "none" else setting.to_dict())
    if save:
        from .model.tagger import update_saved_config

        update_saved_config(directory, {"int8_mixed": {**(base.config.int8_mixed or {}), backend: choice.to_dict()}})
    return choice
