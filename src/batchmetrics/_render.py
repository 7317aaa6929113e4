"""Pure renderers: events and summaries to dicts, JSON text, CSV and JSONL lines.

Nothing here writes: the exporters and sinks only write what these return.
Pure: stdlib only.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from itertools import compress, repeat
from json.encoder import encode_basestring_ascii as _json_str
from operator import itemgetter, mod, mul, sub, truediv
from typing import Any

from ._events import STATUS_NAMES, Event

#: Per-file columns: the reference's, in its order, then ours.
FILE_COLUMNS: tuple[str, ...] = (
    "filename",
    "start_time",
    "end_time",
    "duration_seconds",
    "samples",
    "measurements",
    "status",
    "error_type",
    "error_message",
    "memory_peak_bytes",
    "samples_per_second",
    "bytes_processed",
)


@lru_cache(maxsize=1024)
def _second_prefix(second: int) -> str:
    return datetime.fromtimestamp(second, tz=UTC).isoformat()[:-6]  # drop "+00:00"


def iso_timestamp(ts: float) -> str:
    """``datetime.fromtimestamp(ts, tz=UTC).isoformat()``, about 5x faster.

    Rounds to the microsecond half-to-even exactly as ``datetime`` does, and like
    ``isoformat`` leaves the fraction out when it is zero.
    """
    if ts < 0 or not math.isfinite(ts):
        return datetime.fromtimestamp(ts, tz=UTC).isoformat()
    frac, whole = math.modf(ts)
    us = round(frac * 1e6)
    second = int(whole)
    if us >= 1_000_000:
        second += 1
        us -= 1_000_000
    if us:
        return f"{_second_prefix(second)}.{us:06d}+00:00"
    return f"{_second_prefix(second)}+00:00"


def file_row_dict(ev: Event) -> dict[str, Any]:
    """One event as the reference's ``FileMetrics.to_dict()`` (plus ``bytes_processed``)."""
    end = ev[1]
    duration = ev[2]
    start = end - duration
    return {
        "filename": ev[0],
        "start_time": iso_timestamp(start) if start else None,
        "end_time": iso_timestamp(end) if end else None,
        "duration_seconds": duration,
        "samples": ev[3],
        "measurements": ev[4],
        "status": STATUS_NAMES[ev[6]],
        "error_type": ev[7],
        "error_message": ev[8],
        "memory_peak_bytes": ev[9],
        "samples_per_second": ev[3] / duration if duration > 0 else 0,
        "bytes_processed": ev[5],
    }


def _opt_str(value: str | None) -> str:
    return "null" if value is None else str(_json_str(value))


def file_row_json(ev: Event) -> str:
    """One event as a one-line JSON object with the keys of ``file_row_dict``.

    Hand-built for speed (a JSONL sink writes one per file); equal, once parsed,
    to ``json.dumps(file_row_dict(ev))``.
    """
    name, end, duration, samples, measurements, nbytes, status, etype, emsg, peak = ev
    start = end - duration
    sps = repr(samples / duration) if duration > 0 else "0"
    if sps == "inf":  # a subnormal duration: spelled as json.dumps does, so it parses
        sps = "Infinity"
    return (
        f'{{"filename": {_json_str(name)}, '
        f'"start_time": {_opt_str(iso_timestamp(start)) if start else "null"}, '
        f'"end_time": {_opt_str(iso_timestamp(end)) if end else "null"}, '
        f'"duration_seconds": {duration!r}, "samples": {samples}, '
        f'"measurements": {measurements}, "status": "{STATUS_NAMES[status]}", '
        f'"error_type": {_opt_str(etype)}, "error_message": {_opt_str(emsg)}, '
        f'"memory_peak_bytes": {"null" if peak is None else peak}, '
        f'"samples_per_second": {sps}, "bytes_processed": {nbytes}}}'
    )


# -- column-wise rendering: a whole batch at C speed -------------------------------------
#
# The sinks and exports render thousands of rows at once. Pulling each column out
# with map(itemgetter) and formatting every row with one ``%`` over a ``zip`` keeps
# the per-row work in C; the rare rows that need care (fields that are not None,
# zero durations, a timestamp on an exact second) send the batch to the row path.

_ROW_JSON = (
    '{"filename": %s, "start_time": %s, "end_time": %s, "duration_seconds": %r, '
    '"samples": %d, "measurements": %d, "status": %s, "error_type": %s, '
    '"error_message": %s, "memory_peak_bytes": %s, "samples_per_second": %r, '
    '"bytes_processed": %d}\n'
)
_STATUS_JSON = tuple(f'"{name}"' for name in STATUS_NAMES)
_G = [itemgetter(i) for i in range(10)]


