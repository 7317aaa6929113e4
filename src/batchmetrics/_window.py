"""Recent rates over a sliding window, and the ETA built on them. Pure: stdlib only."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence

from ._events import F_BYTES, F_END, F_SAMPLES, F_STATUS, SUCCESS, Event

_SLOTS = 20


class RateWindow:
    """Completions per second over the last ``window`` seconds, by record time.

    Counts go into ``window / 20``-second slots keyed by the events' own record
    times, so memory is constant, and a batch of events that arrived within one
    slot costs one slot update.
    """

    __slots__ = ("_slot", "_slots", "_start", "window")

    def __init__(self, window: float) -> None:
        self.window = window
        self._slot = window / _SLOTS
        # [slot key, completed (all statuses), succeeded, samples, bytes], keys ascending
        self._slots: deque[list[float]] = deque()
        self._start: float | None = None

    def begin(self, now: float) -> None:
        """Mark the start of the batch (rates in the first window use the time since)."""
        self._start = now

    def add_batch(self, events: Sequence[Event], counts: tuple[int, int, int, int]) -> None:
        """Count a batch; ``counts`` is (files, successes, samples, bytes) of the batch."""
        if not events:
            return
        first, last = events[0][F_END], events[-1][F_END]
        slot = self._slot
        if first <= last and math.floor(first / slot) == math.floor(last / slot):
            self.add_counts(last, *counts)  # all in one slot: counted at once
            return
        for ev in events:  # a batch spread over time (a starved consumer): slot each event
            if ev[F_STATUS] == SUCCESS:
                self.add_counts(ev[F_END], 1, 1, ev[F_SAMPLES], ev[F_BYTES])
            else:
                self.add_counts(ev[F_END], 1, 0, 0, 0)

    def add_counts(self, t: float, completed: int, ok: int, samples: int, nbytes: int) -> None:
        key = math.floor(t / self._slot)
        slots = self._slots
        if not slots or slots[-1][0] < key:
            slots.append([key, completed, ok, samples, nbytes])
            if len(slots) > 2 * _SLOTS + 2:
                slots.popleft()
            return
        for slot in reversed(slots):  # usually the last one
            if slot[0] == key:
                slot[1] += completed
                slot[2] += ok
                slot[3] += samples
                slot[4] += nbytes
                return
            if slot[0] < key:
                break
        # an event older than the slots kept, or falling in a gap: keep it in order
        slots.append([key, completed, ok, samples, nbytes])
        ordered = sorted(slots, key=lambda s: s[0])
        slots.clear()
        slots.extend(ordered[-(2 * _SLOTS + 2):])

    def _horizon(self, now: float) -> int:
        """The newest slot that lies (partly) before the window: counted slots are after it."""
        return math.floor((now - self.window) / self._slot)

    def _recent(self, now: float) -> list[list[float]]:
        horizon = self._horizon(now)
        return [s for s in self._slots if horizon < s[0]]

    def _span(self, now: float) -> float:
        """Seconds the counted slots cover: from the first one after the horizon (or
        the start) to now, between ``window - window / 20`` and ``window``."""
        if self._start is None:
            return 0.0
        return min(now - self._start, now - (self._horizon(now) + 1) * self._slot)

    def rates(self, now: float) -> tuple[float, float, float, float]:
        """(successful files/s, samples/s, bytes/s, seconds the rates cover)."""
        span = self._span(now)
        if span <= 0:
            return (0.0, 0.0, 0.0, 0.0)
        recent = self._recent(now)
        ok = sum(s[2] for s in recent)
        samples = sum(s[3] for s in recent)
        nbytes = sum(s[4] for s in recent)
        return (ok / span, samples / span, nbytes / span, span)

    def completion_rate(self, now: float) -> float:
        """Files completed (any status) per second over the window; 0.0 if none."""
        span = self._span(now)
        if span <= 0:
            return 0.0
        return sum(s[1] for s in self._recent(now)) / span


def estimate_eta(
    *, remaining: int, done: int, elapsed: float, recent_rate: float
) -> tuple[float | None, float | None, float | None]:
    """(eta, low, high) in seconds from the recent and the overall completion rates.

    The estimate uses the recent rate, falling back to the overall rate when the
    window saw no completion (one file slower than the window must not blank the
    ETA); the range spans the two rates. ``None`` until a file has completed.
    """
    if remaining <= 0:
        return (0.0, 0.0, 0.0)
    overall = done / elapsed if done and elapsed > 0 else 0.0
    rates = [r for r in (recent_rate, overall) if r > 0]
    if not rates:
        return (None, None, None)
    best = recent_rate if recent_rate > 0 else overall
    return (remaining / best, remaining / max(rates), remaining / min(rates))
