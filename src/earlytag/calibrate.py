"""Choose exit thresholds for a target speed-up on dev data (``--target-speedup X``).

A small grid search: every candidate setting of the policy is run on the dev data; among those whose
FLOPs speed-up reaches the target, the best-scoring one wins (if none reaches it, the fastest one, and the
result says so). The winner can be stored in the model directory as its default exit setting. Every row of the
table also keeps its FLOPs per length of input (``length_profile``), from which a speed controller predicts
the speed-up of a threshold on inputs of any length (:class:`earlytag.engine.control.LengthProfile`).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .api import Tagger
from .data.datasets import Dataset
from .defaults import HALTED_DEFAULT
from .engine import REGISTRY, ExitConfig
from .engine.control import measure_profile
from .engine.policies import with_settings
from .errors import ConfigError
from .metrics import task_scores


def candidates(policy: str, num_layers: int, kv: str = "keep", halted: str = HALTED_DEFAULT,
               min_layer: int | Sequence[int] = 1) -> list[ExitConfig]:
    """The grid searched for ``policy`` (each policy brings its own: :data:`earlytag.engine.REGISTRY`), with the
    halted rule set where the policy reads it, once per floor in ``min_layer`` (one or several: the search then
    also chooses the floor; a policy without floors gets its grid once)."""
    rule = REGISTRY.get(policy)
    if rule is None or policy == "none":
        names = ", ".join(n for n in REGISTRY if n != "none")
        raise ConfigError("exit.policy", f"cannot calibrate policy {policy!r}; expected one of {names}")
    floors = [min_layer] if isinstance(min_layer, int) else list(dict.fromkeys(min_layer))
    if not floors:
        raise ConfigError("exit.min_layer", "give at least one floor")
    if "min_layer" not in rule.settings:
        floors = [1]
    grid = [cfg for low in floors
            for cfg in with_settings(rule.calibration_grid(num_layers, kv), halted=halted, min_layer=low)]
    for cfg in grid:
        cfg.validated(num_layers)  # a floor above the model's layers is named before any dev data is read
    return grid


@dataclass
class Calibration:
    exit: ExitConfig
    target_speedup: float
    flops_speedup: float
    score: float
    reached: bool
    table: list[dict[str, Any]]  # every candidate: settings, score, flops_speedup

    def to_dict(self) -> dict[str, Any]:
        return {"exit": self.exit.to_dict(), "target_speedup": self.target_speedup,
                "flops_speedup": self.flops_speedup, "score": self.score, "reached": self.reached}


def calibrate(tagger: Tagger, dev: str | os.PathLike | Dataset, target_speedup: float, policy: str = "token",
              kv: str = "keep", batch_size: int = 64, limit: int | None = 1000, save_to: str | None = None,
              halted: str = HALTED_DEFAULT, set_default: bool = False, progress: bool = False,
              min_layer: int | Sequence[int] = 1, refine: int = 3, **load_kwargs) -> Calibration:
    """Search the policy's grid on dev data for the best setting reaching ``target_speedup``; ``min_layer``, one
    floor or several (token and sentence exit: nothing halts before that layer), is searched too. Where a
    threshold grid steps past the target, ``refine`` bisections of log τ between the two thresholds around it
    (per family of settings) bring the choice closer to the target (rows marked ``refined`` in the table).

    The tagger's calibration table is updated (and, with ``save_to``, the model directory's config.json); the
    default exit changes only with ``set_default``."""
    if isinstance(target_speedup, bool) or not isinstance(target_speedup, (int, float)) or not 1.0 <= target_speedup:
        raise ConfigError("target_speedup", f"must be a number >= 1, got {target_speedup!r}")
    if isinstance(refine, bool) or not isinstance(refine, int) or refine < 0:
        raise ConfigError("refine", f"bisection steps must be an integer >= 0, got {refine!r}")
    dataset = tagger.load(dev, **load_kwargs)
    sentences = dataset.sentences[:limit] if limit else dataset.sentences
    docs = [s.tokens for s in sentences]
    gold = [s.tags for s in sentences]
    table = []
    grid = candidates(policy, tagger.num_layers, kv, halted, min_layer)
    tokens = [0] * len(docs)  # encoder tokens of each sentence (with its special tokens): the length profile's key
    for window in tagger.featurizer.windows(docs):
        tokens[window.doc] += len(window)

    def run(cand: ExitConfig, **extra) -> dict[str, Any]:
        pred = tagger.predict_words(docs, cand, batch_size)
        score = task_scores(tagger.config.task, gold, pred.tags)["score"]
        return {"exit": cand, "score": score, "flops_speedup": pred.stats.flops_speedup,
                "length_profile": measure_profile(tokens, pred.doc_flops, pred.doc_flops_full), **extra}

    with tqdm(grid, desc=f"calibrating on {len(sentences)} sentences", disable=not progress, file=sys.stderr,
              leave=False) as bar:
        for cand in bar:
            table.append(run(cand))
    brackets = _brackets(table, target_speedup)
    with tqdm(total=refine * len(brackets), desc="refining τ", disable=not progress or not brackets,
              file=sys.stderr, leave=False) as bar:
        for lo, hi in brackets:  # bisect log τ between the last grid τ short of the target and the first reaching it
            for _ in range(refine):
                tau = round(math.sqrt(lo.threshold * hi.threshold) if lo.threshold > 0 else hi.threshold / 2, 6)
                row = run(replace(hi, threshold=tau), refined=True)
                table.append(row)
                lo, hi = (lo, row["exit"]) if row["flops_speedup"] >= target_speedup else (row["exit"], hi)
                bar.update()
    reaching = [row for row in table if row["flops_speedup"] >= target_speedup]
    if reaching:
        best = max(reaching, key=lambda r: (r["score"], r["flops_speedup"]))
    else:
        best = max(table, key=lambda r: (r["flops_speedup"], r["score"]))
    result = Calibration(best["exit"], target_speedup, best["flops_speedup"], best["score"], bool(reaching),
                         [{**r, "exit": r["exit"].to_dict()} for r in table])
    record = {**result.to_dict(), "data": stored_path(dataset.path, save_to), "sentences": len(sentences),
              "limit": limit, "precision": tagger.precision, "table": result.table}
    tagger.config.exit_calibration = record
    settings = {"exit_calibration": record}
    if set_default:
        tagger.config.exit = best["exit"].to_dict()
        settings["exit"] = tagger.config.exit
    if save_to is not None:
        from .model.tagger import update_saved_config

        update_saved_config(save_to, settings)
    return result


def _brackets(table: list[dict[str, Any]], target: float) -> list[tuple[ExitConfig, ExitConfig]]:
    """Per family of a threshold grid (every setting but τ alike), the grid's last τ short of ``target`` and its
    first τ reaching it, where the family has both: where the grid's step jumps past the target, costing score."""
    families: dict[str, list[dict[str, Any]]] = {}
    for row in table:
        cfg = row["exit"]
        if isinstance(cfg.threshold, (int, float)) and not isinstance(cfg.threshold, bool):
            families.setdefault(repr(replace(cfg, threshold=None)), []).append(row)
    out = []
    for rows in families.values():
        rows = sorted(rows, key=lambda r: r["exit"].threshold)
        for short, reach in zip(rows, rows[1:]):
            if short["flops_speedup"] < target <= reach["flops_speedup"]:
                out.append((short["exit"], reach["exit"]))
                break
    return out


def stored_path(path, model_dir) -> str:
    """The data's path as stored: relative to the model directory when it lies inside it, else absolute (a known
    name such as uner-en-ewt:dev is kept as it is)."""
    path = Path(path)
    if not path.exists():
        return str(path)
    path = path.resolve()
    if model_dir is not None:
        try:
            return str(path.relative_to(Path(model_dir).resolve()))
        except ValueError:
            pass
    return str(path)