def _iso_column(times: list[float], quote: str) -> list[str]:
    """ISO strings of timestamps (quoted with ``quote``), as ``iso_timestamp`` gives them."""
    if not times:
        return []
    micros = list(map(round, map(mul, map(mod, times, repeat(1.0)), repeat(1e6))))
    column = list(map(f"{quote}%s.%06d+00:00{quote}".__mod__,
                      zip(map(_second_prefix, map(int, times)), micros, strict=True)))
    if 0 in micros or 1_000_000 in micros or min(times) <= 0.0:
        # an exact second, a carry into the next one, or the epoch and before: row by row
        for i, t in enumerate(times):
            if micros[i] in (0, 1_000_000) or t <= 0.0:
                column[i] = ("null" if quote else "") if not t else \
                    f"{quote}{iso_timestamp(t)}{quote}"
    return column


def _split_plain(events: Sequence[Event]) -> tuple[list[Event], bytearray | None]:
    """The plain events (optional fields all None, a usable duration), and a mask if any are not."""
    # durations of 0 (no rate) or under 1e-280 s (samples / duration overflows to inf)
    odd = [i for i, ev in enumerate(events)
           if ev[7] is not None or ev[8] is not None or ev[9] is not None or not ev[2] > 1e-280]
    if not odd:
        return list(events), None
    mask = bytearray(b"\x01") * len(events)
    for i in odd:
        mask[i] = 0
    return list(compress(events, mask)), mask


def _plain_rows(events: list[Event], quote: str, status_names: tuple[str, ...]
                ) -> Iterator[tuple[Any, ...]]:
    """Row tuples of plain events, each column computed at C speed."""
    n = len(events)
    durations = list(map(_G[2], events))
    ends = list(map(_G[1], events))
    samples = list(map(_G[3], events))
    null = "null" if quote else None
    names = map(_G[0], events)
    return zip(
        map(_json_str, names) if quote else names,
        _iso_column(list(map(sub, ends, durations)), quote),
        _iso_column(ends, quote),
        durations, samples, map(_G[4], events),
        map(status_names.__getitem__, map(_G[6], events)),
        repeat(null, n), repeat(null, n), repeat(null, n),
        map(truediv, samples, durations), map(_G[5], events), strict=True)


def _merge(mask: bytearray | None, plain: Iterable[Any], events: Sequence[Event],
           odd_row: Any) -> Iterable[Any]:
    if mask is None:
        return plain
    it = iter(plain)
    return [next(it) if keep else odd_row(events[i]) for i, keep in enumerate(mask)]


def jsonl_lines(events: Sequence[Event]) -> str:
    """Events as JSON Lines text (one object per line, newline-terminated)."""
    if not events:
        return ""
    plain, mask = _split_plain(events)
    lines = map(_ROW_JSON.__mod__, _plain_rows(plain, '"', _STATUS_JSON))
    return "".join(_merge(mask, lines, events, lambda ev: file_row_json(ev) + "\n"))


def _csv_values(ev: Event) -> list[Any]:
    name, end, duration, samples, measurements, nbytes, status, etype, emsg, peak = ev
    start = end - duration
    return [
        name,
        iso_timestamp(start) if start else None,
        iso_timestamp(end) if end else None,
        duration,
        samples,
        measurements,
        STATUS_NAMES[status],
        etype,
        emsg,
        peak,
        samples / duration if duration > 0 else 0,
        nbytes,
    ]


def csv_header() -> str:
    """The CSV header line."""
    buf = io.StringIO()
    csv.writer(buf).writerow(FILE_COLUMNS)
    return buf.getvalue()


def csv_rows(events: Sequence[Event]) -> str:
    """Events as CSV lines (``csv`` module quoting; ``None`` as empty, like ``DictWriter``)."""
    buf = io.StringIO()
    if events:
        plain, mask = _split_plain(events)
        rows = _plain_rows(plain, "", STATUS_NAMES)
        csv.writer(buf).writerows(_merge(mask, rows, events, _csv_values))
    return buf.getvalue()


def json_text(obj: Any) -> str:
    """Indented JSON, as the reference writes its exports."""
    return json.dumps(obj, indent=2, default=str)


def export_json_chunks(
    summary: dict[str, Any],
    state: dict[str, Any] | None,
    events: Iterable[Event],
    chunk_rows: int = 5000,
) -> Iterator[str]:
    """The JSON export ``{"summary", "files", "state"}`` as text chunks.

    Yielding chunks lets the writer give the event loop a turn between them,
    so a million rows never block it for long.
    """
    head = {"summary": summary}
    text = json_text(head)
    yield text[: text.rfind("}")].rstrip() + ',\n  "files": ['
    first = True
    chunk: list[Event] = []

    def rows_text(batch: list[Event]) -> str:
        return ",\n    ".join(jsonl_lines(batch)[:-1].split("\n"))

    for ev in events:
        chunk.append(ev)
        if len(chunk) >= chunk_rows:
            yield ("\n    " if first else ",\n    ") + rows_text(chunk)
            first = False
            chunk = []
    tail: list[str] = []
    if chunk:
        tail.append(("\n    " if first else ",\n    ") + rows_text(chunk))
        first = False
    chunk_end = "]" if first else "\n  ]"
    tail.append(chunk_end)
    if state is not None:
        state_text = json.dumps(state, separators=(",", ":"))
        tail.append(f',\n  "state": {state_text}')
    tail.append("\n}\n")
    yield "".join(tail)
