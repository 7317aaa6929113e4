"""A mergeable quantile sketch with bounded relative error.

Log-linear buckets, in the manner of HdrHistogram and DDSketch: a value
``x > 0`` is counted in the bucket named by its float exponent and the top
``m`` bits of its mantissa, i.e. ``bits(x) >> (52 - m)``. Every bucket spans a
relative width of at most ``2**-m``, so its representative (the harmonic mean
of its bounds) is within ``1 / (2**(m+1) + 1)`` of every value in it: 0.78%
for the default ``m = 6``. Keys come straight from the float's bits, so a whole
batch is bucketed at C speed (no ``log`` per value). Merging adds bucket counts:
merged sketches are exactly the sketch of all values. Zeros are counted apart.
Memory is bounded by the spread of the data, not its count: 64 buckets per
power of two, about 2,400 for durations from 1 µs to a day.

Large batches (``VECTOR_MIN`` values or more) are bucketed with numpy, small ones
in plain Python, where numpy's fixed cost per call would dominate; both count
exactly the same buckets. Pure: no clock, no I/O.
"""

from __future__ import annotations

import math
import numbers
import struct
from array import array
from collections import Counter
from collections.abc import Sequence
from itertools import repeat
from operator import rshift
from typing import Any

import numpy as np
import numpy.typing as npt

from ._events import is_bool, is_finite_number

#: Batches at least this long go through numpy (below it, numpy's per-call cost dominates).
VECTOR_MIN = 64
DEFAULT_MANTISSA_BITS = 6
_MANTISSA = 52
_PACK = struct.Struct("<q")
_UNPACK = struct.Struct("<d")


def _bits_to_float(bits: int) -> float:
    return float(_UNPACK.unpack(_PACK.pack(bits))[0])


