"""Where data comes from: a path, or a known public data set by name (``uner-en-ewt:train``).

Names are looked up in the data directories (``--data-dir`` or ``EARLYTAG_DATA``, several joined with
``os.pathsep``), then in the download cache (``EARLYTAG_CACHE``, default ``~/.cache/earlytag``). A name that
is in neither is downloaded from its GitHub repository into the cache, unless ``EARLYTAG_OFFLINE=1`` (or
``HF_HUB_OFFLINE=1``) is set. ``EARLYTAG_MIRROR`` replaces ``https://raw.githubusercontent.com`` (a local
mirror, or a test server).
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError
from . import schemes
from .readers import ReadReport, read_file
from .segmentation import to_character_chunks, to_character_sentence
from .types import Sentence

TASKS = ("ner", "chunk", "pos", "cws")
UNITS = ("words", "chars")  # what a token is: a word of the file, or one character
GITHUB_RAW = "https://raw.githubusercontent.com"


@dataclass(frozen=True)
class KnownDataset:
    name: str
    folder: str  # folder name inside a data directory
    repo: str  # GitHub owner/repo, branch master
    files: dict[str, str]  # split -> file name in the repository
    task: str
    local_files: dict[str, str] = field(default_factory=dict)  # split -> preferred file name in a data directory

    def url(self, split: str) -> str:
        base = os.environ.get("EARLYTAG_MIRROR", GITHUB_RAW).rstrip("/")
        return f"{base}/{self.repo}/master/{self.files[split]}"


KNOWN: dict[str, KnownDataset] = {
    d.name: d
    for d in [
        KnownDataset(
            "uner-en-ewt", "uner_english_ewt", "UniversalNER/UNER_English-EWT",
            {s: f"en_ewt-ud-{s}.iob2" for s in ("train", "dev", "test")}, "ner",
            # the copy in this project's shared data has a normalised train file (see its PROVENANCE.txt)
            {"train": "en_ewt-ud-train.normalized-from-early.iob2"},
        ),
        KnownDataset(
            "ud-en-ewt", "ud_english_ewt", "UniversalDependencies/UD_English-EWT",
            {s: f"en_ewt-ud-{s}.conllu" for s in ("train", "dev", "test")}, "pos",
        ),
        KnownDataset(
            "uner-zh-gsdsimp", "uner_chinese_gsdsimp", "UniversalNER/UNER_Chinese-GSDSIMP",
            {s: f"zh_gsdsimp-ud-{s}.iob2" for s in ("train", "dev", "test")}, "ner",
        ),
        KnownDataset(
            "ud-zh-gsdsimp", "ud_chinese_gsdsimp", "UniversalDependencies/UD_Chinese-GSDSimp",
            {s: f"zh_gsdsimp-ud-{s}.conllu" for s in ("train", "dev", "test")}, "pos",
        ),
    ]
}


def data_dirs(data_dir: str | os.PathLike | None = None) -> list[Path]:
    dirs = []
    if data_dir:
        dirs.append(Path(data_dir))
    for part in os.environ.get("EARLYTAG_DATA", "").split(os.pathsep):
        if part:
            dirs.append(Path(part))
    return dirs


def cache_dir() -> Path:
    return Path(os.environ.get("EARLYTAG_CACHE", Path.home() / ".cache" / "earlytag"))


def offline() -> bool:
    return any(os.environ.get(v, "") not in ("", "0") for v in ("EARLYTAG_OFFLINE", "HF_HUB_OFFLINE"))


def fetch_bytes(url: str, timeout: float = 60.0) -> bytes:
    """Download a URL (monkeypatched in tests)."""
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - fixed https/mirror URLs
        return response.read()


def parse_spec(spec: str) -> tuple[KnownDataset, str] | None:
    """``'uner-en-ewt:dev'`` -> (dataset, 'dev'); None when ``spec`` is not a known name."""
    name, sep, split = str(spec).partition(":")
    if name not in KNOWN:
        return None
    dataset = KNOWN[name]
    split = split or "train"
    if split not in dataset.files:
        raise DataError(f"data set {name} has splits {', '.join(dataset.files)}, not {split!r}", spec)
    return dataset, split


def resolve(spec: str | os.PathLike, data_dir: str | os.PathLike | None = None, download: bool = True) -> Path:
    """A path to a local file for ``spec`` (a path, or ``name:split`` of a known data set)."""
    path = Path(spec)
    if path.exists():
        return path
    known = parse_spec(str(spec))
    if known is None:
        names = ", ".join(f"{k}:SPLIT" for k in KNOWN)
        raise DataError(f"no such file, and not a known data set name ({names})", spec)
    dataset, split = known
    candidates = [dataset.local_files.get(split), dataset.files[split]]
    for root in data_dirs(data_dir) + [cache_dir() / "data"]:
        for name in filter(None, candidates):
            for folder in (root / dataset.folder, root):
                if (folder / name).is_file():
                    return folder / name
    target = cache_dir() / "data" / dataset.folder / dataset.files[split]
    searched = ", ".join(f"{d}{'' if d.is_dir() else ' (no such directory)'}" for d in data_dirs(data_dir))
    where = f"{searched or 'no data directory (--data-dir / EARLYTAG_DATA unset)'} nor in the cache {cache_dir() / 'data'}"
    if not download or offline():
        raise DataError(f"not found in {where}, and downloading is off (EARLYTAG_OFFLINE)", spec)
    try:
        return download_to(dataset.url(split), target)
    except DataError as err:
        raise DataError(f"not found in {where}; {err.message} ({err.path}). Point --data-dir or EARLYTAG_DATA "
                        f"at a directory that holds {dataset.folder}/", spec) from None


def download_to(url: str, target: Path) -> Path:
    """Download ``url`` to ``target`` atomically: a failed download leaves nothing behind."""
    try:
        data = fetch_bytes(url)
    except (urllib.error.URLError, OSError) as err:
        raise DataError(f"download failed: {getattr(err, 'reason', err)}", url) from None
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part-{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    return target


def default_task(spec: str | os.PathLike) -> str | None:
    known = parse_spec(str(spec)) if not Path(spec).exists() else None
    return known[0].task if known else None


@dataclass
class Dataset:
    sentences: list[Sentence]
    task: str
    scheme: str | None  # the chunk scheme of the file (ner/chunk), None for pos/cws
    path: Path
    scheme_note: str = ""  # how the scheme was found (detected, and why; or given)
    report: ReadReport | None = None  # what a lenient read (on_error skip/repair) left out

    @property
    def labels(self) -> list[str]:
        return sorted({t for s in self.sentences for t in (s.tags or [])})


def load_dataset(
    spec: str | os.PathLike,
    task: str,
    *,
    scheme: str = "auto",
    strict: bool = False,
    tag_field: str = "upos",
    format: str = "auto",
    token_col: int = 0,
    tag_col: int = -1,
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    on_error: str = "fail",
    units: str = "words",
) -> Dataset:
    """Read a tagged data set for ``task`` with its tags normalised (IOB2 for chunk tasks, BMES for cws).
    ``on_error`` (fail | skip | repair): what a bad line does (the dataset's ``report`` counts it).
    ``units="chars"``: one token per character (chunk tags spread over a word's characters; cws always is)."""
    if task not in TASKS:
        raise DataError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}", spec)
    if units not in UNITS or (units == "chars" and task == "pos"):
        raise DataError(f"units {units!r} with task {task}: expected words, or chars for ner/chunk/cws", spec)
    path = resolve(spec, data_dir, download)
    report = ReadReport()
    sentences = read_file(path, format, tag_field=tag_field, token_col=token_col, tag_col=tag_col,
                          on_error=on_error, report=report)
    used_scheme, note = None, ""
    if task == "cws":
        sentences = [to_character_sentence(s) for s in sentences]
    elif task in ("ner", "chunk"):
        used_scheme, note = normalise_chunk_tags(sentences, scheme, strict, path)
        if units == "chars":
            sentences = [to_character_chunks(s) for s in sentences]
    return Dataset(sentences, task, used_scheme, path, note, report)


def normalise_chunk_tags(sentences: list[Sentence], scheme: str, strict: bool, path) -> tuple[str, str]:
    """Validate chunk tags in place and rewrite them as IOB2; returns the scheme the file was in and how it was
    found."""
    try:
        scheme = schemes.canonical_scheme(scheme)
    except ValueError as err:
        raise DataError(str(err), path) from None
    note = f"{scheme} (given)"
    if scheme == "auto":
        for sent in sentences:  # find the first bad tag with its line before guessing the scheme
            _at_line(sent, path, lambda s=sent: schemes.parse(s.tags))
        try:
            scheme, why = schemes.explain_scheme([s.tags for s in sentences])
        except schemes.TagError as err:
            raise DataError(str(err), path) from None
        note = f"{scheme} (detected: {why})"
    for sent in sentences:
        if strict:
            _at_line(sent, path, lambda s=sent: schemes.validate(s.tags, scheme))
        sent.tags = _at_line(sent, path, lambda s=sent: schemes.to_iob2(s.tags, scheme))
    return scheme, note


def _at_line(sent: Sentence, path, fn):
    """Run ``fn``; a TagError becomes a DataError at the line of the offending token."""
    try:
        return fn()
    except schemes.TagError as err:
        index = getattr(err, "index", 0)
        raise DataError(str(err), path, sent.line_of(index)) from None


def parse_label_map(text: str | None) -> dict[str, str]:
    """``"MISC=O,ORGANIZATION=ORG"`` -> ``{"MISC": "O", "ORGANIZATION": "ORG"}`` (an error names the bad item)."""
    out: dict[str, str] = {}
    for item in filter(None, (x.strip() for x in (text or "").split(","))):
        src, sep, dst = item.partition("=")
        if not sep or not src.strip() or not dst.strip():
            raise DataError(f"label map item {item!r} is not FROM=TO", "--label-map")
        out[src.strip()] = dst.strip()
    return out


def map_labels(sentences: list[Sentence], task: str, label_map: dict[str, str] | None = None,
               types: list[str] | None = None) -> dict[str, int]:
    """Rewrite gold tags in place: chunk types renamed by ``label_map`` (``TYPE=O`` drops the chunks), and for
    chunk tasks only the ``types`` kept (the others become O). Returns how many tags each rule changed."""
    label_map = label_map or {}
    keep = set(types) if types else None
    changed: dict[str, int] = {}
    chunking = task in ("ner", "chunk")
    for sent in sentences:
        new = []
        for tag in sent.tags or []:
            out = tag
            if chunking and tag != "O":
                prefix, kind = tag.split("-", 1)
                kind = label_map.get(kind, kind)
                out = "O" if kind == "O" or (keep is not None and kind not in keep) else f"{prefix}-{kind}"
            elif not chunking:
                out = label_map.get(tag, tag)
            if out != tag:
                rule = tag.split("-", 1)[-1] if chunking else tag
                changed[rule] = changed.get(rule, 0) + 1
            new.append(out)
        if sent.tags is not None:
            sent.tags = new
    return changed
