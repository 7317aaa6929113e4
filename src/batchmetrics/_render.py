"""Pure renderers: events and summaries to dicts, JSON text, CSV and JSONL lines.

Nothing here writes: the exporters and sinks only write what these return.
Pure: stdlib only.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from itertools import compress, repeat, starmap
from json.encoder import encode_basestring_ascii as _json_str
from operator import itemgetter, sub, truediv
from typing import Any, cast

import msgspec
import numpy as np

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


@lru_cache(maxsize=256)
def _minute_prefix(minute: int) -> str:
    """``YYYY-MM-DDTHH:MM:`` of a minute since the epoch."""
    return datetime.fromtimestamp(minute * 60, tz=UTC).isoformat()[:17]


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
    minute, sec = divmod(second, 60)
    if us:
        return f"{_minute_prefix(minute)}{sec:02d}.{us:06d}+00:00"
    return f"{_minute_prefix(minute)}{sec:02d}+00:00"


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
    if sps == "inf":  # a subnormal duration: no JSON number; null, as msgspec writes it
        sps = "null"
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
# The sinks and exports render thousands of rows at once. JSON rows are msgspec
# structs encoded in C; CSV rows are tuples of columns pulled out with
# map(itemgetter) for the csv module. Rows that need care (lone surrogates in a
# name, an infinite rate, fields that are not None) take the row-by-row path.

_G = [itemgetter(i) for i in range(10)]


# ISO timestamps of a whole column, vectorised. A row is a fixed-width line
# "YYYY-MM-DDTHH:MM:SS.ffffff+00:00\n" of bytes: the minute's prefix comes from a
# table of the (few) distinct minutes, the seconds and microseconds from digit
# tables, then the bytes are decoded once and split into strings.
_ISO_TEMPLATE = np.frombuffer(b"0000-00-00T00:00:00.000000+00:00\n", dtype=np.uint8)


def _digit_table(width: int) -> np.ndarray[Any, np.dtype[np.uint8]]:
    """Row ``i``: the ASCII digits of ``i``, zero-padded to ``width``."""
    text = "".join(f"{i:0{width}d}" for i in range(10**width))
    return np.frombuffer(text.encode("ascii"), np.uint8).reshape(10**width, width)


_DIGITS2 = _digit_table(2)
_DIGITS3 = _digit_table(3)
_YEAR_10000 = 253_402_300_800.0  # datetime's limit: later times go the row-by-row way


def iso_timestamps(times: Sequence[float]) -> list[str | None]:
    """``iso_timestamp(t) if t else None`` for every ``t``, most of them at C speed."""
    n = len(times)
    if n < 16:  # not worth the arrays
        return [iso_timestamp(t) if t else None for t in times]
    t = np.array(times, dtype=np.float64)
    usual = (t > 0.0) & (t < _YEAR_10000)
    if not usual.all():
        t = np.where(usual, t, 1.0)  # placeholders, redone one by one below
    whole = np.floor(t)
    micros = np.rint((t - whole) * 1e6).astype(np.int64)  # half to even, as datetime
    seconds = whole.astype(np.int64)
    carry = micros == 1_000_000
    if carry.any():
        seconds += carry
        micros[carry] = 0
    minutes, second = np.divmod(seconds, 60)
    distinct, which = np.unique(minutes, return_inverse=True)
    prefixes = np.frombuffer(
        "".join(_minute_prefix(int(m)) for m in distinct).encode("ascii"), np.uint8
    ).reshape(len(distinct), 17)
    rows = np.empty((n, 33), dtype=np.uint8)
    rows[:] = _ISO_TEMPLATE
    rows[:, :17] = prefixes[which]
    rows[:, 17:19] = _DIGITS2[second]
    high, low = np.divmod(micros, 1000)
    rows[:, 20:23] = _DIGITS3[high]
    rows[:, 23:26] = _DIGITS3[low]
    out = cast("list[str | None]", rows.tobytes().decode("ascii").split("\n"))
    out.pop()  # after the last newline
    # on an exact second isoformat leaves the fraction out; odd times go row by row
    for i in np.flatnonzero((micros == 0) | ~usual).tolist():
        out[i] = iso_timestamp(times[i]) if times[i] else None
    return out


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


def _plain_rows(events: list[Event]) -> Iterator[tuple[Any, ...]]:
    """CSV row tuples of plain events, each column computed at C speed."""
    n = len(events)
    durations = list(map(_G[2], events))
    ends = list(map(_G[1], events))
    samples = list(map(_G[3], events))
    return zip(
        map(_G[0], events),
        iso_timestamps(list(map(sub, ends, durations))),  # csv writes None as empty
        iso_timestamps(ends),
        durations, samples, map(_G[4], events),
        map(STATUS_NAMES.__getitem__, map(_G[6], events)),
        repeat(None, n), repeat(None, n), repeat(None, n),
        map(truediv, samples, durations), map(_G[5], events), strict=True)


def _merge(mask: bytearray | None, plain: Iterable[Any], events: Sequence[Event],
           odd_row: Any) -> Iterable[Any]:
    if mask is None:
        return plain
    it = iter(plain)
    return [next(it) if keep else odd_row(events[i]) for i, keep in enumerate(mask)]


class _ExportRow(msgspec.Struct, gc=False):
    """A per-file row as ``file_row_dict`` (``FILE_COLUMNS``, in order)."""

    filename: str
    start_time: str | None
    end_time: str | None
    duration_seconds: float
    samples: int
    measurements: int
    status: str
    error_type: str | None
    error_message: str | None
    memory_peak_bytes: int | None
    samples_per_second: float | int
    bytes_processed: int


class _LogRow(msgspec.Struct, gc=False, omit_defaults=True):
    """A compact per-file log line: the event as recorded, nothing derived.

    The optional fields are left out when they are ``None`` (most lines).
    """

    filename: str
    end_ts: float
    duration_seconds: float
    samples: int
    measurements: int
    bytes_processed: int
    status: str | int  # built from the status code, then named
    error_type: str | None = None
    error_message: str | None = None
    memory_peak_bytes: int | None = None


#: Keys of a compact log line (``log_lines``), in order.
LOG_COLUMNS: tuple[str, ...] = _LogRow.__struct_fields__
_ENCODER = msgspec.json.Encoder()


def jsonl_lines(events: Sequence[Event]) -> str:
    """Events as JSON Lines text, each line parsing to ``file_row_dict(ev)``."""
    return jsonl_bytes(events).decode("utf-8")


def jsonl_bytes(events: Sequence[Event]) -> bytes:
    """``jsonl_lines`` as UTF-8, as it is encoded (for writers of bytes)."""
    if not events:
        return b""
    names = list(map(_G[0], events))
    ends = list(map(_G[1], events))
    durations = list(map(_G[2], events))
    samples = list(map(_G[3], events))
    rates = [s / d if d > 0 else 0 for s, d in zip(samples, durations, strict=True)]
    rows = list(map(
        _ExportRow, names, iso_timestamps(list(map(sub, ends, durations))),
        iso_timestamps(ends), durations, samples, map(_G[4], events),
        map(STATUS_NAMES.__getitem__, map(_G[6], events)), map(_G[7], events),
        map(_G[8], events), map(_G[9], events), rates, map(_G[5], events)))
    try:  # an infinite rate (a subnormal duration) is null, as in file_row_json
        return _ENCODER.encode_lines(rows)
    except UnicodeEncodeError:  # a lone surrogate (an undecodable file name)
        return "".join([file_row_json(ev) + "\n" for ev in events]).encode("ascii")


def log_lines(events: Sequence[Event]) -> bytes:
    """Events as compact JSON Lines (UTF-8): one ``LOG_COLUMNS`` object per event.

    ``end_ts`` is the record time in seconds since the epoch; ``start_time`` and
    ``samples_per_second`` of the export rows are left out, as they follow from
    ``end_ts``, ``duration_seconds`` and ``samples``, and so are ``error_type``,
    ``error_message`` and ``memory_peak_bytes`` when they are ``None``. About a
    third of the cost of an export row, which has two ISO timestamps to format.
    """
    if not events:
        return b""
    rows = list(starmap(_LogRow, events))
    names = STATUS_NAMES
    for row in rows:
        row.status = names[row.status]  # type: ignore[index]  # still the code here
    try:
        return _ENCODER.encode_lines(rows)
    except UnicodeEncodeError:  # a lone surrogate: json.dumps escapes it
        return "".join([json.dumps(log_row_dict(ev)) + "\n" for ev in events]).encode()


def log_row_dict(ev: Event) -> dict[str, Any]:
    """One event as a compact log line's object (``LOG_COLUMNS``, without ``None`` values)."""
    return {key: value for key, value in zip(
        LOG_COLUMNS, (*ev[:6], STATUS_NAMES[ev[6]], *ev[7:]), strict=True) if value is not None}


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


