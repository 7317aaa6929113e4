"""The history of runs in one SQLite file: written with aiosqlite, read with sqlite3.

``Store`` is what ``BatchMetrics(store=...)`` writes through: a run row at the
start (status ``running``), its summary and mergeable state every interval, and
the final summary with the outcome at the end. Optional per-file rows are kept
in msgpack packs of many files each (see ``PackBuilder``), and the rare rows
msgpack cannot hold in column chunks (see ``encode_chunk``). ``History`` is the
synchronous read side the command line uses; it opens the file read-only.

Several processes may write to one file at once: WAL journal, a busy timeout,
and short transactions, each one write statement that takes the write lock
as it starts (so none has to upgrade a read lock, which a busy wait cannot fix).
The busy timeout is waited out in Python, in cancellable retries of a short
SQLite busy wait: a thread inside SQLite's own wait can be neither cancelled nor
interrupted, and it would hold the batch's exit (and the process) until it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import logging
import math
import operator
import os
import socket
import sqlite3
import sys
import time
from array import array
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import accumulate, compress, pairwise, repeat
from operator import attrgetter, countOf, is_not, itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal, TypeVar

import aiofiles.os
import aiosqlite
import anyio
import msgspec

from ._events import (
    F_END,
    F_ERROR_MESSAGE,
    F_ERROR_TYPE,
    F_MEMORY_PEAK,
    F_NAME,
    STATUS_CODES,
    Columns,
    Event,
    FileRecord,
    absolute,
    check_bool,
    check_path,
)
from ._summary import BatchMetricsSummary

if TYPE_CHECKING:
    from ._collector import BatchMetrics

#: Pages of WAL (64 KiB each) after which a commit checkpoints it.
_WAL_PAGES = 64

#: The schema version this code writes; ``PRAGMA user_version`` holds the file's.
SCHEMA_VERSION: Final = 2

#: Migrations by the version they bring the file to; applied in order on open.
MIGRATIONS: Final[dict[int, tuple[str, ...]]] = {
    1: (
        """
        CREATE TABLE runs (
            id INTEGER PRIMARY KEY,
            batch_id TEXT NOT NULL UNIQUE,
            status TEXT NOT NULL,            -- running, finished, failed, cancelled
            host TEXT NOT NULL,
            pid INTEGER NOT NULL,
            interval REAL NOT NULL,          -- seconds between checkpoints
            started_at REAL,                 -- the batch's start stamp (Unix seconds)
            finished_at REAL,                -- the batch's end stamp
            updated_at REAL NOT NULL,        -- wall clock of the last write: liveness
            expected_files INTEGER,          -- BatchMetrics(total_files=...)
            total_files INTEGER NOT NULL DEFAULT 0,
            processed_count INTEGER NOT NULL DEFAULT 0,
            error_count INTEGER NOT NULL DEFAULT 0,
            skip_count INTEGER NOT NULL DEFAULT 0,
            total_duration REAL NOT NULL DEFAULT 0,
            files_per_second REAL NOT NULL DEFAULT 0,
            store_files INTEGER NOT NULL DEFAULT 0,
            files_stored INTEGER NOT NULL DEFAULT 0,
            summary_json TEXT NOT NULL,      -- BatchMetricsSummary.to_dict()
            state_json TEXT NOT NULL         -- Aggregate.to_state(): mergeable
        )
        """,
        """
        CREATE TABLE file_chunks (
            run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
            seq INTEGER NOT NULL,            -- 0, 1, 2, ... within the run
            n INTEGER NOT NULL,              -- rows in the chunk
            filename BLOB NOT NULL,          -- the names one after another, UTF-8
            name_length BLOB NOT NULL,       -- int64 little-endian: each name's length in
                                             -- code points (JSON list if too big; as below)
            end_time BLOB NOT NULL,          -- float64 little-endian, n of them
            duration BLOB NOT NULL,          -- float64 little-endian
            samples BLOB NOT NULL,           -- int64 little-endian (JSON list if too big)
            measurements BLOB NOT NULL,      -- int64 little-endian (JSON list if too big)
            bytes_processed BLOB NOT NULL,   -- int64 little-endian (JSON list if too big)
            status BLOB NOT NULL,            -- one byte a row: 0 success, 1 error, 2 skipped
            error_type TEXT,                 -- JSON [[row, ...], [value, ...]] of the non-null
            error_message TEXT,              -- the same; NULL when every row's is null
            memory_peak TEXT,                -- the same
            PRIMARY KEY (run_id, seq)
        )
        """,
        """
        CREATE TRIGGER file_chunks_count AFTER INSERT ON file_chunks BEGIN
            UPDATE runs SET files_stored = files_stored + NEW.n WHERE id = NEW.run_id;
        END
        """,
    ),
    2: (
        """
        CREATE TABLE file_packs (
            run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
            seq INTEGER NOT NULL,            -- one sequence per run with file_chunks
            n INTEGER NOT NULL,              -- rows in the pack
            rows BLOB NOT NULL,              -- msgpack: an array of n arrays, one a file:
                                             -- [filename, end_time, duration, samples,
                                             --  measurements, bytes_processed, status code,
                                             --  error_type, error_message, memory_peak]
            PRIMARY KEY (run_id, seq)
        )
        """,
        """
        CREATE TRIGGER file_packs_count AFTER INSERT ON file_packs BEGIN
            UPDATE runs SET files_stored = files_stored + NEW.n WHERE id = NEW.run_id;
        END
        """,
    ),
}

#: A running run is shown as interrupted once its last checkpoint is this many
#: intervals old (and at least ``STALE_MIN_SECONDS``), or at once when it ran on
#: this host and its process is gone.
STALE_INTERVALS: Final = 10
STALE_MIN_SECONDS: Final = 30.0

#: The most rows ``History.runs(limit)`` and ``History.slowest(n)`` take: SQLite's
#: ``LIMIT`` is a signed 64-bit int.
MAX_ROWS: Final = 2**63 - 1

_LITTLE = sys.byteorder == "little"
_COMPACT = (",", ":")
#: SQLite's own busy wait, per attempt, in seconds. Kept short: aiosqlite's thread
#: cannot be stopped inside it; ``Store.busy_timeout`` is the total, over retries.
_BUSY_SLICE = 0.1
#: Per-file rows a store keeps waiting while the file cannot be written, in flushes.
_MAX_BEHIND = 16
_T = TypeVar("_T")


logger = logging.getLogger("batchmetrics")


class HistoryError(Exception):
    """The history file is missing, is not a batchmetrics history, or cannot be used."""


#: Values of a stored summary that readers rely on, and their types (the rest is
#: shown as it is).
_SUMMARY_KEYS: tuple[tuple[tuple[str, ...], type | tuple[type, ...]], ...] = (
    (("total_files",), int), (("error_count",), int), (("skip_count",), int),
    (("state",), str), (("errors", "rate_percent"), (int, float)),
    (("timing", "total_duration_seconds"), (int, float)),
    (("throughput", "files_per_second"), (int, float)),
)


def _summary_problem(summary: Any) -> str | None:
    """What is wrong with a stored summary's shape, or ``None``."""
    if not isinstance(summary, dict):
        return f"its summary is {type(summary).__name__}, not an object"
    for path, kind in _SUMMARY_KEYS:
        node: Any = summary
        for key in path:
            if not isinstance(node, dict) or key not in node:
                return f"its summary has no {'.'.join(path)}"
            node = node[key]
        if not isinstance(node, kind) or isinstance(node, bool):
            return f"its summary's {'.'.join(path)} is {node!r}"
    progress = summary.get("progress")
    if progress is not None and not (
            isinstance(progress, dict)
            and all(isinstance(progress.get(k), int | float)
                    for k in ("completed", "total_files", "percent"))):
        return "its summary's progress is damaged"
    return None


