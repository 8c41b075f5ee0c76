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

**Length.** The speed-up of one threshold depends on how long the tagged sentences are (short inputs spend a
larger share on [CLS]/[SEP], which never halt; long sentences hold more uncertain words, and attention grows
with the square of the length). A stream whose length drifts — requests sorted by length, a file of headlines
followed by a file of articles — moves the speed-up before the feedback can see it, and a feedback that moves τ
slowly trails the drift. With a :class:`LengthProfile` (written by ``earlytag calibrate``: the speed-up of
every threshold of the setting on dev inputs of each length) the controller looks ahead: what it integrates is
the speed-up it asks of the profile, ``log x``, moved by the feedback above, and before every engine
batch it picks the τ at which the profile predicts ``x`` for the lengths of the Tagger call the batch belongs
to (one τ for all of a call's sentences, so that within a call the FLOPs go where words are unsure, not to
equalise batches of different lengths). The feedback then only has to learn how much harder the stream is
than the dev data, which drifts slowly; the length it knows. So it moves ``log x`` by at most ``ask_step``
(0.05: ~5%) per engine call, not ``max_step``: where the profile's curve is flat, a 22% move of the speed-up
asked is a far larger move of τ, and τ swinging from call to call spends FLOPs less well than one τ. On the
shifted-genre streams of docs/results.md (section 5; 60 streams per target) the slower feedback held every
stream within ±10% as the faster one did, at a median F1 +0.05 / −0.00 / −0.33 from the fixed threshold that
reaches the same speed-up at 2x / 3x / 4x, against −0.04 / −0.63 / −0.85 with steps of 0.2; steps of 0.02
lost the target on some streams.

**A band for the window** (``window_band``, ±0.05 here, ±0.15 by default since the next paragraph; ``band_drift`` 0.2): the recent window's
deviation from the target counts only beyond ±band (in log speed-up), inside it the stream since the warm-up alone
moves the ask. A window of ~4,000 tokens sees one hard document run slow and raises τ for it, moving FLOPs from the
words that need them to those that do not. A band alone (``band_drift=None``) cut the median F1 cost at 4x on the
shifted streams of docs/results.md (section 5) from −0.33 to −0.06 but let two of 20 streams sorted by length end
above +10% at 3x, the overshoot most likely set up while the window is still most of the stream. So the band holds only
once the stream is past the warm-up and two windows, and while the recent window's mean input length is within
``exp(±band_drift)`` of the stream's so far; before that, and where lengths drift, the window counts in full. On
all 60 streams per target that holds every stream as the controller without a band does (sorted streams run
exactly as without it) at a median F1 +0.04 / −0.00 / −0.13 from the fixed τ of the same speed-up at 2x / 3x / 4x,
against +0.05 / −0.00 / −0.33 without a band (``window_band=0``).

**Wider: ±15% for the window, ±5% for the stream since the warm-up** (the defaults now: ``window_band=0.15``,
``since_band=0.05``). Under the same conditions the stream since the warm-up moves the ask only by what lies beyond
±5% of the target too, so inside both bands the ask stays put and τ changes only with the lengths of the requests,
which is the nearest a controller that must hold the stream comes to one τ for the whole stream (the fixed τ it
is compared with); a hard stretch of text moves it only once the window runs more than 15% slow or the stream
drifts past 5%, well inside the ±10% promise. On the 60 streams per target of docs/results.md (section 5), in the
same run as the ±5% window band: every stream held, median F1 +0.05 / +0.02 / −0.04 from the fixed τ of the same
speed-up at 2x / 3x / 4x against +0.04 / −0.00 / −0.13, the worst streams −0.85 / −1.39 / −4.34 against −1.24 /
−1.96 / −4.57 (``since_band=0``: the stream since the warm-up always counts, as before).