#: A plain event's CSV line (its three optional fields empty), as ``csv.writer`` writes
#: it when no field needs quotes: floats as ``repr``, the excel dialect's ``\r\n``.
_CSV_PLAIN = "%s,%s,%s,%r,%s,%s,%s,,,,%r,%s\r\n"
#: What makes ``csv.writer`` quote a file name (NUL: left to it, whatever it does).
_CSV_SPECIAL = re.compile('[,"\r\n\x00]')


def _csv_line(ev: Event) -> str:
    buf = io.StringIO()
    csv.writer(buf).writerow(_csv_values(ev))
    return buf.getvalue()


def csv_rows(events: Sequence[Event]) -> str:
    """Events as CSV lines (``csv`` module quoting; ``None`` as empty, like ``DictWriter``).

    Plain events (see ``_split_plain``) whose names need no quotes, nearly all of them,
    are formatted in one ``%`` each, about twice as fast as ``csv.writer``, to the same
    text; the rest go through ``csv.writer``.
    """
    if not events:
        return ""
    plain, mask = _split_plain(events)
    names = list(map(_G[0], plain))
    durations = list(map(_G[2], plain))
    ends = list(map(_G[1], plain))
    starts = list(map(sub, ends, durations))
    # a name csv.writer quotes, or a time of 0 (written as empty): its way, for them all
    if _CSV_SPECIAL.search("".join(names)) or not (all(starts) and all(ends)):
        buf = io.StringIO()
        csv.writer(buf).writerows(_merge(mask, _plain_rows(plain), events, _csv_values))
        return buf.getvalue()
    samples = list(map(_G[3], plain))
    lines = map(_CSV_PLAIN.__mod__, zip(
        names, iso_timestamps(starts), iso_timestamps(ends), durations, samples,
        map(_G[4], plain),
        map(STATUS_NAMES.__getitem__, map(_G[6], plain)),
        map(truediv, samples, durations), map(_G[5], plain), strict=True))
    return "".join(_merge(mask, lines, events, _csv_line))


