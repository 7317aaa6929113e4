"""Compact, append-only storage of per-file rows (``keep_files=True``).

Columns in typed arrays instead of one object per file: about 60 bytes a row
plus the filename (error fields and memory peaks
only where present), against ~340 for a dataclass per file. Pure: stdlib only.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator, Sequence
from operator import itemgetter

from ._events import (
    F_BYTES,
    F_DURATION,
    F_END,
    F_ERROR_MESSAGE,
    F_ERROR_TYPE,
    F_MEASUREMENTS,
    F_MEMORY_PEAK,
    F_NAME,
    F_SAMPLES,
    F_STATUS,
    Event,
)

_NAME = itemgetter(F_NAME)
_END = itemgetter(F_END)
_DURATION = itemgetter(F_DURATION)
_SAMPLES = itemgetter(F_SAMPLES)
_MEASUREMENTS = itemgetter(F_MEASUREMENTS)
_BYTES = itemgetter(F_BYTES)
_STATUS = itemgetter(F_STATUS)
_ETYPE = itemgetter(F_ERROR_TYPE)
_EMSG = itemgetter(F_ERROR_MESSAGE)
_PEAK = itemgetter(F_MEMORY_PEAK)


class FileTable:
    """Append-only columns of file events; rows come back as event tuples."""

    __slots__ = ("_bytes", "_durations", "_ends", "_measurements", "_messages", "_names", "_peaks",
                 "_samples", "_statuses", "_types")

    def __init__(self) -> None:
        self._names: list[str] = []
        self._ends = array("d")
        self._durations = array("d")
        # int64 columns; one that meets a count above 2**63 - 1 becomes a list of ints
        self._samples: array[int] | list[int] = array("q")
        self._measurements: array[int] | list[int] = array("q")
        self._bytes: array[int] | list[int] = array("q")
        self._statuses = bytearray()
        self._types: dict[int, str] = {}
        self._messages: dict[int, str] = {}
        self._peaks: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._names)

    def extend(self, events: Sequence[Event]) -> None:
        """Append events (already checked); each column is filled at C speed."""
        i0 = len(self._names)
        self._names.extend(map(_NAME, events))
        self._ends.extend(map(_END, events))
        self._durations.extend(map(_DURATION, events))
        try:
            self._samples.extend(map(_SAMPLES, events))
        except OverflowError:
            self._samples = _widened(self._samples, i0)
            self._samples.extend(map(_SAMPLES, events))
        try:
            self._measurements.extend(map(_MEASUREMENTS, events))
        except OverflowError:
            self._measurements = _widened(self._measurements, i0)
            self._measurements.extend(map(_MEASUREMENTS, events))
        try:
            self._bytes.extend(map(_BYTES, events))
        except OverflowError:
            self._bytes = _widened(self._bytes, i0)
            self._bytes.extend(map(_BYTES, events))
        self._statuses.extend(map(_STATUS, events))
        n = len(events)
        # error fields and memory peaks are rare: stored sparsely, by row index
        for column, getter in ((self._types, _ETYPE), (self._messages, _EMSG),
                               (self._peaks, _PEAK)):
            values = list(map(getter, events))
            if values.count(None) != n:
                for i, v in enumerate(values, i0):
                    if v is not None:
                        column[i] = v

    def row(self, i: int) -> Event:
        return (
            self._names[i],
            self._ends[i],
            self._durations[i],
            self._samples[i],
            self._measurements[i],
            self._bytes[i],
            self._statuses[i],
            self._types.get(i),
            self._messages.get(i),
            self._peaks.get(i),
        )

    def rows(self, start: int = 0, stop: int | None = None) -> Iterator[Event]:
        """Rows ``start <= i < stop`` (``stop`` defaults to the current length)."""
        stop = len(self._names) if stop is None else stop
        for i in range(start, stop):
            yield self.row(i)

    def nbytes(self) -> int:
        """Approximate bytes held, filenames included."""
        import sys

        total = len(self._statuses)
        for a in (self._ends, self._durations, self._samples, self._measurements, self._bytes):
            if isinstance(a, array):
                total += a.itemsize * len(a)
            else:
                total += sys.getsizeof(a) + sum(map(sys.getsizeof, a))
        total += sys.getsizeof(self._names) + sum(sys.getsizeof(n) for n in self._names)
        total += sum(sys.getsizeof(d) for d in (self._types, self._messages, self._peaks))
        return total


def _widened(column: array[int] | list[int], length: int) -> list[int]:
    """``column`` cut back to ``length`` rows (a failed extend may have added some), as a list."""
    del column[length:]
    return list(column)
