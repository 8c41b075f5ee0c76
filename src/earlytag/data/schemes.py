"""Tag schemes for chunk labels: IOB1, IOB2, IOBES (a.k.a. BIOES), BILOU.

Everything inside earlytag is IOB2; files in other schemes are normalised on the way in and converted
back on the way out. A model stores the scheme of the data it was trained on (``input_scheme``) and
the scheme its heads predict (``label_scheme``).

Span extraction comes in the two flavours people compare against:

- ``default``: conlleval's rules (what seqeval does without ``mode="strict"``): an ``I-X`` after ``O``
  starts a chunk, a change of type ends one.
- ``strict``: only well-formed chunks of the given scheme count (seqeval ``mode="strict"``).

Spans are ``(label, start, end)`` with ``end`` exclusive, in word positions.
"""

from __future__ import annotations

from collections.abc import Sequence

SCHEMES = ("iob1", "iob2", "iobes", "bilou")
_ALIASES = {"bio": "iob2", "bioes": "iobes", "iob": "iob2", "biolu": "bilou"}
_PREFIXES = {
    "iob1": set("IOB"),
    "iob2": set("IOB"),
    "iobes": set("IOBES"),
    "bilou": set("BILOU"),
}
Span = tuple[str, int, int]


class TagError(ValueError):
    """A tag that the scheme does not allow; ``index`` is the position in the sequence."""

    def __init__(self, message: str, index: int):
        super().__init__(message)
        self.index = index


def canonical_scheme(name: str) -> str:
    key = name.lower()
    key = _ALIASES.get(key, key)
    if key not in SCHEMES and key != "auto":
        raise ValueError(f"unknown tag scheme {name!r}; expected one of {', '.join(SCHEMES)} or auto")
    return key


def split_tag(tag: str) -> tuple[str, str]:
    """``'B-PER'`` -> ``('B', 'PER')``; ``'O'`` -> ``('O', '')``; ``'B'`` -> ``('B', '')``."""
    if tag == "O":
        return "O", ""
    prefix, sep, label = tag.partition("-")
    if len(prefix) != 1 or (sep and not label):
        raise TagError(f"malformed tag {tag!r}: expected O or PREFIX-TYPE such as B-PER", 0)
    return prefix, label


def _join(prefix: str, label: str) -> str:
    return "O" if prefix == "O" else (f"{prefix}-{label}" if label else prefix)


def parse(tags: Sequence[str], scheme: str = "auto") -> list[tuple[str, str]]:
    """Split every tag, checking its prefix against the scheme; a :class:`TagError` gives the index."""
    scheme = canonical_scheme(scheme)
    allowed = set("BIOESLU") if scheme == "auto" else _PREFIXES[scheme]
    out = []
    for i, tag in enumerate(tags):
        try:
            prefix, label = split_tag(tag)
        except TagError as err:
            raise TagError(str(err), i) from None
        if prefix not in allowed:
            what = "a known prefix (B I O E S L U)" if scheme == "auto" else f"part of the {scheme.upper()} scheme"
            raise TagError(f"tag {tag!r}: prefix {prefix!r} is not {what}", i)
        out.append((prefix, label))
    return out


def detect_scheme(sequences: Sequence[Sequence[str]]) -> str:
    """Guess the scheme of a data set from the prefixes it uses (:func:`explain_scheme` says why)."""
    return explain_scheme(sequences)[0]


def explain_scheme(sequences: Sequence[Sequence[str]]) -> tuple[str, str]:
    """``(scheme, why)`` from the prefixes a data set uses.

    ``E``/``S`` means IOBES, ``L``/``U`` means BILOU. With only ``B``/``I``/``O`` it is IOB1 when ``B`` only
    ever separates two adjacent chunks of the same type, or when there is no ``B`` at all but chunks start with
    ``I``; IOB2 otherwise.
    """
    prefixes: set[str] = set()
    b_after_same = b_total = 0
    for seq in sequences:
        prev = ("O", "")
        for tag in seq:
            cur = split_tag(tag)
            prefixes.add(cur[0])
            if cur[0] == "B":
                b_total += 1
                b_after_same += prev[0] in "BI" and prev[1] == cur[1]
            prev = cur
    unknown = prefixes - set("BIOELSU")
    if unknown:
        raise TagError(f"unknown tag prefix(es) {sorted(unknown)}", 0)
    if prefixes & set("ES") and prefixes & set("LU"):
        raise TagError("tags mix IOBES (E-/S-) and BILOU (L-/U-) prefixes", 0)
    if prefixes & set("ES"):
        return "iobes", "E-/S- prefixes are used"
    if prefixes & set("LU"):
        return "bilou", "L-/U- prefixes are used"
    if "I" in prefixes and b_total and b_after_same == b_total:
        return "iob1", (f"all {b_total} B- tags separate two adjacent chunks of the same type, as IOB1 uses them "
                        "(pass --scheme iob2 if the file is IOB2)")
    if "I" in prefixes and not b_total:
        return "iob1", "chunks start with I- and there is no B- tag (pass --scheme iob2 if the file is IOB2)"
    if not b_total:
        return "iob2", "no chunk tags at all"
    return "iob2", (f"{b_total - b_after_same} of {b_total} B- tags start a chunk after O or another type "
                    "(pass --scheme iob1 if the file is IOB1)")


