"""Holding a target speed-up on the text a user actually tags.

Thresholds calibrated on dev data give the promised FLOPs speed-up on text like the dev data; on less familiar
text the model is less sure, words climb further, and the speed-up falls short. :class:`SpeedController` closes
the loop: after every engine call it adds the FLOPs spent and the full-depth FLOPs of what was tagged to a sliding
window of recent tokens and moves the thresholds multiplicatively towards the target,

    log τ  ←  log τ + gain · (2 log target − log realised over the window − log realised since the warm-up),

one step at most ``max_step`` (0.2: τ changes by at most ~22% from one batch to the next; on short streams of a
few hundred sentences larger steps, e.g. gain 0.8 and 0.7, held the target as well but swung τ from batch to
batch so far that some batches ran at the ceiling, and the F1 fell several points below that of the fixed τ
reaching the same speed-up),

starting from the calibrated setting. Within one call of the Tagger, the batches (of similar length, to waste
little padding) are taken in a fixed random order, so that the controller sees a stream without a drift from
short to long sentences, and the thresholds move after every batch (``batches_per_step=1``; moving every fourth
batch converged too slowly on streams of a few hundred sentences; the price is that thin late layers are not
refilled across batches under a controller). τ never exceeds ``tau_max``; a stream that cannot reach the
target there runs at that ceiling, and the controller says so (``capped``, and a warning once). Its state (τ, realised speed-up
over the window and since the start) is reported by the CLI, the evaluation JSON and the service's /metrics.
"""

from __future__ import annotations

import math
import warnings
from collections import deque
from dataclasses import replace
from typing import Any

from ..errors import ConfigError
from .policies import ExitConfig


class SpeedController:
    def __init__(self, base: ExitConfig, target: float, window_tokens: int = 4000, gain: float = 0.5,
                 max_step: float = 0.2, tau_max: float = 1.0, tau_min: float = 1e-4, warmup_tokens: int = 1500,
                 batches_per_step: int = 1):
        if base.policy not in ("token", "sentence") or isinstance(base.threshold, list) or base.threshold is None:
            raise ConfigError("exit.target_speedup", "holding a speed-up needs a token or sentence setting with one "
                                                     f"threshold to scale, not {base.describe()}")
        if isinstance(target, bool) or not isinstance(target, (int, float)) or not target >= 1.0:
            raise ConfigError("exit.target_speedup", f"must be a number >= 1, got {target!r}")
        self.base = base
        self.target = float(target)
        self.batches_per_step = batches_per_step  # engine batches between two moves of the thresholds
        self.window_tokens = window_tokens
        self.gain = gain
        self.max_step = max_step
        self.tau_max = tau_max
        self.tau_min = tau_min
        self.warmup_tokens = warmup_tokens
        self.log_tau = math.log(max(float(base.threshold), tau_min))
        self.window: deque[tuple[float, float, int]] = deque()  # (flops, flops_full, tokens) per engine call
        self.window_size = 0
        self.total = [0.0, 0.0, 0]  # flops, flops_full, tokens since the start
        self.after_warmup = [0.0, 0.0]  # flops, flops_full once past the warm-up
        self.calls = 0
        self.capped = False
        self._warned = False

    @property
    def tau(self) -> float:
        return math.exp(self.log_tau)

    def current(self) -> ExitConfig:
        """The setting to run the next engine call with."""
        return replace(self.base, threshold=round(self.tau, 6))

    @staticmethod
    def _ratio(flops: float, full: float) -> float:
        return full / flops if flops else 1.0

    @property
    def realised_window(self) -> float:
        return self._ratio(sum(w[0] for w in self.window), sum(w[1] for w in self.window))

    @property
    def realised_total(self) -> float:
        return self._ratio(self.total[0], self.total[1])

    @property
    def realised_after_warmup(self) -> float:
        return self._ratio(*self.after_warmup)

    def observe(self, flops: float, flops_full: float, tokens: int) -> None:
        """Account for one engine call and move the thresholds."""
        if tokens <= 0 or flops <= 0:
            return
        warm = self.total[2] >= self.warmup_tokens
        self.calls += 1
        self.total[0] += flops
        self.total[1] += flops_full
        self.total[2] += tokens
        if warm:
            self.after_warmup[0] += flops
            self.after_warmup[1] += flops_full
        self.window.append((flops, flops_full, tokens))
        self.window_size += tokens
        while len(self.window) > 1 and self.window_size - self.window[0][2] >= self.window_tokens:
            self.window_size -= self.window.popleft()[2]
        # the recent window follows the text as it changes; the stream since the start makes up for what the
        # window has already let slip (without it the stream ends up a few percent short of the target)
        # past the warm-up, "since the start" means since the warm-up: the stream is held where it is measured
        # (making up for a fast warm-up by running the rest slow would leave the stream after it short)
        since = self.realised_after_warmup if warm else self.realised_total
        error = 2 * math.log(self.target) - math.log(self.realised_window) - math.log(since)
        step = max(-self.max_step, min(self.max_step, self.gain * error))
        wanted = self.log_tau + step
        ceiling, floor = math.log(self.tau_max), math.log(self.tau_min)
        self.capped = wanted >= ceiling and error > 0
        self.log_tau = min(max(wanted, floor), ceiling)
        if self.capped and warm and not self._warned and self.realised_window < 0.9 * self.target:
            self._warned = True
            warnings.warn(f"target speed-up {self.target:g}x is out of reach on this text: at the threshold ceiling "
                          f"{self.tau_max:g} it runs at {self.realised_window:.2f}x", RuntimeWarning, stacklevel=2)

    def to_dict(self) -> dict[str, Any]:
        return {"target_speedup": self.target, "threshold": round(self.tau, 6), "policy": self.base.policy,
                "realised_speedup_window": round(self.realised_window, 4),
                "realised_speedup_total": round(self.realised_total, 4),
                "realised_speedup_after_warmup": round(self.realised_after_warmup, 4),
                "tokens": self.total[2], "engine_calls": self.calls, "capped": self.capped,
                "start_threshold": self.base.threshold, "window_tokens": self.window_tokens}


def exit_report(exit: ExitConfig | SpeedController) -> dict[str, Any]:
    """What a run reports of its exit: ``{"exit": setting}``, and ``"controller"``'s state when one held a
    target speed-up (its setting is the one it ended with)."""
    if isinstance(exit, SpeedController):
        return {"exit": exit.current().to_dict(), "controller": exit.to_dict()}
    return {"exit": exit.to_dict()}
