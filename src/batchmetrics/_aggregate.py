"""Everything the consumer keeps about a batch, in memory that does not grow with files.

``Aggregate.add_batch`` folds events in; ``merge`` combines aggregates of split
batches exactly; ``to_state``/``from_state`` give the stable JSON form;
``to_summary`` turns it into a :class:`BatchMetricsSummary`. Pure: no clock, no I/O.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from itertools import compress
from operator import itemgetter
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from ._events import (
    ERROR,
    F_ERROR_MESSAGE,
    F_ERROR_TYPE,
    F_NAME,
    F_STATUS,
    FIRST_STAMP,
    STAMPS_END,
    STATUS_NAMES,
    SUCCESS,
    Columns,
    Event,
    check_count,
    is_finite_number,
)
from ._render import iso_timestamp
from ._sketch import VECTOR_MIN, QuantileSketch
from ._stats import RunningStats
from ._summary import (
    BatchMetricsSummary,
    ErrorBreakdown,
    ProgressStats,
    SlowFile,
    ThroughputStats,
    TimingStats,
)

STATE_VERSION = 1
#: Characters of an error message kept in the summary (longer ones are cut, with "…").
MESSAGE_CHARS = 1000

_T = TypeVar("_T")


#: ``bytes.translate`` tables over status codes: success -> 1, error -> 1, others -> 0.
_SUCCESS_MASK = bytes(1 if code == SUCCESS else 0 for code in range(256))
_ERROR_MASK = bytes(1 if code == ERROR else 0 for code in range(256))
#: Quantiles reported per file: median, p90, p95, p99.
_QUANTILES = (0.5, 0.9, 0.95, 0.99)


class Aggregate:
    """Counts, totals, Welford stats and a quantile sketch of a batch's files.

    Timing statistics cover successful files with duration > 0, and totals of
    samples, measurements and bytes cover successful files, as in the reference
    design. ``busy_seconds`` sums every file's duration. The ``slowest`` files
    (any status) and the first ``error_messages_per_type`` messages of each error
    type are kept, both bounded. Errors are counted by type for the first
    ``max_error_types`` types seen; errors of any later type are counted in
    ``other_types``, so memory stays bounded when types are unique (a URL in them).
    """

    __slots__ = (
        "_slow_seq",
        "busy_seconds",
        "by_type",
        "end_ts",
        "error_count",
        "error_messages",
        "error_messages_per_type",
        "max_error_types",
        "measurements",
        "other_types",
        "processed_count",
        "samples",
        "sketch",
        "skip_count",
        "slowest",
        "slowest_k",
        "start_ts",
        "timing",
        "total_bytes",
        "total_files",
    )

    def __init__(self, *, slowest_k: int = 10, error_messages_per_type: int = 3,
                 max_error_types: int = 100) -> None:
        slowest_k = check_count(slowest_k, "slowest_k")
        error_messages_per_type = check_count(error_messages_per_type, "error_messages_per_type")
        max_error_types = check_count(max_error_types, "max_error_types")
        self.total_files = 0
        self.processed_count = 0
        self.error_count = 0
        self.skip_count = 0
        self.samples = 0
        self.measurements = 0
        self.total_bytes = 0
        self.busy_seconds = 0.0
        self.timing = RunningStats()
        self.sketch = QuantileSketch()
        self.by_type: dict[str, int] = {}
        self.other_types = 0  # errors of types beyond the first max_error_types
        self.error_messages: dict[str, list[str]] = {}
        # A min-heap of (duration, -arrival, name, status): among equal durations the
        # earliest file is kept, however the events were batched or merged.
        self.slowest: list[tuple[float, int, str, int]] = []
        self._slow_seq = 0
        self.slowest_k = slowest_k
        self.error_messages_per_type = error_messages_per_type
        self.max_error_types = max_error_types
        self.start_ts: float | None = None
        self.end_ts: float | None = None

    def add_batch(
        self, events: Sequence[Event], columns: Columns | None = None
    ) -> tuple[int, int, int, int]:
        """Fold checked events in (``columns``: the batch's, if already pulled out).

        Returns (files, successes, samples, bytes) of the batch, for rate windows.
        The columns are pulled out with ``map(itemgetter)`` so the per-event work
        runs at C speed; only errors and skips (rare) are looked at one by one.
        """
        n = len(events)
        if n == 0:
            return (0, 0, 0, 0)
        cols = Columns(events) if columns is None else columns
        durations = cols.durations
        statuses = cols.statuses
        ns = statuses.count(SUCCESS)
        ne = statuses.count(ERROR)
        ok: bytes | None = None  # 1 where the event succeeded, when some did not
        if ns == n:
            samples = sum(cols.samples)
            measurements = sum(cols.measurements)
            nbytes = sum(cols.nbytes)
        else:
            ok = statuses.translate(_SUCCESS_MASK)
            samples = sum(compress(cols.samples, ok))
            measurements = sum(compress(cols.measurements, ok))
            nbytes = sum(compress(cols.nbytes, ok))
            if ne:
                self._add_errors(list(compress(events, statuses.translate(_ERROR_MASK))))
        self.total_files += n
        self.processed_count += ns
        self.error_count += ne
        self.skip_count += n - ns - ne
        self.samples += samples
        self.measurements += measurements
        self.total_bytes += nbytes
        self.busy_seconds += sum(durations)
        # timing covers successes with duration > 0
        timed: list[float] | npt.NDArray[np.float64]
        values = None
        if n >= VECTOR_MIN:
            values = np.array(durations, dtype=np.float64)
            keep = values > 0.0
            if ok is not None:
                keep &= np.frombuffer(ok, dtype=np.bool_)
            timed = values[keep]
        else:
            timed = list(filter(None, durations if ok is None else compress(durations, ok)))
        if len(timed):
            self.timing.push_many(timed)
            self.sketch.add_many(timed)
        if self.slowest_k:
            self._add_slowest(events, durations, values)
        return (n, ns, samples, nbytes)

    def _add_errors(self, errors: list[Event]) -> None:
        for etype, count in Counter(map(itemgetter(F_ERROR_TYPE), errors)).items():
            if etype:
                self._count_type(etype, count)
        kept_by_type = self.error_messages
        room = self.error_messages_per_type
        for ev in errors:  # only the first few messages of a type are kept: mostly skipped
            etype = ev[F_ERROR_TYPE]
            if etype:
                kept = kept_by_type.get(etype)
                if kept is None or len(kept) < room:
                    self._note_error(etype, ev[F_ERROR_MESSAGE])

    def _add_slowest(self, events: Sequence[Event], durations: list[float],
                     values: npt.NDArray[np.float64] | None) -> None:
        """Keep the ``slowest_k`` longest files seen (ties: the earlier file)."""
        k = self.slowest_k
        slowest = self.slowest
        full = len(slowest) >= k
        if full and (max(durations) if values is None else values.max()) <= slowest[0][0]:
            return
        # (duration, -index): the longest first, and among equal ones the earliest,
        # compared in C (no key function per event)
        if values is not None and full:  # only the few above the current floor
            above = np.flatnonzero(values > slowest[0][0]).tolist()
            pairs = zip(map(durations.__getitem__, above), [-i for i in above], strict=True)
        else:
            pairs = zip(durations, range(0, -len(durations), -1), strict=True)
        for d, neg in heapq.nlargest(k, pairs):
            if len(slowest) >= k and d <= slowest[0][0]:  # a tie goes to the one kept
                break
            self._slow_seq += 1
            ev = events[-neg]
            item = (d, -self._slow_seq, ev[F_NAME], ev[F_STATUS])
            if len(slowest) < k:
                heapq.heappush(slowest, item)
            else:
                heapq.heapreplace(slowest, item)

    def _count_type(self, etype: str, count: int) -> None:
        by_type = self.by_type
        if etype in by_type:
            by_type[etype] += count
        elif len(by_type) < self.max_error_types:
            by_type[etype] = count
        else:
            self.other_types += count

    def _note_error(self, etype: str, message: str | None) -> None:
        kept = self.error_messages.get(etype)
        if kept is None:
            if len(self.error_messages) >= self.max_error_types:
                return
            kept = self.error_messages[etype] = []
        if message and len(kept) < self.error_messages_per_type:
            if len(message) > MESSAGE_CHARS:  # the per-file rows keep it whole
                message = message[:MESSAGE_CHARS - 1] + "\u2026"
            kept.append(message)

    # -- combining ---------------------------------------------------------------------

    def merge(self, other: Aggregate) -> Aggregate:
        """Fold ``other`` in, as if its events had been added here; return ``self``."""
        if not isinstance(other, Aggregate):
            raise TypeError(f"can only merge Aggregate, got {type(other).__name__}")
        self.total_files += other.total_files
        self.processed_count += other.processed_count
        self.error_count += other.error_count
        self.skip_count += other.skip_count
        self.samples += other.samples
        self.measurements += other.measurements
        self.total_bytes += other.total_bytes
        self.busy_seconds += other.busy_seconds
        self.timing.merge(other.timing)
        self.sketch.merge(other.sketch)
        # the larger cap: a part that counted more types exactly keeps them counted
        self.max_error_types = max(self.max_error_types, other.max_error_types)
        for etype, count in other.by_type.items():
            self._count_type(etype, count)
        self.other_types += other.other_types
        for etype, messages in other.error_messages.items():
            for message in messages:
                self._note_error(etype, message)
            if not messages and etype not in self.error_messages:
                self._note_error(etype, None)
        for d, _, name, st in sorted(other.slowest, key=_arrival):  # as if they came after
            self._slow_seq += 1
            item = (d, -self._slow_seq, name, st)
            if len(self.slowest) < self.slowest_k:
                heapq.heappush(self.slowest, item)
            elif self.slowest_k and d > self.slowest[0][0]:
                heapq.heapreplace(self.slowest, item)
        self.start_ts = _pick(min, self.start_ts, other.start_ts)
        self.end_ts = _pick(max, self.end_ts, other.end_ts)
        return self

    def copy(self) -> Aggregate:
        return Aggregate.from_state(self.to_state())

    # -- the stable JSON form -------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        """A JSON-able dict; ``from_state`` rebuilds an equal aggregate."""
        return {
            "version": STATE_VERSION,
            "total_files": self.total_files,
            "processed_count": self.processed_count,
            "error_count": self.error_count,
            "skip_count": self.skip_count,
            "samples": self.samples,
            "measurements": self.measurements,
            "bytes_processed": self.total_bytes,
            "busy_seconds": self.busy_seconds,
            "timing": self.timing.to_state(),
            "sketch": self.sketch.to_state(),
            "by_type": dict(self.by_type),
            "other_types": self.other_types,
            "max_error_types": self.max_error_types,
            "error_messages": {k: list(v) for k, v in self.error_messages.items()},
            "slowest": [[d, name, STATUS_NAMES[st]]  # longest first; ties in arrival order
                        for d, _, name, st in sorted(self.slowest, key=_slowest_first)],
            "slowest_k": self.slowest_k,
            "start_ts": self.start_ts,
            "end_ts": self.end_ts,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Aggregate:
        """Rebuild from ``to_state()``; ``ValueError`` names the bad field and its value."""
        if not isinstance(state, dict):
            raise TypeError(f"aggregate state must be a dict, got {type(state).__name__}")
        version = state.get("version")
        if version != STATE_VERSION:
            raise ValueError(f"aggregate state version {version!r} is not supported "
                             f"(this batchmetrics reads version {STATE_VERSION})")
        try:
            return cls._from_checked_state(state)
        except ValueError as exc:
            raise ValueError(f"bad aggregate state: {exc}") from exc
        except (KeyError, TypeError, AttributeError, OverflowError) as exc:  # a missed case
            raise ValueError(f"bad aggregate state: {type(exc).__name__}: {exc}") from exc

    @classmethod
    def _from_checked_state(cls, state: dict[str, Any]) -> Aggregate:
        # other_types and max_error_types came after version 1's first release: 0 and
        # 100 (the cap then, on messages only) when absent
        agg = cls(slowest_k=_count(state.get("slowest_k", 10), "slowest_k"),
                  max_error_types=_count(state.get("max_error_types", 100), "max_error_types"))
        agg.other_types = _count(state.get("other_types", 0), "other_types")
        for key in ("total_files", "processed_count", "error_count", "skip_count",
                    "samples", "measurements"):
            setattr(agg, key, _count(_field(state, key), key))
        agg.total_bytes = _count(_field(state, "bytes_processed"), "bytes_processed")
        agg.busy_seconds = _seconds(_field(state, "busy_seconds"), "busy_seconds")
        agg.timing = _nested(RunningStats.from_state, state, "timing")
        agg.sketch = _nested(QuantileSketch.from_state, state, "sketch")
        agg.by_type = {_name(k, "by_type"): _count(v, f"by_type[{k!r}]")
                       for k, v in _mapping(state, "by_type").items()}
        agg.error_messages = {_name(k, "error_messages"): _messages(v, f"error_messages[{k!r}]")
                              for k, v in _mapping(state, "error_messages").items()}
        codes = {name: code for code, name in enumerate(STATUS_NAMES)}
        slowest = _field(state, "slowest")
        if not isinstance(slowest, list):
            raise ValueError(f"slowest must be a list, got {_show(slowest)}")
        for i, item in enumerate(slowest):
            if not (isinstance(item, list | tuple) and len(item) == 3 and isinstance(item[1], str)
                    and item[2] in codes):
                raise ValueError(f"slowest[{i}] must be [seconds, filename, one of "
                                 f"{', '.join(STATUS_NAMES)}], got {_show(item)}")
            d = _seconds(item[0], f"slowest[{i}][0]")
            agg._slow_seq += 1
            heapq.heappush(agg.slowest, (d, -agg._slow_seq, item[1], codes[item[2]]))
        agg.start_ts = _timestamp(_field(state, "start_ts"), "start_ts")
        agg.end_ts = _timestamp(_field(state, "end_ts"), "end_ts")
        agg._check_consistent()
        return agg

    def _check_consistent(self) -> None:
        """Raise ``ValueError`` where the fields of a rebuilt state contradict each other
        (a hand-edited or damaged file): every aggregate this code builds passes."""
        parts = (self.processed_count, self.error_count, self.skip_count)
        if self.total_files != sum(parts):
            raise ValueError(
                f"total_files {self.total_files} is not processed_count + error_count + "
                f"skip_count ({' + '.join(map(str, parts))} = {sum(parts)})")
        typed = sum(self.by_type.values()) + self.other_types
        if typed > self.error_count:
            raise ValueError(f"by_type and other_types count {typed} errors, more than "
                             f"error_count {self.error_count}")
        if self.timing.count != self.sketch.count:
            raise ValueError(f"timing counts {self.timing.count} durations and sketch "
                             f"{self.sketch.count}: they hold the same ones")
        if self.timing.count > self.processed_count:
            raise ValueError(f"timing counts {self.timing.count} durations, more than "
                             f"processed_count {self.processed_count}")
        if len(self.slowest) > self.slowest_k:
            raise ValueError(f"slowest holds {len(self.slowest)} files, more than "
                             f"slowest_k {self.slowest_k}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Aggregate):
            return NotImplemented
        return self.to_state() == other.to_state()

    __hash__ = None  # type: ignore[assignment]

    # -- summaries ------------------------------------------------------------------------

    def to_summary(
        self,
        batch_id: str,
        *,
        now: float | None = None,
        state: str = "finished",
        throughput_recent: tuple[float, float, float, float] | None = None,
        progress_total: int | None = None,
        eta: tuple[float | None, float | None, float | None] = (None, None, None),
        in_flight: int = 0,
    ) -> BatchMetricsSummary:
        """The summary at this moment, in O(buckets) time.

        ``total_duration`` is ``end - start`` when both are stamped; while running
        (no end yet) it is ``now - start``; with no stamps at all it is the sum of
        timed durations, as in the reference. ``throughput_recent`` is
        (files/s, samples/s, bytes/s, window seconds).
        """
        start, end = self.start_ts, self.end_ts
        if end is None and now is not None and start is not None:
            end = now
        t = self.timing
        # stamps are tested against None, not for truth: an injected clock may start at 0
        total_duration = (end - start if start is not None and end is not None
                          else (t.total if t.count else 0.0))
        if t.count:
            median, p90, p95, p99 = self.sketch.quantiles(_QUANTILES)
            timing = TimingStats(
                total_duration=total_duration,
                average_per_file=t.mean,
                min_per_file=t.min,
                max_per_file=t.max,
                median_per_file=median,
                stddev_per_file=t.stddev,
                p90_per_file=p90,
                p95_per_file=p95,
                p99_per_file=p99,
                busy_seconds=self.busy_seconds,
                parallelism=self.busy_seconds / total_duration if total_duration > 0 else 0.0,
            )
        else:
            timing = TimingStats(
                total_duration=total_duration,
                busy_seconds=self.busy_seconds,
                parallelism=self.busy_seconds / total_duration if total_duration > 0 else 0.0,
            )
        rf, rs, rb, window = throughput_recent or (0.0, 0.0, 0.0, 0.0)
        if total_duration > 0:
            throughput = ThroughputStats(
                files_per_second=self.processed_count / total_duration,
                samples_per_second=self.samples / total_duration,
                measurements_per_second=self.measurements / total_duration,
                bytes_per_second=self.total_bytes / total_duration,
                recent_files_per_second=rf,
                recent_samples_per_second=rs,
                recent_bytes_per_second=rb,
                recent_window_seconds=window,
            )
        else:
            throughput = ThroughputStats(
                recent_files_per_second=rf,
                recent_samples_per_second=rs,
                recent_bytes_per_second=rb,
                recent_window_seconds=window,
            )
        errors = ErrorBreakdown(
            by_type=dict(self.by_type),
            other_types=self.other_types,
            total=self.error_count,
            rate=self.error_count / self.total_files if self.total_files > 0 else 0.0,
            messages={k: list(v) for k, v in self.error_messages.items()},
        )
        progress = None
        if progress_total is not None:
            done = self.total_files
            remaining = max(progress_total - done, 0)
            progress = ProgressStats(
                total_files=progress_total,
                completed=done,
                remaining=remaining,
                percent=100.0 * min(done, progress_total) / progress_total
                if progress_total
                else 100.0,
                eta_seconds=eta[0],
                eta_low_seconds=eta[1],
                eta_high_seconds=eta[2],
            )
        return BatchMetricsSummary(
            batch_id=batch_id,
            total_files=self.total_files,
            processed_count=self.processed_count,
            error_count=self.error_count,
            skip_count=self.skip_count,
            timing=timing,
            throughput=throughput,
            errors=errors,
            start_time=iso_timestamp(self.start_ts) if self.start_ts is not None else "",
            end_time=iso_timestamp(self.end_ts) if self.end_ts is not None else "",
            state=state,
            total_samples=self.samples,
            total_measurements=self.measurements,
            total_bytes=self.total_bytes,
            in_flight=in_flight,
            slowest_files=tuple(
                SlowFile(name, d, STATUS_NAMES[st])
                for d, _, name, st in sorted(self.slowest, key=_slowest_first)
            ),
            progress=progress,
        )


def _arrival(item: tuple[float, int, str, int]) -> int:
    return -item[1]


def _slowest_first(item: tuple[float, int, str, int]) -> tuple[float, int]:
    """Longest first; among equal durations the earliest."""
    return -item[0], -item[1]


def _pick(fn: Any, a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return float(fn(a, b))


def _show(value: Any) -> str:
    """``repr(value)``, cut to one short line."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _field(state: dict[str, Any], name: str) -> Any:
    if name not in state:
        raise ValueError(f"{name} is missing")
    return state[name]


#: Totals in a state are below this: sums of per-file counts (< 2**128) over fewer
#: than 2**64 files. Past it, rates could not convert them to float.
_TOTAL_LIMIT = 2**192


def _count(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {_show(value)}")
    if value >= _TOTAL_LIMIT:
        raise ValueError(f"{name} must be < 2**192, got an int of {value.bit_length()} bits")
    return value


def _seconds(value: Any, name: str) -> float:
    if not is_finite_number(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {_show(value)}")
    return float(value)


def _timestamp(value: Any, name: str) -> float | None:
    if value is not None and not is_finite_number(value):
        raise ValueError(f"{name} must be a finite number or null, got {_show(value)}")
    return None if value is None else float(value)


def _name(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name} keys must be strings, got {_show(value)}")
    return value


def _mapping(state: dict[str, Any], name: str) -> dict[Any, Any]:
    value = _field(state, name)
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be an object, got {_show(value)}")
    return value


def _messages(value: Any, name: str) -> list[str]:
    if not isinstance(value, list | tuple) or not all(isinstance(m, str) for m in value):
        raise ValueError(f"{name} must be a list of strings, got {_show(value)}")
    return list(value)


def _nested(build: Callable[[dict[str, Any]], _T], state: dict[str, Any], name: str) -> _T:
    """``build(state[name])``, its errors (whatever their type) named after the field."""
    value = _mapping(state, name)
    try:
        return build(value)
    except KeyError as exc:
        raise ValueError(f"{name} has no {exc}") from exc
    except (TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise ValueError(f"{name}: {exc}") from exc


def merge_states(states: Iterable[dict[str, Any]]) -> Aggregate:
    """One aggregate from several ``to_state()`` dicts (batches split across processes).

    ``ValueError`` names the field and value of a state that cannot be read, whose
    stamps are not dates ``datetime`` can write, or whose
    totals added to the others' leave what a state can hold. States are read one
    at a time, in order: an error comes while the state it is about is the last read.
    """
    total = Aggregate()
    first = True
    for state in states:
        agg = Aggregate.from_state(state)
        problem = _stamps_problem(agg)
        if problem:
            raise ValueError(f"bad aggregate state: {problem}")
        if first:
            total = agg
            first = False
        else:
            total.merge(agg)
            problem = _stamps_problem(total) or _sums_problem(total)
            if problem:
                raise ValueError(f"merged state: {problem}")
    return total


def _stamps_problem(agg: Aggregate) -> str | None:
    """What is wrong with the start and end stamps, or ``None``."""
    for name, ts in (("start_ts", agg.start_ts), ("end_ts", agg.end_ts)):
        if ts is not None and not FIRST_STAMP <= ts < STAMPS_END:
            return (f"{name} must be a Unix time in [{FIRST_STAMP:.0f}, {STAMPS_END:.0f}) "
                    f"(years 1 to 9999), got {ts!r}")
    return None


def _sums_problem(agg: Aggregate) -> str | None:
    """What sum of merged states leaves what a state can hold (see ``from_state``), or ``None``."""
    totals = [("total_files", agg.total_files), ("processed_count", agg.processed_count),
              ("error_count", agg.error_count), ("skip_count", agg.skip_count),
              ("samples", agg.samples), ("measurements", agg.measurements),
              ("bytes_processed", agg.total_bytes), ("other_types", agg.other_types),
              *((f"by_type[{k!r}]", v) for k, v in agg.by_type.items())]
    for name, count in totals:
        if count >= _TOTAL_LIMIT:
            return f"{name} must be < 2**192, got an int of {count.bit_length()} bits"
    for name, value in (("busy_seconds", agg.busy_seconds), ("timing mean", agg.timing.mean),
                        ("timing m2", agg.timing.m2)):
        if not math.isfinite(value):
            return f"{name} must be a finite number, got {value!r} (past the float range)"
    return None


__all__ = ["Aggregate", "merge_states"]
