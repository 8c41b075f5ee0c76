"""The one record every reader produces and every front end consumes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Sentence:
    """A tokenised sentence (or document), optionally tagged.

    ``spaces[i]`` says whether whitespace follows token i in the original text (CoNLL-U ``SpaceAfter=No``
    sets it to False); ``text`` and ``offsets`` rebuild the text from it. ``lines[i]`` is the line of token i
    in its file, so that errors can point at it.
    """

    tokens: list[str]
    tags: list[str] | None = None
    spaces: list[bool] | None = None
    source: str | None = None
    id: str | None = None
    lines: list[int] | None = None
    text_override: str | None = None  # the exact original text when the tokens came from one
    token_offsets: list[tuple[int, int]] | None = None

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def text(self) -> str:
        if self.text_override is not None:
            return self.text_override
        return "".join(tok + (" " if space else "") for tok, space in zip(self.tokens, self._spaces())).rstrip(" ")

    @property
    def offsets(self) -> list[tuple[int, int]]:
        """Character offsets ``(start, end)`` of each token in :attr:`text`."""
        if self.token_offsets is not None:
            return self.token_offsets
        out, pos = [], 0
        for tok, space in zip(self.tokens, self._spaces()):
            out.append((pos, pos + len(tok)))
            pos += len(tok) + (1 if space else 0)
        return out

    def _spaces(self) -> list[bool]:
        return self.spaces if self.spaces is not None else [True] * len(self.tokens)

    def line_of(self, index: int) -> int | None:
        if self.lines and 0 <= index < len(self.lines):
            return self.lines[index]
        return None