def validate(tags: Sequence[str], scheme: str) -> None:
    """Raise :class:`TagError` at the first tag that breaks the scheme's strict rules."""
    scheme = canonical_scheme(scheme)
    parsed = parse(tags, scheme)
    begin, inside, end, _ = _roles(scheme)
    open_chunk = begin + inside  # prefixes after which a chunk is still open
    prev = ("O", "")
    for i, (prefix, label) in enumerate(parsed):
        continues = prev[0] in open_chunk and prev[1] == label
        if scheme == "iob1":
            if prefix == "B" and not continues:
                raise TagError(f"B-{label} must follow a chunk of the same type in IOB1", i)
        elif prefix in inside + end and not continues:
            raise TagError(f"{_join(prefix, label)} after {_join(*prev)}: a chunk must start with {begin}-", i)
        if end and prev[0] in open_chunk and not (prefix in inside + end and label == prev[1]):
            raise TagError(f"chunk {_join(*prev)} is not closed with {end}-{prev[1]} before {_join(prefix, label)}", i)
        prev = (prefix, label)
    if end and prev[0] in open_chunk:
        raise TagError(f"chunk {_join(*prev)} is not closed at the end of the sentence", len(parsed) - 1)


def _roles(scheme: str) -> tuple[str, str, str, str]:
    """(begin, inside, end, single) prefixes of a scheme."""
    return {
        "iob1": ("B", "I", "", ""),
        "iob2": ("B", "I", "", ""),
        "iobes": ("B", "I", "E", "S"),
        "bilou": ("B", "I", "L", "U"),
    }[scheme]


def to_iob2(tags: Sequence[str], scheme: str) -> list[str]:
    """Normalise to IOB2. Lenient: an ``I-X`` that does not continue a chunk of type X starts one."""
    scheme = canonical_scheme(scheme)
    parsed = parse(tags, scheme)
    _, _, end, single = _roles(scheme)
    out: list[str] = []
    prev = ("O", "")
    for prefix, label in parsed:
        if prefix == "O":
            out.append("O")
        elif prefix in ("B",) + ((single,) if single else ()):
            out.append(_join("B", label))
        else:  # I or the scheme's end prefix
            # continues an open chunk of the same type (a chunk closed by E/S or L/U is not open)
            continues = prev[0] != "O" and prev[1] == label and prev[0] not in (end, single)
            out.append(_join("I" if continues else "B", label))
        prev = (prefix, label)
    return out


def from_iob2(tags: Sequence[str], scheme: str) -> list[str]:
    """Convert IOB2 tags (as produced by :func:`to_iob2`) to another scheme."""
    scheme = canonical_scheme(scheme)
    tags = to_iob2(tags, "iob2")
    if scheme == "iob2":
        return tags
    parsed = [split_tag(t) for t in tags]
    n = len(parsed)
    out = []
    for i, (prefix, label) in enumerate(parsed):
        if prefix == "O":
            out.append("O")
            continue
        nxt = parsed[i + 1] if i + 1 < n else ("O", "")
        continued = nxt[0] == "I" and nxt[1] == label
        if scheme == "iob1":
            prev = parsed[i - 1] if i else ("O", "")
            adjacent = prefix == "B" and prev[0] != "O" and prev[1] == label
            out.append(_join("B" if adjacent else "I", label))
        else:
            _, _, end, single = _roles(scheme)
            if prefix == "B":
                out.append(_join("B" if continued else single, label))
            else:
                out.append(_join("I" if continued else end, label))
    return out


def spans(tags: Sequence[str], mode: str = "default", scheme: str = "iob2") -> list[Span]:
    """Extract chunks as ``(label, start, end)`` (end exclusive).

    ``mode='default'`` follows conlleval on any prefix mix; ``mode='strict'`` keeps only chunks that are
    well formed in ``scheme``.
    """
    if mode == "default":
        return _spans_conlleval(tags)
    if mode == "strict":
        return _spans_strict(tags, canonical_scheme(scheme))
    raise ValueError(f"unknown span mode {mode!r}; expected 'default' or 'strict'")


def _spans_conlleval(tags: Sequence[str]) -> list[Span]:
    # A chunk ends before position i when the previous tag closes it or the type changes; one starts at i
    # when the tag opens it or the type changes (conlleval / seqeval.get_entities).
    out: list[Span] = []
    prev_p, prev_t, start = "O", "", 0
    for i, tag in enumerate(list(tags) + ["O"]):
        p = tag[0]
        t = tag[1:].split("-", maxsplit=1)[-1] or "_"
        ends = (
            prev_p in "ES"
            or (prev_p in "BI" and p in "BSO")
            or (prev_p not in "O." and prev_t != t)
        )
        starts = p in "BS" or (prev_p in "ESO" and p in "EI") or (p not in "O." and prev_t != t)
        if ends:
            out.append((prev_t, start, i))
        if starts:
            start = i
        prev_p, prev_t = p, t
    return out


def _spans_strict(tags: Sequence[str], scheme: str) -> list[Span]:
    if scheme == "iob1":
        scheme, tags = "iob2", to_iob2(tags, "iob1")
    begin, inside, end, single = _roles(scheme)
    parsed = [split_tag(t) for t in tags]
    out: list[Span] = []
    i, n = 0, len(parsed)
    while i < n:
        prefix, label = parsed[i]
        if single and prefix == single:
            out.append((label or "_", i, i + 1))
            i += 1
            continue
        if prefix != begin:
            i += 1
            continue
        j = i + 1
        while j < n and parsed[j][0] == inside and parsed[j][1] == label:
            j += 1
        if not end:  # IOB2: B-X I-X* is always a chunk
            out.append((label or "_", i, j))
            i = j
        elif j < n and parsed[j][0] == end and parsed[j][1] == label:
            out.append((label or "_", i, j + 1))
            i = j + 1
        else:  # never closed: not a chunk; scanning resumes where it broke off
            i = j
    return out