# -- per-file rows: msgpack packs, and column chunks for the rest -----------------------------


def _pack(typecode: str, values: list[Any]) -> bytes | list[Any]:
    """Numbers as little-endian array bytes; a plain list when they do not fit the type."""
    arr = array(typecode)
    try:
        arr.fromlist(values)  # all or nothing: on failure the array is left empty
    except OverflowError:
        return list(values)
    if not _LITTLE:  # pragma: no cover - big-endian hosts
        arr.byteswap()
    return arr.tobytes()


def _unpack(typecode: str, data: bytes | str) -> list[Any]:
    if isinstance(data, str):  # a JSON list: see _join
        values: list[Any] = json.loads(data)
        return values
    arr = array(typecode)
    arr.frombytes(data)
    if not _LITTLE:  # pragma: no cover - big-endian hosts
        arr.byteswap()
    return arr.tolist()


def _join(typecode: str, parts: list[bytes | list[Any]]) -> bytes | str:
    """One column of a chunk: the parts' bytes, or a JSON list when a part did not fit."""
    if all(isinstance(part, bytes) for part in parts):
        return b"".join(parts)  # type: ignore[arg-type]  # all bytes, just checked
    values: list[Any] = []
    for part in parts:
        values += _unpack(typecode, part) if isinstance(part, bytes) else part
    return json.dumps(values, separators=_COMPACT)


def _unsparse(data: str | None, n: int) -> list[Any]:
    values: list[Any] = [None] * n
    if data is not None:
        rows, present = json.loads(data)
        for i, value in zip(rows, present, strict=True):
            values[i] = value
    return values


_NAME = itemgetter(F_NAME)
_END = itemgetter(F_END)
_EXTRAS = (itemgetter(F_ERROR_TYPE), itemgetter(F_ERROR_MESSAGE), itemgetter(F_MEMORY_PEAK))


_MSGPACK = msgspec.msgpack.Encoder()


def _array_header(n: int) -> bytes:
    """The msgpack header of an array of ``n`` items."""
    if n < 16:
        return bytes((0x90 | n,))
    if n < 1 << 16:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


class PackBuilder:
    """Per-file rows packed with msgpack as they arrive, until written as one pack.

    A pack is one ``file_packs`` row: a msgpack array holding an array per file,
    in the event layout. Each batch of events is encoded in one C call (about
    0.13 µs and 64 bytes a file) and kept as bytes, without its array header; the
    pack's header is written when it is sealed.
    """

    __slots__ = ("_parts", "n")

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self.n = 0

    def add(self, events: Sequence[Event]) -> bool:
        """Pack ``events``; ``False``, with nothing added, if msgpack cannot hold them
        (an int above 2**64 - 1, a name with a lone surrogate)."""
        try:
            blob = _MSGPACK.encode(events)
        except (OverflowError, UnicodeEncodeError):
            return False
        self._parts.append(blob[len(_array_header(len(events))):])
        self.n += len(events)
        return True

    def pack(self) -> bytes:
        """The ``rows`` of the pack."""
        return _array_header(self.n) + b"".join(self._parts)


class _DamagedRows(HistoryError):
    """A pack or chunk of per-file rows that no record call could have written."""


_Count = Annotated[int, msgspec.Meta(ge=0)]
_Seconds = Annotated[float, msgspec.Meta(ge=0)]
#: Stored rows as the record calls check them (the event layout), checked in C as packs
#: are decoded and chunks converted: a damaged row is an error, never a record with a
#: field of the wrong type.
_ROWS = list[tuple[str, float, _Seconds, _Count, _Count, _Count, Literal[0, 1, 2],
                   str | None, str | None, _Count | None]]
_PACK_ROWS = msgspec.msgpack.Decoder(_ROWS)


def decode_pack(n: int, rows: bytes) -> list[FileRecord]:
    """The records of one pack (``n`` files, msgpack ``rows``)."""
    try:
        items = _PACK_ROWS.decode(rows)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # ValidationError included
        raise _DamagedRows(f"a pack of file rows is damaged: {exc}") from None
    if len(items) != n:
        raise _DamagedRows(f"a pack of file rows is damaged: {len(items)} rows, expected {n}")
    return list(map(FileRecord._make, items))


