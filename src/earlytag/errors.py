"""Errors a user can act on. The CLI prints them as one line, never as a traceback."""

from __future__ import annotations

import os


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
