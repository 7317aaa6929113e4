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
    F_END,
    F_ERROR_MESSAGE,
    F_ERROR_TYPE,
    F_MEMORY_PEAK,
    F_NAME,
    Columns,
    Event,
)

_NAME = itemgetter(F_NAME)
_END = itemgetter(F_END)
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

    def extend(self, events: Sequence[Event], columns: Columns | None = None) -> None:
        """Append events (already checked); each column is filled at C speed."""
        cols = Columns(events) if columns is None else columns
        i0 = len(self._names)
        self._names.extend(map(_NAME, events))
        self._ends.extend(map(_END, events))
        self._durations.fromlist(cols.durations)
        self._samples = _append_counts(self._samples, cols.samples)
        self._measurements = _append_counts(self._measurements, cols.measurements)
        self._bytes = _append_counts(self._bytes, cols.nbytes)
        self._statuses += cols.statuses
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


def _append_counts(column: array[int] | list[int], values: list[int]) -> array[int] | list[int]:
    """``column`` with ``values`` appended; an int64 array becomes a list of ints the first
    time a value does not fit (``fromlist`` leaves the array unchanged when it fails)."""
    if isinstance(column, list):
        column += values
        return column
    try:
        column.fromlist(values)
    except OverflowError:
        widened = list(column)
        widened += values
        return widened
    return column