class ChunkBuilder:
    """Per-file rows as compact columns: the form for rows a msgpack pack cannot hold.

    Schema 1 stored every row this way; since schema 2 rows go in packs
    (``PackBuilder``) and only batches with an int above 2**64 - 1 or a name with
    a lone surrogate come here, one chunk each.

    A chunk is one ``file_chunks`` row holding many files, each column packed:
    names as one UTF-8 string plus their lengths, numbers as little-endian
    int64/float64 arrays, statuses one byte each, and the rarely set fields
    (error type and message, memory peak) as JSON of the rows that have them.
    Events are packed as they arrive (while their memory is still warm) and then
    dropped, so a waiting row costs about 80 bytes. Writing files this way
    costs well under a microsecond each; an ``INSERT`` per file cost 3-6 µs on
    the machine this was built on.
    """

    __slots__ = ("_bytes", "_durations", "_ends", "_extras", "_lengths", "_measurements",
                 "_names", "_samples", "_statuses", "n")

    def __init__(self) -> None:
        self.n = 0
        self._names: list[bytes] = []
        self._lengths: list[bytes | list[Any]] = []
        self._ends: list[bytes | list[Any]] = []
        self._durations: list[bytes | list[Any]] = []
        self._samples: list[bytes | list[Any]] = []
        self._measurements: list[bytes | list[Any]] = []
        self._bytes: list[bytes | list[Any]] = []
        self._statuses: list[bytes] = []
        # error type, error message, memory peak: ([row, ...], [value, ...]) of the non-null
        self._extras: tuple[tuple[list[int], list[Any]], ...] = (([], []), ([], []), ([], []))

    def add(self, events: Sequence[Event]) -> None:
        """Pack ``events`` onto the columns."""
        n = len(events)
        if not n:
            return
        cols = Columns(events)
        names = list(map(_NAME, events))
        self._names.append("".join(names).encode("utf-8", "surrogatepass"))
        self._lengths.append(_pack("q", list(map(len, names))))
        self._ends.append(_pack("d", list(map(_END, events))))
        self._durations.append(_pack("d", cols.durations))
        self._samples.append(_pack("q", cols.samples))
        self._measurements.append(_pack("q", cols.measurements))
        self._bytes.append(_pack("q", cols.nbytes))
        self._statuses.append(cols.statuses)
        offset = self.n
        for getter, (rows, values) in zip(_EXTRAS, self._extras, strict=True):
            if countOf(map(getter, events), None) != n:  # rare: only then build the column
                column = list(map(getter, events))
                present = list(compress(range(n), map(is_not, column, repeat(None))))
                rows += [offset + i for i in present]
                values += [column[i] for i in present]
        self.n += n

    def columns(self) -> tuple[Any, ...]:
        """The values of a ``file_chunks`` row after ``run_id, seq`` (see ``_CHUNK_COLUMNS``)."""
        return (
            self.n,
            b"".join(self._names),
            _join("q", self._lengths),
            _join("d", self._ends),
            _join("d", self._durations),
            _join("q", self._samples),
            _join("q", self._measurements),
            _join("q", self._bytes),
            b"".join(self._statuses),
            *(json.dumps([rows, values], separators=_COMPACT) if rows else None
              for rows, values in self._extras),
        )


def encode_chunk(events: Sequence[Event]) -> tuple[Any, ...]:
    """The ``file_chunks`` column values of ``events`` (after ``run_id, seq``)."""
    builder = ChunkBuilder()
    builder.add(events)
    return builder.columns()


def decode_chunk(row: Sequence[Any]) -> list[FileRecord]:
    """The records of one chunk, from its column values (as ``encode_chunk`` returns them)."""
    try:
        return list(map(FileRecord._make, msgspec.convert(_decode_chunk(row), _ROWS)))
    except (ValueError, TypeError, AttributeError,  # UnicodeDecodeError, JSON's too
            msgspec.ValidationError) as exc:
        raise _DamagedRows(f"a chunk of file rows is damaged: {exc}") from None


def _decode_chunk(row: Sequence[Any]) -> list[tuple[Any, ...]]:
    (n, names, lengths, ends, durations, samples, measurements, nbytes, status, etypes,
     emsgs, peaks) = row
    text = names.decode("utf-8", "surrogatepass")
    offsets = list(accumulate(_unpack("q", lengths), initial=0))
    columns = (
        [text[a:b] for a, b in pairwise(offsets)],
        _unpack("d", ends),
        _unpack("d", durations),
        _unpack("q", samples),
        _unpack("q", measurements),
        _unpack("q", nbytes),
        list(status),
        _unsparse(etypes, n),
        _unsparse(emsgs, n),
        _unsparse(peaks, n),
    )
    if any(len(c) != n for c in columns) or offsets[-1] != len(text):
        raise ValueError(f"expected {n} rows in every column")
    return list(zip(*columns, strict=True))


_CHUNK_COLUMNS = ("n, filename, name_length, end_time, duration, samples, measurements, "
                  "bytes_processed, status, error_type, error_message, memory_peak")
