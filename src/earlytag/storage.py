"""Writing to disk so that nothing is lost: atomic files, crash-safe model directories, leftovers of killed runs.

- :func:`atomic_write_text` and :class:`AtomicFile`: write a hidden sibling temporary file, fsync it, rename it
  over the target, fsync the directory. A reader sees the old file or the new one, never half of one; a failed
  or killed run leaves the target as it was. Files get the usual permissions (``0o666 & ~umask``).
- :func:`save_dir`: a model directory is written whole into a hidden sibling staging directory and then swapped
  with the old one in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``), so at every instant ``DIR`` is a
  loadable model, the old one or the new one. Files earlytag did not write (anything not in the directory's
  manifest) move over to the new directory: nothing a user put there is ever deleted.
- :func:`check_output_dir` refuses, before any work, a non-empty directory that is not an earlytag model, and an
  existing model unless the caller asked to overwrite it.
- :func:`recover_dir` (run by every save and by loading) finishes or undoes what a killed save left behind;
  :class:`AtomicFile` removes temporary files of processes that no longer exist.

Failpoints: with ``EARLYTAG_FAILPOINT=STEP`` the process dies (``os._exit(137)``, no cleanup runs, as under
``kill -9``) when it reaches ``STEP``; the tests kill a save at every one of its steps this way.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import sys
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

from .errors import ConfigError, EarlytagError

MANIFEST = ".earlytag-manifest.json"  # the files earlytag wrote into a model directory
INCOMING = ".earlytag-incoming"  # marks a staging directory that was never published
# names earlytag writes into a model directory; used for directories saved before manifests existed
KNOWN_FILES = frozenset({
    "config.json", "model.safetensors", "training_log.json", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "vocab.txt", "vocab.json", "merges.txt", "added_tokens.json",
    "sentencepiece.bpe.model", "spiece.model", MANIFEST, INCOMING,
})
SAVE_STEPS = ("staging-created", "files-written", "files-synced", "before-swap", "swapped", "marker-removed",
              "foreign-moved", "old-removed")


def failpoint(step: str) -> None:
    """Die here, as ``kill -9`` would, when ``EARLYTAG_FAILPOINT`` names this step (tests only)."""
    if os.environ.get("EARLYTAG_FAILPOINT") == step:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(137)


def file_mode() -> int:
    """``0o666`` minus the process umask: what ``open(..., 'w')`` would give a new file."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def fsync_path(path: str | os.PathLike) -> None:
    """fsync a file or a directory (directories: where the platform allows it)."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if Path(path).is_dir() and hasattr(os, "O_DIRECTORY") else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except OSError:
        return False
    return True


def _pid_of(path: Path) -> int | None:
    tail = path.name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else None


def _stale(path: Path) -> bool:
    pid = _pid_of(path)
    return pid is not None and not pid_alive(pid)


# ----------------------------------------------------------------------------- single files


class AtomicFile:
    """``with AtomicFile(path) as f: f.write(...)``: the target appears whole when the block succeeds, and is
    left untouched when it fails (the temporary file is removed; a killed process's one is removed by the next
    writer of the same target)."""

    def __init__(self, path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8"):
        self.path = Path(path)
        self.mode = mode
        self.encoding = None if "b" in mode else encoding
        self.tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        self.file = None

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for old in self.path.parent.glob(f".{self.path.name}.tmp-*"):
            if _stale(old):
                old.unlink(missing_ok=True)
        self.file = open(self.tmp, self.mode, encoding=self.encoding)
        return self.file

    def __exit__(self, exc_type, exc, tb) -> None:
        f = self.file
        try:
            if exc_type is None:
                f.flush()
                os.fsync(f.fileno())
                f.close()
                os.chmod(self.tmp, file_mode())
                os.replace(self.tmp, self.path)
                fsync_path(self.path.parent)
        finally:
            if not f.closed:
                f.close()
            self.tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file so that readers never see half of it."""
    with AtomicFile(path) as f:
        f.write(text)


# ----------------------------------------------------------------------------- model directories


def is_model_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds an earlytag model (a config.json with an ``earlytag`` object)."""
    config = Path(path) / "config.json"
    try:
        raw = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(raw, dict) and isinstance(raw.get("earlytag"), dict)


def _ours(directory: Path) -> set[str]:
    """Names earlytag wrote into ``directory`` (its manifest; the known names for older directories)."""
    try:
        listed = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))["files"]
        return {str(n) for n in listed} | {MANIFEST, INCOMING}
    except (OSError, ValueError, KeyError, TypeError):
        return set(KNOWN_FILES)


def check_output_dir(directory: str | os.PathLike, overwrite: bool = False, flag: str = "--overwrite") -> None:
    """Refuse to write a model into ``directory`` when that would replace something the user has not asked to
    replace: a non-empty directory that is not an earlytag model, or an existing model without ``overwrite``."""
    directory = Path(directory)
    recover_dir(directory)
    if directory.exists() and not directory.is_dir():
        raise ConfigError("output", f"{directory} exists and is not a directory")
    if not directory.is_dir() or not any(directory.iterdir()):
        return
    if not is_model_dir(directory):
        entries = sorted(p.name for p in directory.iterdir())
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise ConfigError("output", f"{directory} is not empty ({shown}) and is not an earlytag model; "
                                    "choose a new or empty directory")
    if not overwrite:
        raise ConfigError("output", f"{directory} already holds an earlytag model; pass {flag} to replace it "
                                    "(files earlytag did not write are kept)")


def _swap(a: Path, b: Path) -> bool:
    """Exchange two directories atomically (Linux renameat2 RENAME_EXCHANGE); False where not supported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: the file system cannot exchange
        return False
    raise OSError(err, os.strerror(err), str(b))


