"""The earlytag part of a model's ``config.json`` (the rest is the encoder's own Hugging Face config)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..defaults import HEADS, QUANTIZE_BACKENDS
from ..errors import ConfigError

TASKS = ("ner", "chunk", "pos", "cws")


@dataclass
class TaggerConfig:
    """Settings a tagger is built from; stored under ``"earlytag"`` in ``config.json``."""

    labels: list[str]  # label i of every exit head
    task: str = "ner"  # ner | chunk | pos | cws
    input_scheme: str | None = "iob2"  # chunk scheme of the training files (used to write CoNLL output back)
    label_scheme: str | None = "iob2"  # chunk scheme the heads predict (iob2 or iobes)
    head_dropout: float = 0.1
    head: str = "softmax"  # softmax (an independent softmax per word) | crf (earlytag.model.heads)
    crf: dict[str, Any] | None = None  # CRF settings: transitions, decode, meanfield_iters, uncertainty
    slim: dict[str, Any] | None = None  # a slim encoder: kept heads and FFN width per layer (earlytag.model.slim)
    max_length: int = 512  # sub-word tokens per window, special tokens included
    window_overlap: int = 16  # words shared by consecutive windows of a long document
    word_splitter: str = "regex"  # how raw text becomes words: regex (words + punctuation) | chars | whitespace
    encoder_name: str | None = None  # where the encoder came from (informational)
    exit: dict[str, Any] | None = None  # the default exit settings (see earlytag.engine.ExitConfig)
    exit_calibration: dict[str, Any] | None = None  # how `exit` was chosen (earlytag.calibrate)
    int8_mixed: dict[str, Any] | None = None  # per backend, the FFN outputs int8-mixed keeps float (earlytag.quantize)
    training: dict[str, Any] = field(default_factory=dict)  # how the model was trained (informational)

    def __post_init__(self):
        for name, kinds in _TYPES.items():
            value = getattr(self, name)
            if not any(_is(value, k) for k in kinds):
                expected = " or ".join(_KIND_NAMES[k] for k in kinds)
                raise ConfigError(name, f"must be {expected}, got {value!r:.60}")
        if not self.labels:
            raise ConfigError("labels", "a tagger needs at least one label")
        if len(set(self.labels)) != len(self.labels):
            raise ConfigError("labels", "labels must be unique")
        if self.task not in TASKS:
            raise ConfigError("task", f"unknown task {self.task!r}; expected one of {', '.join(TASKS)}")
        if self.word_splitter not in ("regex", "chars", "whitespace"):
            raise ConfigError("word_splitter", f"unknown splitter {self.word_splitter!r}")
        if self.max_length < 8:
            raise ConfigError("max_length", "must be at least 8 sub-word tokens")
        if not 0 <= self.window_overlap <= self.max_length // 4:
            raise ConfigError("window_overlap", f"must be between 0 and max_length/4 ({self.max_length // 4}) "
                                                f"words, got {self.window_overlap}")
        if self.head not in HEADS:
            raise ConfigError("head", f"expected one of {', '.join(HEADS)}, got {self.head!r}")
        if self.head == "crf":
            from .heads import crf_settings

            self.crf = crf_settings(self.crf)
        elif self.crf is not None:
            raise ConfigError("crf", "CRF settings on a softmax head")
        for backend, choice in (self.int8_mixed or {}).items():
            if backend not in QUANTIZE_BACKENDS:
                raise ConfigError("int8_mixed", f"its keys are the backends a choice was made for "
                                                f"({', '.join(QUANTIZE_BACKENDS)}), got {backend!r:.40}")
            kept = choice.get("float_ffn_out") if isinstance(choice, dict) else None
            if not (isinstance(kept, list) and all(_is(k, "int") and k >= 0 for k in kept)):
                raise ConfigError(f"int8_mixed.{backend}.float_ffn_out",
                                  f"must be a list of layer indices (from 0), got {kept!r:.60}")
        if not 0.0 <= self.head_dropout < 1.0:
            raise ConfigError("head_dropout", f"must be in [0, 1), got {self.head_dropout}")

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def units(self) -> str:
        """What one token is: ``chars`` (a character: cws, character-level NER) or ``words``."""
        return "chars" if self.word_splitter == "chars" else "words"

    @property
    def is_chunking(self) -> bool:
        return self.task in ("ner", "chunk")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaggerConfig:
        if not isinstance(data, dict):
            raise ConfigError("earlytag", f"must be a JSON object, got {data!r:.60}")
        known = {f.name for f in fields(cls)}
        if "labels" not in data:
            raise ConfigError("labels", "missing")
        return cls(**{k: v for k, v in data.items() if k in known})


def _is(value: Any, kind: str) -> bool:
    if kind == "none":
        return value is None
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    if kind == "dict":
        return isinstance(value, dict)
    if kind == "labels":
        return isinstance(value, list) and all(isinstance(x, str) and x for x in value)
    raise ValueError(kind)


_KIND_NAMES = {"none": "null", "int": "an integer", "float": "a number", "str": "a string", "dict": "an object",
               "labels": "a list of non-empty strings"}
_TYPES = {"labels": ("labels",), "task": ("str",), "input_scheme": ("str", "none"), "label_scheme": ("str", "none"),
          "head_dropout": ("float",), "head": ("str",), "crf": ("dict", "none"), "slim": ("dict", "none"),
          "max_length": ("int",), "window_overlap": ("int",), "word_splitter": ("str",),
          "encoder_name": ("str", "none"), "exit": ("dict", "none"), "exit_calibration": ("dict", "none"),
          "int8_mixed": ("dict", "none"), "training": ("dict",)}