# OR IGNORE: a chunk whose insert landed although its await was cancelled is queued
# again; writing it twice must not count it twice (the trigger fires only on insert).
_INSERT_CHUNK = (f"INSERT OR IGNORE INTO file_chunks (run_id, seq, {_CHUNK_COLUMNS}) "
                 "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
_INSERT_PACK = "INSERT OR IGNORE INTO file_packs (run_id, seq, n, rows) VALUES (?, ?, ?, ?)"


# -- writing -----------------------------------------------------------------------------------


def _newer_schema(shown_path: str, version: int) -> HistoryError:
    return HistoryError(f"{shown_path} has history schema {version}, newer than this "
                        f"batchmetrics knows ({SCHEMA_VERSION}): upgrade batchmetrics")


def _is_locked(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and (
        "locked" in str(exc) or "busy" in str(exc))


class _Run:
    """What the store keeps for one batch it is recording."""

    __slots__ = ("batch_id", "conn", "lock", "pending", "run_id", "seq", "unwritten", "writing")

    def __init__(self, batch_id: str, conn: aiosqlite.Connection, run_id: int) -> None:
        self.batch_id = batch_id
        self.conn = conn
        self.run_id = run_id
        self.lock = anyio.Lock()
        self.pending = PackBuilder()
        # (statement, parameters, rows) of the packs and chunks not written yet, in order
        self.unwritten: list[tuple[str, tuple[Any, ...], int]] = []
        self.seq = 0
        self.writing: asyncio.Future[None] | None = None  # the write in flight

    def add(self, events: Sequence[Event]) -> None:
        """Take per-file rows: onto the pack, or, those msgpack cannot hold, as a chunk."""
        if not self.pending.add(events):
            self.seal()  # rows stay in order: the pack so far, then these
            chunk = ChunkBuilder()
            chunk.add(events)
            self.unwritten.append((_INSERT_CHUNK, (self.run_id, self.seq, *chunk.columns()),
                                   chunk.n))
            self.seq += 1

    def waiting(self) -> int:
        """Rows taken and not written yet."""
        return self.pending.n + sum(n for _, _, n in self.unwritten)

    def seal(self) -> None:
        """Queue the pack of waiting per-file rows for writing."""
        if self.pending.n:
            self.unwritten.append((_INSERT_PACK, (self.run_id, self.seq, self.pending.n,
                                                  self.pending.pack()), self.pending.n))
            self.seq += 1
            self.pending = PackBuilder()

    async def settle(self) -> None:
        """Wait for the chunk write in flight; raise what it raised."""
        writing, self.writing = self.writing, None
        if writing is not None:
            try:
                await writing
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is None or task.cancelling():
                    raise  # this task is cancelled
                # only the write was (the sweep of tasks as asyncio.run ends): its chunk
                # is still queued, for the next write


def _check_choice(value: object, name: str, choices: Iterable[str]) -> str:
    """``value`` if it is one of ``choices``; else the error naming ``name`` and it."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str or None, got {type(value).__name__} {value!r}")
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
    return value


def _check_busy_timeout(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"busy_timeout must be a number of seconds, got "
                        f"{type(value).__name__} {value!r}")
    try:
        seconds = float(value)
    except OverflowError:  # an int past the float range
        seconds = math.inf
    if not seconds > 0 or not math.isfinite(seconds):
        raise ValueError(f"busy_timeout must be a finite number of seconds > 0, got {value!r}")
    return seconds


def _check_file_path(value: object) -> str:
    """``check_path``, and no NUL character (no file can be named so)."""
    path = check_path(value, "path")
    if "\0" in path:
        raise ValueError(f"path must not contain a NUL character, got {path!r}")
    return path


class Store:
    """A SQLite file holding the history of batch runs; pass it (or its path) as ``store=``.

    The file and its tables are created on first use; older files are migrated.
    Each batch recorded gets its own connection, opened when the batch starts and
    closed when it ends, so one ``Store`` can serve several batches at once. A
    ``batch_id`` that is already in the file is refused with ``ValueError``.
    Needs the asyncio backend (aiosqlite).

    Args:
        path: the SQLite file.
        busy_timeout: seconds a write waits for another process's write to end.
        flush_rows: per-file rows (``store_files=True``) are written in chunks of
            about this many, and at every checkpoint; at most that many wait in memory.
    """

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 30.0,
                 flush_rows: int = 32768) -> None:
        path = _check_file_path(path)
        if path == ":memory:":
            raise ValueError(f"path must be a file for the history to outlive the batch, "
                             f"got {path!r}")
        seconds = _check_busy_timeout(busy_timeout)
        if isinstance(flush_rows, bool) or not isinstance(flush_rows, int):
            raise TypeError(f"flush_rows must be an int, got "
                            f"{type(flush_rows).__name__} {flush_rows!r}")
        if flush_rows < 1:
            raise ValueError(f"flush_rows must be an int >= 1, got {flush_rows!r}")
        self.path = absolute(path)
        self.busy_timeout = seconds
        self.flush_rows = flush_rows
        self._runs: dict[int, _Run] = {}

    def __repr__(self) -> str:
        return f"Store({self.path!r})"

    # -- the hooks BatchMetrics calls ------------------------------------------------------

    async def begin(self, metrics: BatchMetrics) -> None:
        """Open the file (creating or migrating it) and record the run as running."""
        if id(metrics) in self._runs:
            raise RuntimeError(f"batch {metrics.batch_id!r} is already being recorded")
        conn = await self._connect()
        try:
            summary = metrics.summary().to_dict()
            summary["state"] = "running"
            state = metrics.state_dict()
            now = time.time()
            try:
                row = await self._retry_locked(
                    conn.execute_insert,
                    "INSERT INTO runs (batch_id, status, host, pid, interval, started_at, "
                    "updated_at, expected_files, store_files, summary_json, state_json) "
                    "VALUES (?, 'running', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (metrics.batch_id, socket.gethostname(), os.getpid(), metrics._interval,
                     state["start_ts"], now, metrics.total_files, int(metrics._store_files),
                     json.dumps(summary), json.dumps(state, separators=_COMPACT)))
            except sqlite3.IntegrityError:
                raise ValueError(
                    f"batch {metrics.batch_id!r} is already in the history {self.path!r}: "
                    "give this run another batch_id") from None
            except sqlite3.Error as exc:  # locked past busy_timeout, disk full, ...
                raise self._error(f"cannot record batch {metrics.batch_id!r}", exc) from exc
        except BaseException:
            with anyio.CancelScope(shield=True):
                await conn.close()
            raise
        assert row is not None
        self._runs[id(metrics)] = _Run(metrics.batch_id, conn, int(row[0]))

    async def checkpoint(self, metrics: BatchMetrics) -> None:
        """Write the current summary and state (and any waiting per-file rows).

        Both are taken together once the lock is held, so they describe the same
        moment (a write in flight may hold the lock while the consumer folds more).
        """
        run = self._runs.get(id(metrics))
        if run is None:
            return
        async with run.lock:
            if self._runs.get(id(metrics)) is not run:  # finished while we waited
                return
            summary, state = metrics.summary().to_dict(), metrics.state_dict()
            await self._write(run, summary, state, None)

    async def write_files(self, metrics: BatchMetrics, events: Sequence[Event]) -> None:
        """Queue per-file rows; write a chunk once ``flush_rows`` are waiting.

        Called from the consumer task. A chunk is written while the consumer goes
        on; if the next chunk is ready before it is done, the consumer waits, and
        so, once their buffer is full, do the producers (backpressure).
        """
        run = self._run_of(metrics)
        run.add(events)
        if run.waiting() >= self.flush_rows:
            # Written behind: the consumer goes on folding while aiosqlite's thread
            # writes the chunk, and waits only if the previous one is still going.
            try:
                await run.settle()
            except sqlite3.Error as exc:
                # Its rows stay queued, written first by the next write. Memory grows
                # while the file cannot be written: past _MAX_BEHIND flushes, give up.
                if run.waiting() >= _MAX_BEHIND * self.flush_rows:
                    raise self._error(f"cannot store the per-file rows of batch "
                                      f"{metrics.batch_id!r}", exc) from exc
                logger.warning("batchmetrics: storing per-file rows of batch %r in %r failed "
                               "(%s); %d rows wait and are retried", metrics.batch_id,
                               self.path, exc, run.waiting())
            run.seal()
            run.writing = asyncio.ensure_future(self._write_chunks(run))

    def queue_files(self, metrics: BatchMetrics, events: Sequence[Event]) -> bool:
        """Queue per-file rows without waiting: the next write, or the run's end, writes
        them. ``False`` when the run is no longer recorded here (let go at the exit's
        deadline): the rows cannot be stored."""
        run = self._runs.get(id(metrics))
        if run is None:
            return False
        run.add(events)
        return True

    def _run_of(self, metrics: BatchMetrics) -> _Run:
        run = self._runs.get(id(metrics))
        if run is None:
            raise RuntimeError(f"batch {metrics.batch_id!r} is not being recorded by {self!r}")
        return run

    async def _write_chunks(self, run: _Run) -> None:
        async with run.lock:
            await self._write(run, None, None, None)

    async def finish(
        self, metrics: BatchMetrics, summary: BatchMetricsSummary, outcome: str
    ) -> None:
        """Write the remaining per-file rows, the final summary and the outcome; close."""
        run = self._run_of(metrics)
        try:
            await self._write_end(run, metrics, summary, outcome)
        except anyio.get_cancelled_exc_class():
            # The exit's deadline: the running statement is interrupted (one in SQLite's
            # busy wait ends within _BUSY_SLICE), and the run stays here for abandon(),
            # which retries within its grace.
            with contextlib.suppress(Exception):
                await run.conn.interrupt()
            raise
        except BaseException as exc:
            del self._runs[id(metrics)]
            await _let_go(run.conn)
            if isinstance(exc, sqlite3.Error):
                raise self._error(f"cannot record the end of batch {metrics.batch_id!r}",
                                  exc) from exc
            raise
        del self._runs[id(metrics)]
        with anyio.CancelScope(shield=True):
            await run.conn.close()

    async def abandon(self, metrics: BatchMetrics, summary: BatchMetricsSummary, outcome: str,
                      *, grace: float) -> None:
        """``finish`` for a batch whose exit ran out of time: what ``grace`` seconds allow.

        The connection's thread is told to stop in any case (it would keep the
        process alive); it ends within a short SQLite busy wait (``_BUSY_SLICE``).
        """
        run = self._runs.pop(id(metrics), None)
        if run is None:
            return
        with anyio.CancelScope(shield=True):
            written = False
            with anyio.move_on_after(grace):
                try:
                    await self._write_end(run, metrics, summary, outcome)
                    written = True
                except Exception:  # still locked, disk full, ...: the thread must stop
                    logger.warning("batchmetrics: the store could not record the end of "
                                   "batch %r after its timeout", metrics.batch_id,
                                   exc_info=True)
            if written:
                with anyio.move_on_after(grace):
                    await run.conn.close()
                    return
            await _let_go(run.conn)

    async def release(self, metrics: BatchMetrics) -> None:
        """Stop recording a batch without writing anything more (its exit failed): the
        connection's thread must end, or it would keep the process alive."""
        run = self._runs.pop(id(metrics), None)
        if run is not None:
            await _let_go(run.conn)

    # -- the writes ------------------------------------------------------------------------

    async def _write_end(self, run: _Run, metrics: BatchMetrics,
                         summary: BatchMetricsSummary, outcome: str) -> None:
        """The remaining per-file rows, the final summary, the state and the outcome."""
        with contextlib.suppress(Exception):  # a failed chunk stays queued: written here
            await run.settle()
        async with run.lock:
            await self._write(run, summary.to_dict(), metrics.state_dict(), outcome)

    async def _connect(self) -> aiosqlite.Connection:
        # Autocommit: every write is one statement, so one transaction and one hop to
        # aiosqlite's thread (each hop can wait for the GIL while producers run).
        # A missing folder is checked first: after a failed connect, aiosqlite's thread
        # outlives the call and may report to an event loop that has closed.
        folder = os.path.dirname(self.path) or "."
        if not await aiofiles.os.path.isdir(folder):
            raise HistoryError(f"cannot create the history {self.path!r}: its folder "
                               f"{folder!r} does not exist")
        if await aiofiles.os.path.exists(self.path) and \
                not await aiofiles.os.path.isfile(self.path):
            raise HistoryError(f"cannot use {self.path!r} as a batchmetrics history: it is "
                               "not a regular file")
        try:
            conn = await aiosqlite.connect(self.path, isolation_level=None,
                                           timeout=min(self.busy_timeout, _BUSY_SLICE))
        except sqlite3.OperationalError as exc:  # no permission, ...
            raise HistoryError(f"cannot open {self.path!r} as a batchmetrics history: "
                               f"{exc}") from exc
        try:
            version = await self._check_ours(conn)
            # Large pages: packs of file rows are big blobs, written with 5x less work
            # than on 4 KiB pages; page_size takes effect only when the file is created.
            # The WAL is checkpointed every 64 pages (4 MiB) and cut back to 4 MiB after:
            # with SQLite's 1,000 pages it stayed at 64 MiB next to a history of 0.5 MB.
            # One script, one hop to the thread; every pragma here may run again (switching
            # to WAL can find the file locked).
            await self._retry_locked(
                conn.executescript,
                "PRAGMA page_size = 65536; PRAGMA synchronous = NORMAL; "
                "PRAGMA foreign_keys = ON; PRAGMA journal_mode = WAL; "
                f"PRAGMA wal_autocheckpoint = {_WAL_PAGES}; "
                f"PRAGMA journal_size_limit = {_WAL_PAGES * 65536};")
            await self._migrate(conn, version)
        except sqlite3.DatabaseError as exc:
            with anyio.CancelScope(shield=True):
                await conn.close()
            raise self._error("cannot use it as a batchmetrics history", exc) from exc
        except BaseException:
            with anyio.CancelScope(shield=True):
                await conn.close()
            raise
        return conn

    async def _check_ours(self, conn: aiosqlite.Connection) -> int:
        """The file's schema version; ``HistoryError`` if it is another application's
        database or from a newer batchmetrics. Before any write: such a file is left as
        it was (not even switched to WAL)."""
        version, tables = await self._retry_locked(_version_and_tables, conn)
        # Ours: a new file (no tables, version 0), or one with our runs table and a version.
        if (tables or version) and ("runs" not in tables or version < 1):
            shown = ", ".join(sorted(tables)[:5]) or "none"
            raise HistoryError(f"{self.path!r} is a SQLite database of something else (tables "
                               f"{shown}, version {version}): give the history its own file")
        if version > SCHEMA_VERSION:
            raise _newer_schema(repr(self.path), version)
        return version

    async def _migrate(self, conn: aiosqlite.Connection, version: int) -> None:
        if version == SCHEMA_VERSION:
            return
        await self._retry_locked(conn.execute, "BEGIN IMMEDIATE")
        try:
            version = await _user_version(conn)  # another process may have migrated meanwhile
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[target]:
                    await conn.execute(statement)
                await conn.execute(f"PRAGMA user_version = {target}")
            await conn.execute("COMMIT")
        except BaseException:
            await _rollback(conn)
            raise

    def _error(self, what: str, exc: sqlite3.Error) -> HistoryError:
        """``HistoryError`` naming the file, and saying so when another writer held it."""
        if _is_locked(exc):
            return HistoryError(f"{self.path!r}: {what}: {exc} (another process held its "
                                f"write lock for more than busy_timeout={self.busy_timeout:g} s)")
        return HistoryError(f"{self.path!r}: {what}: {exc}")

    async def _retry_locked(self, fn: Callable[..., Awaitable[_T]], *args: Any) -> _T:
        """Call ``fn`` (a statement that may find the file locked), for up to ``busy_timeout``.

        Each attempt waits at most ``_BUSY_SLICE`` in SQLite (some lock cases do
        not wait at all); between attempts, a short cancellable sleep. So a locked
        history delays a cancelled or timed-out exit by one slice, not by the
        whole busy timeout, and the last "database is locked" is raised when the
        timeout has passed.
        """
        deadline = time.monotonic() + self.busy_timeout
        pause = 0.005
        while True:
            try:
                return await fn(*args)
            except sqlite3.OperationalError as exc:
                left = deadline - time.monotonic()
                if not _is_locked(exc) or left <= 0:
                    raise
            await anyio.sleep(min(pause, left))
            pause = min(pause * 2, _BUSY_SLICE)

    async def _write(self, run: _Run, summary: dict[str, Any] | None,
                     state: dict[str, Any] | None, outcome: str | None) -> None:
        """Write the waiting per-file rows as a chunk, then the run's row. Hold ``run.lock``.

        Each is one autocommit statement (a write transaction of its own): a
        chunk and its count in ``runs.files_stored`` (by trigger) are written
        together or not at all. A chunk that failed stays queued for the next write.
        """
        run.seal()
        conn = run.conn
        while run.unwritten:
            statement, parameters, _ = run.unwritten[0]
            await self._retry_locked(conn.execute, statement, parameters)
            del run.unwritten[0]
        if summary is not None and state is not None:
            timing, throughput = summary["timing"], summary["throughput"]
            await self._retry_locked(
                conn.execute,
                "UPDATE runs SET status = ?, updated_at = ?, started_at = ?, "
                "finished_at = ?, total_files = ?, processed_count = ?, error_count = ?, "
                "skip_count = ?, total_duration = ?, files_per_second = ?, "
                "summary_json = ?, state_json = ? WHERE id = ?",
                (outcome or "running", time.time(), state["start_ts"], state["end_ts"],
                 summary["total_files"], summary["processed_count"], summary["error_count"],
                 summary["skip_count"], timing["total_duration_seconds"],
                 throughput["files_per_second"], json.dumps(summary),
                 json.dumps(state, separators=_COMPACT), run.run_id))


async def _user_version(conn: aiosqlite.Connection) -> int:
    rows = list(await conn.execute_fetchall("PRAGMA user_version"))  # one hop to the thread
    return int(rows[0][0]) if rows else 0


async def _version_and_tables(conn: aiosqlite.Connection) -> tuple[int, set[str]]:
    """The schema version, and the names of the file's tables (SQLite's own left out)."""
    rows = await conn.execute_fetchall(
        "SELECT (SELECT user_version FROM pragma_user_version), name FROM sqlite_master "
        "WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
        "UNION ALL SELECT (SELECT user_version FROM pragma_user_version), NULL")
    rows = list(rows)
    return int(rows[0][0]), {name for _, name in rows if name is not None}


async def _let_go(conn: aiosqlite.Connection) -> None:
    """Stop a connection without waiting long: a running statement is interrupted,
    and the thread closes the connection and ends after what is queued.

    Waits a moment for that. A statement in SQLite's busy wait does not notice the
    interrupt, but that wait is one short slice (``_BUSY_SLICE``), not the busy timeout.
    """
    with contextlib.suppress(Exception):
        await conn.interrupt()  # no thread hop: runs even in a cancelled scope
    stopped = conn.stop()
    if stopped is not None:
        with anyio.CancelScope(shield=True), anyio.move_on_after(0.5), \
                contextlib.suppress(Exception):
            await stopped


async def _rollback(conn: aiosqlite.Connection) -> None:
    # no transaction open, or the connection is gone: then there is nothing to undo
    with anyio.CancelScope(shield=True), contextlib.suppress(sqlite3.Error, ValueError):
        await conn.execute("ROLLBACK")


# -- reading -----------------------------------------------------------------------------------


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this host (``True`` when unsure)."""
    if sys.platform == "win32":  # pragma: no cover - os.kill(pid, 0) would end it there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists, owned by someone else
        return True
    return True


def derive_status(status: str, host: str, pid: int, interval: float, updated_at: float,
                  now: float, this_host: str) -> str:
    """The status to show: a ``running`` run whose process is gone is ``interrupted``.

    Gone means: it ran on this host and its process no longer exists, or its
    last checkpoint is older than ``STALE_INTERVALS`` intervals (and at least
    ``STALE_MIN_SECONDS``). The stored status is never changed by readers.
    """
    if status != "running":
        return status
    if host == this_host and not pid_alive(pid):
        return "interrupted"
    if now - updated_at > max(STALE_INTERVALS * interval, STALE_MIN_SECONDS):
        return "interrupted"
    return "running"


def _read_only_copy(p: Path, exc: sqlite3.OperationalError) -> bool:
    """Whether ``p`` failed to open only because its folder cannot be written here (no
    -shm file can be made) and can be read as it is: no -wal file with writes the file
    itself lacks (the last writer closed it cleanly)."""
    if "unable to open" not in str(exc) or os.access(p.parent, os.W_OK):
        return False
    wal = p.with_name(p.name + "-wal")
    try:
        return wal.stat().st_size == 0
    except FileNotFoundError:
        return True
    except OSError:
        return False


@dataclass(frozen=True, slots=True)
class StoredRun:
    """One run in the history, as last written.

    ``status`` is what to show (``running``, ``finished``, ``failed``,
    ``cancelled`` or ``interrupted``); ``stored_status`` is the column as
    written. ``summary`` is ``BatchMetricsSummary.to_dict()`` of the last write
    (the final summary once the run has ended) and ``state`` the mergeable
    aggregate state (``Aggregate.from_state``), or ``{}`` for a run read by
    ``History.runs(with_state=False)``.
    """

    batch_id: str
    status: str
    stored_status: str
    host: str
    pid: int
    interval: float
    started_at: float | None
    finished_at: float | None
    updated_at: float
    expected_files: int | None
    store_files: bool
    files_stored: int
    summary: dict[str, Any]
    state: dict[str, Any]


_RUN_COLUMNS = ("batch_id, status, host, pid, interval, started_at, finished_at, updated_at, "
                "expected_files, store_files, files_stored, summary_json, state_json")
#: The same without the state (the largest column), read as ``'{}'``.
_RUN_COLUMNS_NO_STATE = _RUN_COLUMNS.replace("state_json", "'{}'")

#: The statuses ``History.runs(status=...)`` takes; ``interrupted`` is not stored (a
#: reader derives it from a stored ``running``, see ``derive_status``).
RUN_STATUSES: Final = ("running", "finished", "failed", "cancelled", "interrupted")


class History:
    """Read the history file (synchronously, read-only); for the CLI and scripts.

    ``busy_timeout``: seconds to wait for a writer that holds the file locked.

    Raises ``HistoryError`` with a one-line reason when the file is missing, is
    not a SQLite database, holds no batchmetrics history, or was written by a
    newer batchmetrics. Use as a context manager, or call ``close()``.
    """

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 30.0) -> None:
        self.path = _check_file_path(path)
        self._busy_timeout = _check_busy_timeout(busy_timeout)
        p = Path(self.path)
        if not p.exists():
            raise HistoryError(f"no history database at {self.path}")
        if p.is_dir():
            raise HistoryError(f"{self.path} is a directory, not a history database")
        if not p.is_file():  # reading a FIFO would wait for a writer, forever
            raise HistoryError(f"{self.path} is not a regular file, so not a history database")
        #: While the file is read as it is (see ``_connect``): its size and time then.
        self._as_it_was: tuple[int, int] | None = None
        version, has_runs = self._connect(p)
        if version < 1 or not has_runs:
            self._conn.close()
            raise HistoryError(f"{self.path} is a SQLite file but holds no batchmetrics history")
        if version > SCHEMA_VERSION:
            self._conn.close()
            raise _newer_schema(self.path, version)
        self._host = socket.gethostname()

    def _connect(self, p: Path) -> tuple[int, bool]:
        try:
            return self._open(p, immutable=False)
        except sqlite3.OperationalError as exc:
            if not _read_only_copy(p, exc):
                raise self._open_error(exc) from exc
            # In a folder this reader cannot write (read-only media, a read-only view,
            # another user's) SQLite cannot make the -shm file a WAL reader needs. No
            # -wal file holds what the file lacks: read it as it is, and read it again
            # when it changes (another process may write through a view of its own).
            try:
                stat = p.stat()
                found = self._open(p, immutable=True)
            except (OSError, sqlite3.DatabaseError) as exc2:
                raise self._open_error(exc2) from exc2
            self._as_it_was = (stat.st_size, stat.st_mtime_ns)
            return found
        except sqlite3.DatabaseError as exc:
            raise self._open_error(exc) from exc

    def _changed_since_read(self) -> bool:
        """Whether the file read as it is has changed since, or has a -wal file now."""
        p = Path(self.path)
        try:
            stat = p.stat()
            wal = p.with_name(p.name + "-wal")
            return (stat.st_size, stat.st_mtime_ns) != self._as_it_was or \
                (wal.exists() and wal.stat().st_size > 0)
        except OSError:
            return True

    def _open(self, p: Path, *, immutable: bool) -> tuple[int, bool]:
        """Connect read-only; the schema version and whether a ``runs`` table is there."""
        uri = p.absolute().as_uri() + ("?mode=ro&immutable=1" if immutable else "?mode=ro")
        self._conn = sqlite3.connect(uri, uri=True, timeout=self._busy_timeout)
        try:
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            has_runs = self._conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'runs'").fetchone()
        except BaseException:
            self._conn.close()
            raise
        return version, has_runs is not None

    def _open_error(self, exc: sqlite3.Error | OSError) -> HistoryError:
        if isinstance(exc, OSError):
            return HistoryError(f"cannot open {self.path}: {exc.strerror or exc}")
        if _is_locked(exc):
            return HistoryError(f"cannot read {self.path}: another process holds it locked "
                                f"({exc}); try again once it lets go")
        if isinstance(exc, sqlite3.OperationalError) and "unable to open" in str(exc):
            return HistoryError(f"cannot open {self.path}: {exc}")
        return HistoryError(f"{self.path} is not a batchmetrics history database: {exc}")

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._conn.close()

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        if self._as_it_was is not None and self._changed_since_read():
            self._conn.close()
            self._as_it_was = None
            self._connect(Path(self.path))  # as it is now (through its WAL, if it can)
        try:
            return self._conn.execute(sql, params).fetchall()
        except UnicodeEncodeError:  # a batch id with a lone surrogate: none is stored so
            return []
        except sqlite3.DatabaseError as exc:
            raise HistoryError(f"cannot read {self.path}: {exc}") from exc

    def _run(self, row: Sequence[Any], now: float, shown: str | None = None) -> StoredRun:
        """A run from a row of ``_RUN_COLUMNS``; ``shown``: its derived status, if known."""
        (batch_id, status, host, pid, interval, started, finished, updated, expected,
         store_files, files_stored, summary_json, state_json) = row
        try:
            summary, state = json.loads(summary_json), json.loads(state_json)
        except ValueError as exc:
            raise HistoryError(f"run {batch_id!r} in {self.path} is damaged: {exc}") from exc
        problem = _summary_problem(summary) or (
            None if isinstance(state, dict) else f"its state is {type(state).__name__}")
        if problem:
            raise HistoryError(f"run {batch_id!r} in {self.path} is damaged: {problem}")
        return StoredRun(
            batch_id=batch_id,
            status=shown or derive_status(status, host, pid, interval, updated, now, self._host),
            stored_status=status, host=host, pid=pid, interval=interval,
            started_at=started, finished_at=finished, updated_at=updated,
            expected_files=expected, store_files=bool(store_files),
            files_stored=files_stored, summary=summary, state=state)

    def runs(self, limit: int | None = 20, *, status: str | None = None,
             with_state: bool = True,
             damaged: list[HistoryError] | None = None) -> list[StoredRun]:
        """The most recently started runs first; with ``status``, only those shown so.

        Only the runs returned are read: the status is filtered in SQL (for
        ``running`` and ``interrupted``, the stored ``running`` runs are told apart
        from their liveness columns first). ``with_state=False`` leaves each run's
        ``state`` out (``{}``): a listing does not need it, and it is the largest part.
        A damaged run raises ``HistoryError``; given a ``damaged`` list, it is left
        out and its error appended there instead.
        """
        if limit is not None:
            limit = _check_rows(limit, "limit")
        if status is not None:
            _check_choice(status, "status", RUN_STATUSES)
        check_bool(with_state, "with_state")
        if damaged is not None and not isinstance(damaged, list):
            raise TypeError(f"damaged must be a list or None, got {type(damaged).__name__}")
        columns = _RUN_COLUMNS if with_state else _RUN_COLUMNS_NO_STATE
        now = time.time()
        shown: dict[int, str] = {}  # the derived status of the runs to read, by row id
        where, params = "", list[Any]()
        if status in ("running", "interrupted"):
            for row_id, host, pid, interval, updated in self._query(
                    "SELECT id, host, pid, interval, updated_at FROM runs "
                    "WHERE status = 'running' ORDER BY id DESC"):
                if limit is not None and len(shown) >= limit:
                    break
                if derive_status("running", host, pid, interval, updated, now,
                                 self._host) == status:
                    shown[row_id] = status
            if not shown:
                return []
            # row ids are ints (INTEGER PRIMARY KEY): in the statement, not a parameter each
            where = f"WHERE id IN ({', '.join(str(int(i)) for i in shown)})"
        elif status is not None:
            where, params = "WHERE status = ?", [status]
        sql = f"SELECT id, {columns} FROM runs {where} ORDER BY id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        runs = []
        for row_id, *row in self._query(sql, params):
            try:
                runs.append(self._run(row, now, shown.get(row_id)))
            except HistoryError as exc:
                if damaged is None:
                    raise
                damaged.append(exc)
        return runs

    def get(self, batch_id: str) -> StoredRun | None:
        """The run with this batch id, or ``None``."""
        _check_batch_id(batch_id)
        rows = self._query(f"SELECT {_RUN_COLUMNS} FROM runs WHERE batch_id = ?", (batch_id,))
        return self._run(rows[0], time.time()) if rows else None

    def batch_ids(self, limit: int | None = None) -> list[str]:
        """Every batch id (at most ``limit``), the most recent first."""
        sql, params = "SELECT batch_id FROM runs ORDER BY id DESC", list[Any]()
        if limit is not None:
            sql += " LIMIT ?"
            params.append(_check_rows(limit, "limit"))
        return [row[0] for row in self._query(sql, params)]

    def batch_ids_around(self, batch_id: str, n: int) -> list[str]:
        """Up to ``n`` batch ids sorting before ``batch_id`` and ``n`` from it on (in code
        point order): among them, those sharing its longest prefixes. Read from the batch
        id index, whatever the size of the history."""
        _check_batch_id(batch_id)
        n = _check_rows(n, "n")
        before = self._query("SELECT batch_id FROM runs WHERE batch_id < ? "
                             "ORDER BY batch_id DESC LIMIT ?", (batch_id, n))
        after = self._query("SELECT batch_id FROM runs WHERE batch_id >= ? "
                            "ORDER BY batch_id LIMIT ?", (batch_id, n))
        return [row[0] for row in reversed(before)] + [row[0] for row in after]

    def files(self, batch_id: str, *, status: str | None = None) -> Iterator[FileRecord]:
        """The stored per-file rows of a run, in the order they were aggregated (none
        for a run recorded without ``store_files=True``).

        The arguments are checked at the call, and ``KeyError`` is raised there for a
        batch id the history does not hold; the rows are read as they are iterated.
        """
        _check_batch_id(batch_id)
        code = None
        if status is not None:
            code = STATUS_CODES[_check_choice(status, "status", STATUS_CODES)]
        ids = self._query("SELECT id FROM runs WHERE batch_id = ?", (batch_id,))
        if not ids:
            raise KeyError(f"no batch {batch_id!r} in {self.path}")
        return self._files(batch_id, ids[0][0], code)

    def _files(self, batch_id: str, run_id: int, code: int | None) -> Iterator[FileRecord]:
        try:
            yield from self._run_files(run_id, code)
        except _DamagedRows as exc:  # say whose rows, and where
            raise HistoryError(f"run {batch_id!r} in {self.path}: {exc}") from None

    def _run_files(self, run_id: int, code: int | None) -> Iterator[FileRecord]:
        seq = -1
        # schema 1 had chunks only (a read-only History does not migrate the file; a
        # writer may have since: read the version now)
        version = self._query("PRAGMA user_version")[0][0]
        packs = ("SELECT seq, 'pack' FROM file_packs WHERE run_id = ? AND seq > ? UNION ALL "
                 if version >= 2 else "")
        while True:  # one pack or chunk at a time: memory stays bounded for any run size
            found = self._query(
                f"{packs}SELECT seq, 'chunk' FROM file_chunks WHERE run_id = ? AND seq > ? "
                "ORDER BY seq LIMIT 1", (run_id, seq, run_id, seq) if packs else (run_id, seq))
            if not found:
                return
            seq, kind = found[0]
            if kind == "pack":
                ((n, packed),) = self._query(
                    "SELECT n, rows FROM file_packs WHERE run_id = ? AND seq = ?", (run_id, seq))
                records = decode_pack(n, packed)
            else:
                (row,) = self._query(f"SELECT {_CHUNK_COLUMNS} FROM file_chunks "
                                     "WHERE run_id = ? AND seq = ?", (run_id, seq))
                records = decode_chunk(row)
            if code is None:
                yield from records
            else:
                yield from (r for r in records if r.status_code == code)

    def slowest(self, batch_id: str, n: int, *, status: str | None = None) -> list[FileRecord]:
        """The ``n`` longest files of a run (longest first); ``KeyError`` as ``files``."""
        n = _check_rows(n, "n")
        return heapq.nlargest(n, self.files(batch_id, status=status), key=_BY_DURATION)


_BY_DURATION = attrgetter("duration")


def _check_rows(value: object, field: str) -> int:
    """A number of rows: an int (numpy's too) from 0 to 2**63 - 1 (SQLite's ``LIMIT``
    takes no more); ``bool`` is refused."""
    try:
        if isinstance(value, bool):
            raise TypeError
        rows = operator.index(value)  # type: ignore[arg-type]  # int, numpy ints
    except TypeError:
        raise TypeError(f"{field} must be an int, got {type(value).__name__} {value!r}") from None
    if not 0 <= rows <= MAX_ROWS:
        shown = repr(rows) if abs(rows) < 10**60 else f"an int of {rows.bit_length()} bits"
        raise ValueError(f"{field} must be from 0 to 2**63 - 1, got {shown}")
    return rows


def _check_batch_id(value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"batch_id must be a str, got {type(value).__name__} {value!r}")
