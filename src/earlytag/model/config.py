"""The earlytag part of a model's ``config.json`` (the rest is the encoder's own Hugging Face config)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

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
    max_length: int = 512  # sub-word tokens per window, special tokens included
    window_overlap: int = 16  # words shared by consecutive windows of a long document
    word_splitter: str = "regex"  # how raw text becomes words: regex (words + punctuation) | chars | whitespace
    encoder_name: str | None = None  # where the encoder came from (informational)
    exit: dict[str, Any] | None = None  # the default exit settings (see earlytag.engine.ExitConfig)
    exit_calibration: dict[str, Any] | None = None  # how `exit` was chosen (earlytag.calibrate)
    training: dict[str, Any] = field(default_factory=dict)  # how the model was trained (informational)

    def __post_init__(self):
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

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def is_chunking(self) -> bool:
        return self.task in ("ner", "chunk")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaggerConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