class QuantileSketch:
    """Quantiles of non-negative floats within a relative error bound.

    The bound holds for zeros and for normal floats (``>= 2.2e-308``); subnormals are
    bucketed linearly by their bits, so their estimates are only absolutely close.

    ``quantile(q)`` interpolates linearly between the order statistics at ranks
    ``floor(q * (n - 1))`` and ``ceil(q * (n - 1))`` (as ``statistics.median``
    and numpy's default ``linear`` method), each estimated within
    ``relative_accuracy``; estimates are clamped to the exact min and max.
    """

    __slots__ = ("_buckets", "_max", "_min", "_shift", "count", "mantissa_bits", "zero_count")

    def __init__(self, mantissa_bits: int = DEFAULT_MANTISSA_BITS) -> None:
        if isinstance(mantissa_bits, bool) or not isinstance(mantissa_bits, int):
            raise TypeError(f"mantissa_bits must be an int, got {type(mantissa_bits).__name__} "
                            f"{mantissa_bits!r}")
        if not 1 <= mantissa_bits <= 20:
            raise ValueError(f"mantissa_bits must be an int in 1..20, got {mantissa_bits!r}")
        self.mantissa_bits = mantissa_bits
        self._shift = _MANTISSA - mantissa_bits
        self._buckets: Counter[int] = Counter()
        self.zero_count = 0
        self.count = 0
        self._min = math.inf
        self._max = -math.inf

    @property
    def relative_accuracy(self) -> float:
        """The largest relative error of any estimate (0.0078 for 6 mantissa bits)."""
        return 1.0 / ((2 << self.mantissa_bits) + 1)

    def add(self, x: float) -> None:
        """Count one value ``x >= 0``."""
        if not isinstance(x, int | float) or isinstance(x, bool):
            raise TypeError(f"QuantileSketch values must be numbers, got {x!r}")
        if not x >= 0.0 or x == math.inf:
            raise ValueError(f"QuantileSketch values must be finite and >= 0, got {x!r}")
        self.add_many((float(x),))

    def add_many(self, values: Sequence[float] | npt.NDArray[np.float64]) -> None:
        """Count many values, each finite and ``>= 0`` (not re-checked: the hot path)."""
        n = len(values)
        if n == 0:
            return
        if isinstance(values, np.ndarray) or n >= VECTOR_MIN:
            self._add_array(np.asarray(values, dtype=np.float64))
            return
        positives = array("d", values)
        if 0.0 in positives:  # values are >= 0: drop the zeros, counted apart
            positives = array("d", filter(None, values))
        bits = memoryview(positives).cast("B").cast("q")
        self._buckets.update(map(rshift, bits, repeat(self._shift)))
        self.zero_count += n - len(positives)
        self.count += n
        lo, hi = min(values), max(values)
        if lo < self._min:
            self._min = lo
        if hi > self._max:
            self._max = hi

    def _add_array(self, values: npt.NDArray[np.float64]) -> None:
        n = len(values)
        if n == 0:
            return
        positives = values[values > 0.0] if not values.all() else values
        if len(positives):
            keys = positives.view(np.int64) >> self._shift
            first, last = int(keys.min()), int(keys.max())
            if last - first < 4 * len(keys) + 4096:  # a dense count is cheap: no sort
                counts = np.bincount(keys - first)
                found = np.flatnonzero(counts)
                pairs = zip((found + first).tolist(), counts[found].tolist(), strict=True)
            else:  # a wide spread of few values
                uniq, ucounts = np.unique(keys, return_counts=True)
                pairs = zip(uniq.tolist(), ucounts.tolist(), strict=True)
            buckets = self._buckets
            get = buckets.get
            for key, count in pairs:
                buckets[key] = get(key, 0) + count
        self.zero_count += n - len(positives)
        self.count += n
        lo, hi = float(values.min()), float(values.max())
        if lo < self._min:
            self._min = lo
        if hi > self._max:
            self._max = hi

    @property
    def bucket_count(self) -> int:
        return len(self._buckets)

    @property
    def min(self) -> float:
        return self._min if self.count else 0.0

    @property
    def max(self) -> float:
        return self._max if self.count else 0.0

    def quantile(self, q: float) -> float:
        """The ``q``-quantile (``0 <= q <= 1``); ``0.0`` when empty."""
        return self.quantiles((q,))[0]

    def quantiles(self, qs: Sequence[float]) -> list[float]:
        """Several quantiles in one pass over the buckets."""
        for q in qs:
            if is_bool(q) or not isinstance(q, numbers.Real):
                raise TypeError(f"quantile q must be a number, got {type(q).__name__} {q!r}")
            if not 0.0 <= q <= 1.0:
                raise ValueError(f"quantile q must be in [0, 1], got {q!r}")
        n = self.count
        if n == 0:
            return [0.0 for _ in qs]
        ranks: set[int] = set()
        for q in qs:
            r = q * (n - 1)
            ranks.add(math.floor(r))
            ranks.add(math.ceil(r))
        values = self._values_at_ranks(sorted(ranks))
        out = []
        for q in qs:
            r = q * (n - 1)
            lo_rank, hi_rank = math.floor(r), math.ceil(r)
            lo_v, hi_v = values[lo_rank], values[hi_rank]
            out.append(lo_v + (hi_v - lo_v) * (r - lo_rank) if hi_rank != lo_rank else lo_v)
        return out

    def _representative(self, key: int) -> float:
        lower = _bits_to_float(key << self._shift)
        upper = _bits_to_float((key + 1) << self._shift)
        if lower == 0.0:  # the lowest bucket, of tiny subnormals: clamped to the min anyway
            return lower
        # The harmonic mean, computed at a scale where lower * upper cannot overflow
        # (values above 1e154) or underflow (below 1e-154); scaling by 2**-e is exact.
        # The top bucket's upper bound is 2**1024, one past the largest float.
        e = math.frexp(lower)[1]
        lo = math.ldexp(lower, -e)
        hi = math.ldexp(1.0, 1024 - e) if upper == math.inf else math.ldexp(upper, -e)
        return math.ldexp(2.0 * lo * hi / (lo + hi), e)

    def _values_at_ranks(self, ranks: list[int]) -> dict[int, float]:
        lo, hi = self._min, self._max
        found: dict[int, float] = {}
        it = iter(ranks)
        rank = next(it, None)
        seen = self.zero_count
        while rank is not None and rank < seen:
            found[rank] = 0.0
            rank = next(it, None)
        if rank is None:
            return found
        buckets = self._buckets
        for key in sorted(buckets):
            seen += buckets[key]
            if rank >= seen:
                continue
            estimate = min(max(self._representative(key), lo), hi)
            while rank is not None and rank < seen:
                found[rank] = estimate
                rank = next(it, None)
            if rank is None:
                break
        return found

    def merge(self, other: QuantileSketch) -> QuantileSketch:
        """Fold ``other`` into ``self`` (bucket counts add) and return ``self``."""
        if not isinstance(other, QuantileSketch):
            raise TypeError(f"can only merge QuantileSketch, got {type(other).__name__}")
        if other.mantissa_bits != self.mantissa_bits:
            raise ValueError(
                "cannot merge sketches of different precision: "
                f"mantissa_bits {self.mantissa_bits} and {other.mantissa_bits}"
            )
        self._buckets.update(other._buckets)
        self.zero_count += other.zero_count
        self.count += other.count
        self._min = min(self._min, other._min)
        self._max = max(self._max, other._max)
        return self

    def __iadd__(self, other: QuantileSketch) -> QuantileSketch:
        return self.merge(other)

    def __add__(self, other: QuantileSketch) -> QuantileSketch:
        return self.copy().merge(other)

    def copy(self) -> QuantileSketch:
        new = QuantileSketch(self.mantissa_bits)
        new._buckets = Counter(self._buckets)
        new.zero_count, new.count = self.zero_count, self.count
        new._min, new._max = self._min, self._max
        return new

    def to_state(self) -> dict[str, Any]:
        """A JSON-able dict (buckets as sorted ``[key, count]`` pairs)."""
        return {
            "mantissa_bits": self.mantissa_bits,
            "count": self.count,
            "zero_count": self.zero_count,
            "min": self._min if self.count else None,
            "max": self._max if self.count else None,
            "buckets": [[k, self._buckets[k]] for k in sorted(self._buckets)],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> QuantileSketch:
        new = cls(state["mantissa_bits"])
        buckets: Counter[int] = Counter()
        for k, c in state["buckets"]:
            if not isinstance(k, int) or not isinstance(c, int) or c <= 0:
                raise ValueError(f"QuantileSketch state: bad bucket {[k, c]!r}")
            buckets[k] = c
        new._buckets = buckets
        for key in ("zero_count", "count"):
            value = state[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"QuantileSketch state: {key} must be an int >= 0, "
                                 f"got {value!r}")
            setattr(new, key, value)
        if new.count != new.zero_count + sum(buckets.values()):
            raise ValueError(f"QuantileSketch state: count {new.count} does not match its buckets")
        if new.count:
            for key in ("min", "max"):
                value = state[key]
                if not is_finite_number(value) or value < 0:
                    raise ValueError(f"QuantileSketch state: {key} must be a finite "
                                     f"number >= 0, got {value!r}")
            new._min, new._max = float(state["min"]), float(state["max"])
        return new

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, QuantileSketch):
            return NotImplemented
        return self.to_state() == other.to_state()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"QuantileSketch(count={self.count}, buckets={len(self._buckets)}, "
            f"mantissa_bits={self.mantissa_bits})"
        )