def _move_foreign(src: Path, dst: Path) -> None:
    """Move the entries of ``src`` that earlytag did not write into ``dst`` (renamed if the name is taken)."""
    ours = _ours(src)
    for entry in sorted(src.iterdir()):
        if entry.name in ours:
            continue
        target = dst / entry.name
        n = 1
        while target.exists():
            target = dst / f"{entry.stem}.kept-{n}{entry.suffix}"
            n += 1
        os.replace(entry, target)


def _remove_ours(directory: Path) -> None:
    """Delete what earlytag wrote in ``directory``, then the directory if nothing else is left."""
    for name in _ours(directory):
        p = directory / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    try:
        directory.rmdir()
    except OSError:  # something else is in there: keep it
        pass


def recover_dir(directory: str | os.PathLike) -> list[str]:
    """Finish or undo a save of ``directory`` that a killed process left half done; returns what it did.

    - a staging directory never published (``.DIR.saving-PID`` with the incoming marker): removed;
    - the old model after the swap (``.DIR.saving-PID`` without the marker): its foreign files move into DIR,
      the rest is removed;
    - the old model moved aside by the two-rename fallback (``.DIR.old-PID``): put back if DIR is missing,
      else treated like the old model after a swap;
    - the incoming marker inside DIR (killed right after the swap): removed.
    Leftovers of live processes (a save in progress) are left alone.
    """
    directory = Path(directory)
    parent = directory.parent
    done: list[str] = []
    if not parent.is_dir():
        return done
    for leftover in sorted(parent.glob(f".{directory.name}.old-*")):
        if not leftover.is_dir() or not _stale(leftover):
            continue
        if not directory.exists():
            os.replace(leftover, directory)
            done.append(f"restored {directory} from {leftover.name}")
        else:
            _move_foreign(leftover, directory)
            _remove_ours(leftover)
            done.append(f"removed {leftover.name}")
    for leftover in sorted(parent.glob(f".{directory.name}.saving-*")):
        if not leftover.is_dir() or not _stale(leftover):
            continue
        if (leftover / INCOMING).exists():
            shutil.rmtree(leftover, ignore_errors=True)  # never published: only files earlytag was writing
        elif not directory.exists():
            os.replace(leftover, directory)  # the old model, and DIR is gone: put it back
        else:
            _move_foreign(leftover, directory)
            _remove_ours(leftover)
        done.append(f"removed {leftover.name}")
    marker = directory / INCOMING
    if marker.exists():
        marker.unlink()
        done.append(f"removed {marker}")
    if done:
        fsync_path(parent)
    return done


def save_dir(directory: str | os.PathLike, write: Callable[[Path], Iterable[str]], overwrite: bool = False) -> Path:
    """Write a model directory crash-safely. ``write(staging)`` writes the files into ``staging`` and returns the
    names it wrote. ``overwrite=False`` refuses an existing model; a non-model non-empty directory is always
    refused (:func:`check_output_dir`)."""
    directory = Path(directory)
    check_output_dir(directory, overwrite, flag="overwrite=True")
    parent = directory.parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = parent / f".{directory.name}.saving-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    (staging / INCOMING).touch()
    failpoint("staging-created")
    try:
        names = sorted({str(n) for n in write(staging)} | {MANIFEST})
        manifest = {"format": 1, "save_id": uuid.uuid4().hex, "files": names}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        mode = file_mode()
        for p in staging.rglob("*"):
            if p.is_file():
                os.chmod(p, mode)
        failpoint("files-written")
        for p in staging.rglob("*"):
            if p.is_file():
                fsync_path(p)
        fsync_path(staging)
        failpoint("files-synced")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    failpoint("before-swap")
    if not directory.exists():
        os.replace(staging, directory)
        (directory / INCOMING).unlink()
        fsync_path(parent)
        return directory
    if _swap(staging, directory):  # DIR now holds the new model, staging the old one
        fsync_path(parent)
        failpoint("swapped")
        (directory / INCOMING).unlink()
        failpoint("marker-removed")
        _move_foreign(staging, directory)
        fsync_path(directory)
        failpoint("foreign-moved")
        _remove_ours(staging)
        fsync_path(parent)
        failpoint("old-removed")
        return directory
    # no atomic exchange on this file system: two renames; a kill between them is undone by recover_dir
    backup = parent / f".{directory.name}.old-{os.getpid()}"
    os.replace(directory, backup)
    failpoint("moved-aside")
    try:
        os.replace(staging, directory)
    except OSError:
        os.replace(backup, directory)
        raise
    (directory / INCOMING).unlink()
    _move_foreign(backup, directory)
    _remove_ours(backup)
    fsync_path(parent)
    return directory


def require_model_dir(directory: str | os.PathLike) -> Path:
    """Recover an interrupted save of ``directory`` if one is pending, then insist that it exists."""
    directory = Path(directory)
    if not directory.exists():
        recover_dir(directory)
    if not directory.is_dir():
        raise EarlytagError(f"{directory}: no such model directory")
    return directory