**When the bands may hold** (``band_windows``, 2 by default: past the warm-up and two windows). On streams of a few
thousand tokens that is most of the stream. ``band_windows=0`` lets them hold from the end of the warm-up, the lengths'
drift then also being the last call's mean input length against the stream's (in the first window the window is the
stream): on the 60 streams per target it held every stream after the warm-up and improved the worst one at 4x, but
its median F1 at 4x was 0.04 lower (docs/results.md section 5), so it is an option, not the default.
"""

from __future__ import annotations

import bisect
import math
import warnings
from collections import deque
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from ..errors import ConfigError
from .policies import ExitConfig

DEFAULT_ASK_STEP = 0.05  # with a length profile: the largest move of log(speed-up asked) per engine call
DEFAULT_WINDOW_BAND = 0.15  # the recent window counts only beyond ±15% of the target (log speed-up) ...
DEFAULT_SINCE_BAND = 0.05  # ... the stream since the warm-up only beyond ±5% ...
DEFAULT_BAND_DRIFT = 0.2  # ... once two windows past the warm-up, while its mean input length is within ~22%

# length buckets of a profile: upper bounds on the tokens of one encoder input (the last bucket is open)
LENGTH_EDGES = (8, 12, 16, 24, 32, 48, 64, 96, 128, 256)


def length_bucket(tokens: int) -> int:
    return bisect.bisect_left(LENGTH_EDGES, tokens)


def measure_profile(tokens: Sequence[int], flops: Sequence[float], flops_full: Sequence[float]) -> list[list[float]]:
    """One setting's FLOPs per length bucket: ``[[bucket, inputs, tokens, flops, flops_full], ...]`` over the
    inputs (documents) of a run, from their token counts and the FLOPs the engine reported for each."""
    sums: dict[int, list[float]] = {}
    for n, f, ff in zip(tokens, flops, flops_full):
        if n > 0 and f > 0:
            row = sums.setdefault(length_bucket(n), [0, 0, 0.0, 0.0])
            row[0] += 1
            row[1] += n
            row[2] += f
            row[3] += ff
    return [[b, *v] for b, v in sorted(sums.items())]


class LengthProfile:
    """The FLOPs speed-up of one setting at each threshold of a grid, per length bucket, as measured on dev data
    (``earlytag calibrate``): ``speedup(log τ, lengths)`` predicts it for a batch of inputs of these lengths.
    Buckets with fewer than ``min_inputs`` dev inputs are pooled with their neighbours (a curve measured on a
    handful of sentences says more about them than about their length); an input longer or shorter than any
    the dev data had counts in the nearest group. Between two thresholds of the grid log speed-up is linear in
    log τ (beyond the grid: the end segments extended, never falling)."""

    def __init__(self, points: Sequence[tuple[float, list[list[float]]]], min_inputs: int = 50):
        points = sorted((t, p) for t, p in points if t and t > 0 and p)
        if len(points) < 2:
            raise ConfigError("exit_calibration.table", "a length profile needs at least two thresholds")
        self.log_taus = [math.log(t) for t, _ in points]
        counts: dict[int, float] = {}  # inputs per bucket (the same dev data at every threshold)
        for row in points[0][1]:
            counts[int(row[0])] = counts.get(int(row[0]), 0) + row[1]
        groups: list[list[int]] = [[]]  # consecutive buckets, each group with min_inputs inputs (the last: its rest)
        for b in sorted(counts):
            groups[-1].append(b)
            if sum(counts[x] for x in groups[-1]) >= min_inputs:
                groups.append([])
        if not groups[-1]:
            groups.pop()
        if len(groups) > 1 and sum(counts[x] for x in groups[-1]) < min_inputs:
            rest = groups.pop()
            groups[-1].extend(rest)
        self.groups = groups
        self.curves: list[list[float]] = []  # per group: log speed-up at each threshold, non-decreasing
        self.full_per_token: list[float] = []  # per group: full-depth FLOPs of one token
        for group in groups:
            curve, last, per_token = [], 0.0, 0.0
            for _, prof in points:
                rows = [r for r in prof if int(r[0]) in group]
                tokens, spent, full = (sum(r[i] for r in rows) for i in (2, 3, 4))
                last = max(last, math.log(full / spent)) if spent else last
                curve.append(last)
                per_token = full / tokens if tokens else per_token
            self.curves.append(curve)
            self.full_per_token.append(per_token)
        self._group_of = {}  # bucket -> group; a bucket the dev data lacked: the nearest one's
        for b in range(len(LENGTH_EDGES) + 1):
            nearest = min(counts, key=lambda x: (abs(x - b), x))
            self._group_of[b] = next(i for i, g in enumerate(groups) if nearest in g)

    @classmethod
    def from_table(cls, table: Sequence[dict[str, Any]], base: ExitConfig) -> LengthProfile | None:
        """The profile of ``base``'s setting (all its settings but the threshold) in a calibration table; None
        where the table has none (a table written before profiles existed, or fewer than two thresholds)."""
        def key(cfg: dict[str, Any]) -> dict[str, Any]:
            return {k: v for k, v in ExitConfig.from_dict(cfg).to_dict().items() if k != "threshold"}

        want = key(base.to_dict())
        points = [(r["exit"]["threshold"], r["length_profile"]) for r in table
                  if r.get("length_profile") and isinstance(r["exit"].get("threshold"), (int, float))
                  and key(r["exit"]) == want]
        return cls(points) if len(points) >= 2 else None

    def weights(self, lengths: Sequence[int]) -> list[float]:
        """Full-depth FLOPs of the inputs in each group."""
        weights = [0.0] * len(self.groups)
        for n in lengths:
            i = self._group_of[length_bucket(n)]
            weights[i] += n * self.full_per_token[i]
        return weights

    def _log_speedup(self, curve: list[float], log_tau: float) -> float:
        xs = self.log_taus
        i = min(max(bisect.bisect_right(xs, log_tau) - 1, 0), len(xs) - 2)
        slope = max(0.0, (curve[i + 1] - curve[i]) / (xs[i + 1] - xs[i]))
        return max(0.0, curve[i] + slope * (log_tau - xs[i]))

    def speedup(self, log_tau: float, lengths: Sequence[int], weights: list[float] | None = None) -> float:
        """Predicted FLOPs speed-up of a batch of inputs with these token counts at threshold exp(log_tau)."""
        weights = self.weights(lengths) if weights is None else weights
        spent = sum(w * math.exp(-self._log_speedup(c, log_tau)) for w, c in zip(weights, self.curves) if w)
        total = sum(weights)
        return total / spent if spent else 1.0

    def threshold(self, log_speedup: float, lengths: Sequence[int], floor: float, ceiling: float,
                  weights: list[float] | None = None) -> tuple[float, bool]:
        """log τ in [floor, ceiling] at which the profile predicts exp(log_speedup) for these inputs, and whether
        the ceiling stopped it short (``weights``: :meth:`weights` of ``lengths``, where the caller keeps them)."""
        weights = self.weights(lengths) if weights is None else weights
        if math.log(self.speedup(ceiling, lengths, weights)) < log_speedup:
            return ceiling, True
        lo, hi = floor, ceiling
        for _ in range(40):  # bisection: the prediction never falls as τ grows
            mid = 0.5 * (lo + hi)
            if math.log(self.speedup(mid, lengths, weights)) < log_speedup:
                lo = mid
            else:
                hi = mid
        return hi, False


class SpeedController:
    def __init__(self, base: ExitConfig, target: float, window_tokens: int = 4000, gain: float = 0.5,
                 max_step: float = 0.2, tau_max: float = 1.0, tau_min: float = 1e-4, warmup_tokens: int = 1500,
                 batches_per_step: int = 1, profile: LengthProfile | None = None, profile_over: str = "request",
                 ask_step: float = DEFAULT_ASK_STEP, window_band: float | tuple[float, float] = DEFAULT_WINDOW_BAND,
                 band_drift: float | None = DEFAULT_BAND_DRIFT, since_band: float = DEFAULT_SINCE_BAND,
                 band_windows: int = 2):
        if base.policy not in ("token", "sentence") or isinstance(base.threshold, list) or base.threshold is None:
            raise ConfigError("exit.target_speedup", "holding a speed-up needs a token or sentence setting with one "
                                                     f"threshold to scale, not {base.describe()}")
        if isinstance(target, bool) or not isinstance(target, (int, float)) or not target >= 1.0:
            raise ConfigError("exit.target_speedup", f"must be a number >= 1, got {target!r}")
        if isinstance(ask_step, bool) or not isinstance(ask_step, (int, float)) or not ask_step > 0:
            raise ConfigError("exit.ask_step", f"must be a number > 0 (a step of log speed-up), got {ask_step!r}")
        bands = tuple(window_band) if isinstance(window_band, (tuple, list)) else (window_band, window_band)
        if len(bands) != 2 or any(isinstance(b, bool) or not isinstance(b, (int, float)) or not 0 <= b < 1
                                  for b in bands):
            raise ConfigError("exit.window_band", "must be a number in [0, 1) (a log speed-up), or two (below the "
                                                  f"target, above it), got {window_band!r}")
        if band_drift is not None and (isinstance(band_drift, bool) or not isinstance(band_drift, (int, float))
                                       or not band_drift > 0):
            raise ConfigError("exit.band_drift", "must be a number > 0 (a log ratio of mean input lengths) or None, "
                                                 f"got {band_drift!r}")
        if isinstance(since_band, bool) or not isinstance(since_band, (int, float)) or not 0 <= since_band < 1:
            raise ConfigError("exit.since_band", f"must be a number in [0, 1) (a log speed-up), got {since_band!r}")
        if isinstance(band_windows, bool) or not isinstance(band_windows, int) or band_windows < 0:
            raise ConfigError("exit.band_windows", f"must be a whole number >= 0, got {band_windows!r}")
        if profile_over not in ("request", "window"):
            raise ConfigError("exit.profile_over", f"expected request or window, got {profile_over!r}")
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
        # with a length profile the feedback moves the speed-up asked of the profile; τ follows each call's lengths
        self.profile = profile
        self.log_ask = math.log(self.target)
        self._weights: list[float] = []  # the profile's weights of the lengths τ is solved for
        # what τ is solved for: each call's own inputs ("request"), or the recent window's with them ("window":
        # τ then moves with the length mix of the stream, not with each request's)
        self.profile_over = profile_over
        self.ask_step = ask_step  # with a profile: the largest move of log(speed-up asked) per engine call (not max_step)
        # how far (in log speed-up) the recent window may run below / above the target before it moves τ: inside
        # the band only the stream since the warm-up does (0: the window always counts)
        self.window_band = (float(bands[0]), float(bands[1]))
        # the band only holds while the recent inputs are about as long as the stream's so far: where the mean input
        # length of the recent window strays from the mean since the start by more than band_drift (a log ratio),
        # the lengths drift (e.g. a stream sorted by length) and the window counts in full (None: the band always holds)
        self.band_drift = band_drift
        # the same for the stream since the warm-up, under the same conditions: inside ±since_band of the target
        # nothing moves the ask (0: the stream since the warm-up always counts)
        self.since_band = float(since_band)
        # the bands hold only once the stream is this many windows past the warm-up; with fewer than 2 the lengths'
        # drift is also that of the last Tagger call against the stream so far (in the first window the window is
        # the stream, and a drift would not show)
        self.band_windows = band_windows
        self._seen: Sequence[int] | None = None  # the lengths of the last Tagger call counted
        # (tokens, inputs, the profile's weights or None) of the recent Tagger calls, about window_tokens of them
        self._calls_seen: deque[tuple[int, int, list[float] | None]] = deque()
        self._seen_window = [0, 0]  # tokens, inputs of those
        self._seen_total = [0, 0]  # tokens, inputs since the start
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

    def current(self, lengths: Sequence[int] | None = None) -> ExitConfig:
        """The setting to run the next engine call with; ``lengths``: the token counts of the inputs it is for
        (with a length profile, τ is chosen for them: the Tagger passes those of its whole call)."""
        if lengths and lengths is not self._seen:  # a new call: its lengths come again with each of its batches
            self._seen = lengths
            self._see(lengths)
        if self.profile is not None and lengths:
            floor, ceiling = math.log(self.tau_min), math.log(self.tau_max)
            self.log_tau, self.capped = self.profile.threshold(self.log_ask, lengths, floor, ceiling, self._weights)
        return replace(self.base, threshold=round(self.tau, 6))

    def _see(self, lengths: Sequence[int]) -> None:
        """Count a Tagger call once: its tokens and inputs (the length drift: the recent window against the stream
        since the start) and, with a profile, its weights and the ones τ is solved with (the call's own, or the
        recent window's with it)."""
        weights = self.profile.weights(lengths) if self.profile is not None else None
        tokens, inputs = sum(lengths), len(lengths)
        self._calls_seen.append((tokens, inputs, weights))
        for acc in (self._seen_window, self._seen_total):
            acc[0] += tokens
            acc[1] += inputs
        while len(self._calls_seen) > 1 and self._seen_window[0] - self._calls_seen[0][0] >= self.window_tokens:
            old_tokens, old_inputs, _ = self._calls_seen.popleft()
            self._seen_window[0] -= old_tokens
            self._seen_window[1] -= old_inputs
        if weights is not None:
            self._weights = (weights if self.profile_over == "request"
                             else [sum(col) for col in zip(*(w for _, _, w in self._calls_seen))])

    @property
    def length_drift(self) -> float:
        """|log| of the recent window's mean input length over the stream's since the start (0 before any)."""
        if not self._seen_window[1] or not self._seen_total[1]:
            return 0.0
        mean = self._seen_total[0] / self._seen_total[1]
        drift = abs(math.log((self._seen_window[0] / self._seen_window[1]) / mean))
        if self.band_windows < 2 and self._calls_seen:
            tokens, inputs, _ = self._calls_seen[-1]
            drift = max(drift, abs(math.log((tokens / inputs) / mean)))
        return drift

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
        window_error = math.log(self.target) - math.log(self.realised_window)
        since_error = math.log(self.target) - math.log(since)
        (below, above), since_band = self.window_band, self.since_band  # error > 0: ran slower than the target
        if self.band_drift is not None and (self.length_drift > self.band_drift
                                            or self._seen_total[0] < self.warmup_tokens
                                            + self.band_windows * self.window_tokens):
            below = above = since_band = 0.0  # the lengths drift, or too little seen to tell: every error counts in full
        error = _beyond(window_error, below, above) + _beyond(since_error, since_band, since_band)
        limit = self.max_step if self.profile is None else self.ask_step  # of log τ, or of log(speed-up asked)
        step = max(-limit, min(limit, self.gain * error))
        ceiling, floor = math.log(self.tau_max), math.log(self.tau_min)
        if self.profile is not None:
            # the ask stops growing while the ceiling holds τ back (no wind-up: it comes down as soon as it may)
            if not (self.capped and step > 0):
                self.log_ask = min(max(self.log_ask + step, 0.0), math.log(100.0))
        else:
            wanted = self.log_tau + step
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
                "tokens": self.total[2], "warmup_tokens": self.warmup_tokens, "engine_calls": self.calls,
                "capped": self.capped,
                "start_threshold": self.base.threshold, "window_tokens": self.window_tokens,
                "length_profile": self.profile is not None, "window_band": list(self.window_band),
                "band_drift": self.band_drift, "since_band": self.since_band, "band_windows": self.band_windows,
                "length_drift": round(self.length_drift, 4),
                **({"profile_over": self.profile_over, "asked_of_profile": round(math.exp(self.log_ask), 4),
                    "ask_step": self.ask_step}
                   if self.profile is not None else {})}


def _beyond(error: float, below: float, above: float) -> float:
    """What of ``error`` (log target − log realised: > 0 ran slower) lies outside the dead band [−above, +below]."""
    return max(0.0, error - below) if error > 0 else min(0.0, error + above)


def exit_report(exit: ExitConfig | SpeedController) -> dict[str, Any]:
    """What a run reports of its exit: ``{"exit": setting}``, and ``"controller"``'s state when one held a
    target speed-up (its setting is the one it ended with)."""
    if isinstance(exit, SpeedController):
        return {"exit": exit.current().to_dict(), "controller": exit.to_dict()}
    return {"exit": exit.to_dict()}