def json_text(obj: Any) -> str:
    """Indented JSON, as the reference writes its exports; a number that is not finite
    (a rate over a subnormal time) is null, as JSON has no Infinity."""
    try:
        return json.dumps(obj, indent=2, default=str, allow_nan=False)
    except ValueError:
        return json.dumps(_finite_only(obj), indent=2, default=str, allow_nan=False)


def _finite_only(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_only(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite_only(v) for v in obj]
    return obj


#: The encoding error handler of CSV text (see ``_undecodable``).
TEXT_ERRORS = "batchmetrics.text"


def _undecodable(exc: UnicodeError) -> tuple[bytes, int]:
    """A lone surrogate in text to write: one from undecodable bytes (``surrogateescape``,
    as ``os.listdir`` gives them) is written back as that byte, any other as its
    ``\\uXXXX`` escape, so its row is never lost."""
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    out = bytearray()
    for ch in exc.object[exc.start:exc.end]:
        code = ord(ch)
        out += bytes([code - 0xDC00]) if 0xDC80 <= code <= 0xDCFF else \
            f"\\u{code:04x}".encode("ascii")
    return bytes(out), exc.end


codecs.register_error(TEXT_ERRORS, _undecodable)

#: A character outside ASCII; in JSON text it can only be inside a string.
_NON_ASCII = re.compile(r"[^\x00-\x7f]")


def _escape_char(match: re.Match[str]) -> str:
    """A character as JSON's ``\\uXXXX`` escape (a surrogate pair above U+FFFF)."""
    return _json_str(match.group())[1:-1]


def export_json_chunks(
    summary: dict[str, Any],
    state: dict[str, Any] | None,
    events: Iterable[Event],
    chunk_rows: int = 2000,
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
        text = jsonl_lines(batch)
        if not text.isascii():  # ASCII only, as the summary and the reference's json.dump
            text = _NON_ASCII.sub(_escape_char, text)
        return ",\n    ".join(text[:-1].split("\n"))

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
