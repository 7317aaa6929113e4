"""Welford running statistics: a mergeable value with O(1) state.

Pure: no clock, no I/O; large batches are summed with numpy.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Sequence
from itertools import repeat
from typing import Any

import numpy as np
import numpy.typing as npt

from ._events import is_bool, is_finite_number

#: Batches at least this long are summed with numpy.
_VECTOR_MIN = 64


class RunningStats:
    """Count, mean, variance, min and max of a stream of floats, in O(1) memory.

    ``push`` uses Welford's update; ``merge`` (also ``+`` and ``+=``) uses the
    parallel formula of Chan et al., so partial aggregates combine exactly as if
    one had seen every value. With fewer than two values ``variance`` and
    ``stddev`` are ``0.0``; with none, ``mean``, ``min`` and ``max`` are ``0.0``.
    """

    __slots__ = ("_max", "_min", "count", "m2", "mean")

    def __init__(self) -> None:
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0
        self._min = math.inf
        self._max = -math.inf

    def push(self, x: float) -> None:
        """Add one value (a finite number)."""
        if is_bool(x) or not isinstance(x, numbers.Real):
            raise TypeError(f"RunningStats values must be numbers, got {type(x).__name__} {x!r}")
        try:
            value = float(x)  # numpy numbers, Fraction
        except OverflowError:
            value = math.inf
        if not math.isfinite(value):
            raise ValueError(f"RunningStats values must be finite, got {x!r}")
        self._push(value)

    def _push(self, x: float) -> None:
        n = self.count + 1
        delta = x - self.mean
        mean = self.mean + delta / n
        self.m2 += delta * (x - mean)
        self.mean = mean
        self.count = n
        if x < self._min:
            self._min = x
        if x > self._max:
            self._max = x

    def push_many(self, values: Sequence[float] | npt.NDArray[np.float64]) -> None:
        """Add many values at once.

        Computes the batch's mean and squared deviations in two passes at C speed
        (as accurate as one-at-a-time updates, and faster), then folds the batch in with the same
        parallel formula as ``merge``: Welford's update is its one-value case.
        """
        m = len(values)
        if m == 0:
            return
        if m == 1:
            self._push(float(values[0]))
            return
        if isinstance(values, np.ndarray) or m >= _VECTOR_MIN:
            arr = np.asarray(values, dtype=np.float64)
            batch_mean = float(arr.mean())
            centred = arr - batch_mean
            batch_m2 = float(centred @ centred)
            lo, hi = float(arr.min()), float(arr.max())
        else:
            batch_mean = sum(values) / m
            deviations = list(map(operator.sub, values, repeat(batch_mean)))
            batch_m2 = sum(map(operator.mul, deviations, deviations))
            lo, hi = min(values), max(values)
        n = self.count
        if n == 0:
            self.count, self.mean, self.m2, self._min, self._max = m, batch_mean, batch_m2, lo, hi
            return
        total = n + m
        delta = batch_mean - self.mean
        self.mean += delta * m / total
        self.m2 += batch_m2 + delta * delta * n * m / total
        self.count = total
        if lo < self._min:
            self._min = lo
        if hi > self._max:
            self._max = hi

    @property
    def min(self) -> float:
        return self._min if self.count else 0.0

    @property
    def max(self) -> float:
        return self._max if self.count else 0.0

    @property
    def total(self) -> float:
        """Sum of the values (``mean * count``)."""
        return self.mean * self.count

    @property
    def variance(self) -> float:
        """Sample variance (n - 1 denominator), as ``statistics.variance``."""
        return self.m2 / (self.count - 1) if self.count > 1 else 0.0

    @property
    def stddev(self) -> float:
        """Sample standard deviation, as ``statistics.stdev``."""
        return math.sqrt(self.variance)

    def merge(self, other: RunningStats) -> RunningStats:
        """Fold ``other`` into ``self`` (Chan et al.) and return ``self``."""
        if not isinstance(other, RunningStats):
            raise TypeError(f"can only merge RunningStats, got {type(other).__name__}")
        if other.count == 0:
            return self
        if self.count == 0:
            self.count, self.mean, self.m2 = other.count, other.mean, other.m2
            self._min, self._max = other._min, other._max
            return self
        n = self.count + other.count
        delta = other.mean - self.mean
        self.mean += delta * other.count / n
        self.m2 += other.m2 + delta * delta * self.count * other.count / n
        self.count = n
        self._min = min(self._min, other._min)
        self._max = max(self._max, other._max)
        return self

    def __iadd__(self, other: RunningStats) -> RunningStats:
        return self.merge(other)

    def __add__(self, other: RunningStats) -> RunningStats:
        return self.copy().merge(other)

    def copy(self) -> RunningStats:
        new = RunningStats()
        new.count, new.mean, new.m2 = self.count, self.mean, self.m2
        new._min, new._max = self._min, self._max
        return new

    def to_state(self) -> dict[str, Any]:
        """A JSON-able dict; ``from_state`` rebuilds an equal value."""
        return {
            "count": self.count,
            "mean": self.mean,
            "m2": self.m2,
            "min": self._min if self.count else None,
            "max": self._max if self.count else None,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> RunningStats:
        new = cls()
        count = state["count"]
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise ValueError(f"RunningStats state: count must be an int >= 0, got {count!r}")
        new.count = count
        new.mean = _finite(state["mean"], "mean")
        new.m2 = _finite(state["m2"], "m2")
        if new.m2 < 0:
            raise ValueError(f"RunningStats state: m2 must be >= 0, got {new.m2!r}")
        if count:
            new._min = _finite(state["min"], "min")
            new._max = _finite(state["max"], "max")
        return new

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RunningStats):
            return NotImplemented
        return self.to_state() == other.to_state()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"RunningStats(count={self.count}, mean={self.mean!r}, "
            f"stddev={self.stddev!r}, min={self.min!r}, max={self.max!r})"
        )


def _finite(value: Any, name: str) -> float:
    """A state's number: an int or a finite float (not a string, not NaN or inf)."""
    if not is_finite_number(value):
        raise ValueError(f"RunningStats state: {name} must be a finite number, got {value!r}")
    return float(value)
