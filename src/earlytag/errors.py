"""Errors a user can act on. The CLI prints them as one line, never as a traceback."""

from __future__ import annotations

import os
from pathlib import Path


class EarlytagError(Exception):
    """Base class of every error earlytag raises on purpose (bad input, bad settings)."""


class DataError(EarlytagError):
    """Malformed input data: names the file and, where there is one, the line.

    >>> str(DataError("bad tag 'X-PER'", path="train.iob2", line=12))
    "train.iob2:12: bad tag 'X-PER'"
    """

    def __init__(self, message: str, path: str | os.PathLike | None = None, line: int | None = None):
        self.message = message
        self.path = None if path is None else str(path)
        self.line = line
        where = self.path or "<input>"
        if line is not None:
            where = f"{where}:{line}"
        super().__init__(f"{where}: {message}")


class ConfigError(EarlytagError):
    """An invalid setting (exit policy, threshold, option): names the field."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a file so that readers never see half of it: write a sibling temp file, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
