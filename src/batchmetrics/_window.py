"""Recent rates over a sliding window, and the ETA built on them. Pure: stdlib only."""

from __future__ import annotations

from collections import deque

_SLOTS = 20


class RateWindow:
    """Completions per second over the last ``window`` seconds (monotonic clock).

    Counts go into ``window / 20``-second slots, so memory is constant and a
    batch of events costs one slot update.
    """

    __slots__ = ("_slot", "_slots", "_start", "window")

    def __init__(self, window: float) -> None:
        self.window = window
        self._slot = window / _SLOTS
        # [slot start, completed (all statuses), succeeded, samples, bytes]
        self._slots: deque[list[float]] = deque()
        self._start: float | None = None

    def begin(self, now: float) -> None:
        """Mark the start of the batch (rates in the first window use the time since)."""
        self._start = now

    def add_counts(self, now: float, completed: int, ok: int, samples: int, nbytes: int) -> None:
        if self._start is None:
            self._start = now
        slots = self._slots
        if slots and now - slots[-1][0] < self._slot:
            last = slots[-1]
            last[1] += completed
            last[2] += ok
            last[3] += samples
            last[4] += nbytes
        else:
            slots.append([now, completed, ok, samples, nbytes])
        self._expire(now)

    def _expire(self, now: float) -> None:
        slots = self._slots
        horizon = now - self.window
        while slots and slots[0][0] < horizon:
            slots.popleft()

    def _span(self, now: float) -> float:
        if self._start is None:
            return 0.0
        return min(self.window, now - self._start)

    def rates(self, now: float) -> tuple[float, float, float, float]:
        """(successful files/s, samples/s, bytes/s, seconds the rates cover)."""
        self._expire(now)
        span = self._span(now)
        if span <= 0:
            return (0.0, 0.0, 0.0, 0.0)
        ok = sum(s[2] for s in self._slots)
        samples = sum(s[3] for s in self._slots)
        nbytes = sum(s[4] for s in self._slots)
        return (ok / span, samples / span, nbytes / span, span)

    def completion_rate(self, now: float) -> float:
        """Files completed (any status) per second over the window; 0.0 if none."""
        self._expire(now)
        span = self._span(now)
        if span <= 0:
            return 0.0
        return sum(s[1] for s in self._slots) / span


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
