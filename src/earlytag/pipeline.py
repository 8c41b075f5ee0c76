"""Segment, then tag: chunking (NER) of raw Chinese text with a model trained on words.

Chinese has no spaces, so a word-level tagger needs words first. ``SegmentThenTag`` runs a word segmentation
model (``--task cws``, characters with B/M/E/S) over the characters, then the word-level model over the words
it found; each word's tag is spread back over its characters, so that the result and its score are the same
kind as those of a model that tags the characters directly (``train --units chars``). Each model runs with its
own exit setting; the FLOPs of both are counted.

    pipe = SegmentThenTag(Tagger.from_pretrained("models/e5-cws"), Tagger.from_pretrained("models/e5-ner-words"))
    pipe.evaluate("uner-zh-gsdsimp:test")           # character-level entity F1, like a character model's
    docs, _ = pipe.documents([pipe.to_sentence("李明在北京大学工作。")])

The CLI: ``earlytag evaluate MODEL DATA --segmenter CWS_MODEL`` and ``earlytag predict MODEL FILE --segmenter
CWS_MODEL``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .api import ExitLike, Prediction, Tagger
from .data.datasets import Dataset
from .data.segmentation import tags_to_words, to_character_chunks, word_spans
from .data.types import Sentence
from .engine.control import exit_report
from .errors import ConfigError
from .metrics import task_scores


@dataclass
class Stages:
    """What each model of one run did."""

    segmenter: Prediction
    tagger: Prediction

    @property
    def flops(self) -> float:
        return self.segmenter.stats.flops + self.tagger.stats.flops

    @property
    def flops_full(self) -> float:
        return self.segmenter.stats.flops_full + self.tagger.stats.flops_full

    def report(self) -> dict[str, Any]:
        """FLOPs of both models together and of each; ``flops_speedup`` against both at full depth."""
        def one(p: Prediction) -> dict[str, Any]:
            return {"flops_speedup": p.stats.flops_speedup, "mean_exit_layer": p.stats.mean_exit_layer,
                    "flops": p.stats.flops, "flops_full": p.stats.flops_full, "inference_seconds": p.model_seconds}

        return {"flops_speedup": self.flops_full / self.flops if self.flops else 1.0, "flops": self.flops,
                "flops_full": self.flops_full, "inference_seconds": self.segmenter.model_seconds + self.tagger.model_seconds,
                "segmenter": one(self.segmenter), "tagger": one(self.tagger)}


class SegmentThenTag:
    def __init__(self, segmenter: Tagger, tagger: Tagger, segmenter_exit: ExitLike = None):
        if segmenter.config.task != "cws":
            raise ConfigError("segmenter", f"must be a word segmentation model (--task cws), not a "
                                           f"{segmenter.config.task} model")
        if not tagger.config.is_chunking or tagger.config.units != "words":
            raise ConfigError("segmenter", "segments for a chunking model trained on words (a character model "
                                           "reads raw text itself: drop --segmenter)")
        self.segmenter, self.tagger = segmenter, tagger
        self.segmenter_exit = segmenter.resolve_exit(segmenter_exit)

    def to_sentence(self, item: str | Sequence[str] | dict, where: str = "<input>") -> Sentence:
        """Raw text -> its characters (with offsets), as the segmenter reads it."""
        return self.segmenter.to_sentence(item, where)

    def segment(self, sentences: Sequence[Sentence], batch_size: int | None = None) -> tuple[list[Sentence], Prediction]:
        """Characters -> words: each word a token with its offsets in the sentence's text."""
        pred = self.segmenter.predict_words([s.tokens for s in sentences], self.segmenter_exit, batch_size)
        words = []
        for sent, tags in zip(sentences, pred.tags):
            offsets = sent.offsets
            words.append(Sentence(tokens=tags_to_words(sent.tokens, tags), text_override=sent.text,
                                  token_offsets=[(offsets[i][0], offsets[j - 1][1]) for i, j in word_spans(tags)]))
        return words, pred

    def documents(self, sentences: Sequence[Sentence], exit: ExitLike = None,
                  batch_size: int | None = None) -> tuple[list[dict], Stages]:
        """Tag character sentences (from :meth:`to_sentence`): documents whose tokens are the segmenter's words,
        with the tagger's tags and spans, offsets into the original text."""
        words, seg = self.segment(sentences, batch_size)
        docs, pred = self.tagger.documents(words, exit, batch_size)
        return docs, Stages(seg, pred)

    def tag_characters(self, sentences: Sequence[Sentence], exit: ExitLike = None,
                       batch_size: int | None = None) -> tuple[list[list[str]], Stages]:
        """Character sentences -> one chunk tag per character (a word's tag spread over its characters)."""
        words, seg = self.segment(sentences, batch_size)
        pred = self.tagger.predict_words([w.tokens for w in words], exit, batch_size)
        tags = [to_character_chunks(Sentence(tokens=w.tokens, tags=t)).tags for w, t in zip(words, pred.tags)]
        return tags, Stages(seg, pred)

    def evaluate(self, data: str | os.PathLike | Dataset, exit: ExitLike = None, batch_size: int | None = None,
                 **load_kwargs) -> dict[str, Any]:
        """Score word-segmented data as characters: the chunk F1 of the spread tags against the data's own tags
        spread the same way (what a character model is scored on), and the segmentation F1 on the way."""
        start = time.perf_counter()
        cfg = self.tagger.resolve_exit(exit)  # once: a controller reports the state it ended with
        gold = self.tagger.load(data, units="chars", **load_kwargs)
        gold_words = self.segmenter.load(data, **load_kwargs)
        chars = [s.tokens for s in gold.sentences]
        if chars != [s.tokens for s in gold_words.sentences]:  # both read the same characters of the same file
            raise ConfigError("segmenter", f"{gold.path}: the segmenter and the tagger read different characters")
        tags, stages = self.tag_characters(gold.sentences, cfg, batch_size)
        result = task_scores(self.tagger.config.task, [s.tags for s in gold.sentences], tags)
        result.update({
            "segmentation": task_scores("cws", [s.tags for s in gold_words.sentences], stages.segmenter.tags),
            "data": str(gold.path), "limit": load_kwargs.get("limit"), "sentences": len(chars),
            "tokens": sum(len(c) for c in chars), "units": "chars",
            "mean_exit_layer": stages.tagger.stats.mean_exit_layer,
            **exit_report(cfg), "segmenter_exit": self.segmenter_exit.to_dict(), **stages.report(),
            "warnings": [f"{gold.path}: {gold.report.describe()}"] if gold.report else [],
            "seconds": time.perf_counter() - start})
        return result

