"""Keep the C allocator from handing freed tensor memory back to the kernel between calls.

On a CPU, torch and NumPy take every tensor's memory from the C library's ``malloc``. glibc's ``malloc`` gives
freed memory at the top of its heap back to the kernel once more than ``M_TRIM_THRESHOLD`` of it is free, and
serves blocks above ``M_MMAP_THRESHOLD`` with a fresh ``mmap`` each; both thresholds start small and move
with the program's allocations. An inference loop frees and reallocates the same few-hundred-kilobyte to
few-megabyte buffers at every layer step and every decode, so whether those buffers come back as memory the
process already touched, or as new pages that the kernel must fault in and zero, depends on the history of
the heap: the same CRF decoding call took two to three times as long in some runs as in others, and token
exit kept less of its FLOPs speed-up at batch 32 (docs/results.md, "The C allocator").

:func:`keep_freed_memory` fixes both thresholds high (glibc's ``mallopt``): freed memory stays with the
process, to be reused, up to ``trim_mb`` at the top of the heap. The cost is memory: the process keeps its
peak heap instead of returning it. The CLI calls it for every verb (``EARLYTAG_KEEP_FREED_MEMORY=0`` turns
it off); the Python API leaves the process's allocator alone unless asked, as it is a process-wide setting.
Without glibc (macOS, Windows, musl) it does nothing and returns ``False``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

from .errors import ConfigError

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 << 20  # glibc refuses a larger mmap threshold on 64-bit systems (HEAP_MAX_SIZE / 2)
ENV = "EARLYTAG_KEEP_FREED_MEMORY"

_state: dict[str, int] = {}


def keep_freed_memory(trim_mb: int = 1024) -> bool:
    """Keep up to ``trim_mb`` MiB of freed memory at the top of glibc's heap (no trimming below it) and serve
    blocks up to 32 MiB from the heap rather than from fresh ``mmap`` pages. Returns whether glibc took both
    settings (``False``, and nothing changed, without glibc)."""
    if trim_mb < 0:
        raise ConfigError("trim_mb", f"must be at least 0, got {trim_mb}")
    mallopt = _mallopt()
    if mallopt is None:
        return False
    ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(mallopt(M_TRIM_THRESHOLD, trim_mb << 20))
    if ok:
        _state["trim_mb"] = trim_mb
    return ok


def kept_freed_memory() -> int | None:
    """The ``trim_mb`` this process set with :func:`keep_freed_memory`, or None (for benchmark metadata)."""
    return _state.get("trim_mb")


def keep_freed_memory_from_env() -> bool:
    """What the CLI does before every verb: :func:`keep_freed_memory` unless ``EARLYTAG_KEEP_FREED_MEMORY`` is
    ``0`` (or ``false``/``no``/``off``); a number above 1 sets ``trim_mb``."""
    value = os.environ.get(ENV, "").strip().lower()
    if value in ("0", "false", "no", "off"):
        return False
    if value in ("", "1", "true", "yes", "on"):
        return keep_freed_memory()
    try:
        trim_mb = int(value)
    except ValueError:
        trim_mb = -1
    if trim_mb < 0:
        raise ConfigError(ENV, f"expected 0 (off), 1 (on) or a size in MiB, got {value!r}")
    return keep_freed_memory(trim_mb)


def _mallopt():
    """glibc's ``mallopt``, or None where the C library is not glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it (musl has a mallopt that ignores everything)
        return libc.mallopt
    except (OSError, AttributeError):
        return None
