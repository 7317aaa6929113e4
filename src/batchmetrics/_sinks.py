"""Streaming sinks: every per-file row, written as the consumer aggregates it.

A sink is anything with three async methods (:class:`Sink`). The consumer
calls ``write`` with each aggregated batch, ``flush`` every ``interval`` and
``aclose`` once at the end (also when the batch is cancelled). With
``keep_files=False`` a sink gives a complete per-file log in constant memory.
"""

from __future__ import annotations

import asyncio
import errno
import io
import os
import threading
import time
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import aiofiles
import aiofiles.os
import anyio
import anyio.lowlevel

from ._blocking import FILE_EXECUTOR
from ._events import Event, FileRecord, absolute, check_bool, check_count, check_path
from ._render import TEXT_ERRORS, csv_header, csv_rows, jsonl_bytes, log_lines


@runtime_checkable
class Sink(Protocol):
    """Receives per-file records from the consumer task, in order."""

    async def write(self, records: Sequence[FileRecord]) -> None:
        """Take a batch of records (buffering is the sink's business)."""

    async def flush(self) -> None:
        """Make everything written so far durable enough for readers."""

    async def aclose(self) -> None:
        """Flush and release; called once when the batch ends."""


def check_sink(obj: object) -> Sink:
    if not isinstance(obj, Sink):
        raise TypeError(
            f"{obj!r} is not a sink: a sink has async methods write(records), flush() "
            "and aclose() (see batchmetrics.Sink)"
        )
    return obj


#: Rows rendered at a time: about 100 KB of text, under malloc's mmap threshold (128 KiB).
_SLICE = 512

#: Rendering a batch gives the event loop a turn after this long (seconds): a fold of
#: 4,096 CSV rows takes 10-40 ms here, compact JSONL lines 2 ms (no turn, no cost).
_TURN = 0.005

#: Pieces per ``writev`` call: POSIX guarantees at least 16; Linux and macOS take 1024.
_IOV_MAX = min(os.sysconf("SC_IOV_MAX"), 1024) if hasattr(os, "sysconf") else 16


def _write_all(file: io.FileIO, pieces: list[bytes]) -> None:
    """Write ``pieces`` to ``file`` in order, in as few system calls as the kernel allows.

    Runs in a file thread, and holds ``file`` while it runs (see ``aclose``).
    ``writev`` gathers the pieces without joining them into one large buffer (fresh
    pages from the OS, costlier than the copy) and releases the GIL once per call.
    A short write (a full disk, a file size limit) goes on from where it stopped,
    so the error, if any, comes from the next call.
    """
    fd = file.fileno()
    if not hasattr(os, "writev"):  # Windows
        for piece in pieces:
            view = memoryview(piece)
            while view:
                view = view[os.write(fd, view):]
        return
    views: list[bytes | memoryview] = [p for p in pieces if p]
    while views:
        group = views[:_IOV_MAX]
        written = os.writev(fd, group)
        if not written:  # not for a regular file; never loop on it
            raise OSError(errno.EIO, f"writev to {file.name!r} wrote nothing")
        done = 0
        for part in group:
            if written < len(part):
                break
            written -= len(part)
            done += 1
        del views[:done]
        if written:  # a piece written in part: its rest goes first
            views[0] = memoryview(views[0])[written:]


# Blocking calls go to FILE_EXECUTOR's daemon threads, through aiofiles where it has
# the call: one stuck on a dead disk must not keep the process alive.
_close_async = aiofiles.os.wrap(io.FileIO.close)


async def _open_in_thread(path: str, mode: str) -> io.FileIO:
    """``io.FileIO(path, mode)`` in a file thread. Cancellable (an open can hang on a
    FIFO or a dead mount); a file opened after its caller was cancelled is closed."""
    opening = asyncio.get_running_loop().run_in_executor(FILE_EXECUTOR, io.FileIO, path, mode)
    try:
        return await asyncio.shield(opening)
    except BaseException:
        opening.add_done_callback(_close_unclaimed)
        raise


def _close_unclaimed(opening: asyncio.Future[io.FileIO]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        opening.result().close()


class _FileSink:
    """A buffered file sink writing through aiofiles; subclasses render bytes."""

    #: The consumer may hand this sink its raw event tuples (same layout as FileRecord).
    accepts_raw_events = True

    def __init__(self, path: str | os.PathLike[str], *, append: bool = False,
                 buffer_bytes: int = 1 << 20) -> None:
        buffer_bytes = check_count(buffer_bytes, "buffer_bytes")
        self.path = absolute(check_path(path, "path"))
        self._append = check_bool(append, "append")
        self._limit = buffer_bytes
        self._buf: list[bytes] = []
        self._size = 0
        self._file: io.FileIO | None = None  # unbuffered: this sink buffers
        self._writing: asyncio.Future[None] | None = None  # the write in flight
        # Whether a write job runs in the executor, and whether it closes the file when
        # it ends (aclose found it running): guarded by a lock shared with that thread.
        self._job_lock = threading.Lock()
        self._job_running = False
        self._close_after_job = False
        self._closed = False
        #: Rows written so far.
        self.rows = 0

    def _header(self) -> bytes:
        return b""

    def _render(self, records: Sequence[Event]) -> bytes:
        raise NotImplementedError

    @property
    def closed(self) -> bool:
        """Whether the batch it served has closed it."""
        return self._closed

    async def _open(self) -> io.FileIO:
        if self._file is None:
            existed = False
            if self._append:
                try:
                    size = await aiofiles.os.path.getsize(self.path, executor=FILE_EXECUTOR)
                    existed = size > 0
                except FileNotFoundError:
                    existed = False
            f = await _open_in_thread(self.path, "a" if self._append else "w")
            self._file = f
            if not existed:
                self._buf.insert(0, self._header())
            return f
        return self._file

    async def write(self, records: Sequence[FileRecord]) -> None:
        if self._closed:
            raise RuntimeError(f"sink {self.path!r} is closed")
        # Rendered a slice at a time, giving the event loop a turn whenever _TURN has
        # passed: a large batch of slow rows (CSV) must not hold it for tens of ms.
        n = len(records)
        turn_at = time.perf_counter() + _TURN
        done = 0
        while done < n:
            self._take(records[done:done + _SLICE])
            done += _SLICE
            if done < n and time.perf_counter() >= turn_at:
                try:
                    await anyio.lowlevel.checkpoint()
                except BaseException:  # cancelled: the rest goes in without waiting,
                    self._take(records[done:])  # as take() would have had it
                    self.rows += n
                    raise
                turn_at = time.perf_counter() + _TURN
        self.rows += n
        if self._size >= self._limit:
            await self._write_out(behind=True)

    def take(self, records: Sequence[FileRecord] | Sequence[Event]) -> None:
        """Render and buffer ``records`` without waiting (``write`` without the write-out
        and the event loop's turns): the next write, flush or close writes them."""
        if self._closed:
            raise RuntimeError(f"sink {self.path!r} is closed")
        self._take(records)
        self.rows += len(records)

    def _take(self, records: Sequence[FileRecord] | Sequence[Event]) -> None:
        # Slices of _SLICE rows keep every piece of text small: large ones would each be
        # fresh pages from the OS (mmap), which costs more than rendering them.
        for i in range(0, len(records), _SLICE):
            text = self._render(records[i:i + _SLICE])
            self._buf.append(text)
            self._size += len(text)

    async def _settle(self) -> None:
        """Wait for the write in flight; raise what it raised.

        Shielded: a cancelled wait leaves the write running in its thread, and
        still here for ``aclose``, which must not close the file under it.
        """
        writing = self._writing
        if writing is not None:
            try:
                await asyncio.shield(writing)
            finally:
                if writing.done():
                    self._writing = None

    async def _write_out(self, *, behind: bool = False) -> None:
        """Write the buffer out, in order after the write in flight.

        ``behind``: start the write (in a file thread) and return, so the
        consumer goes on while the data is copied to the file; the next write,
        flush or close waits for it first.
        """
        f = await self._open()
        await self._settle()
        if self._buf:
            pieces = self._buf
            self._buf = []
            self._size = 0
            with self._job_lock:
                self._job_running = True
            # submitted now (not when a task first runs): the job surely runs, and ends
            # by clearing _job_running
            self._writing = asyncio.get_running_loop().run_in_executor(
                FILE_EXECUTOR, self._write_job, f, pieces)
            if not behind:
                await self._settle()

    def _write_job(self, f: io.FileIO, pieces: list[bytes]) -> None:
        """In the executor: write, then close the file if ``aclose`` asked for it meanwhile."""
        try:
            _write_all(f, pieces)
        except OSError as exc:
            if exc.filename is None:  # writev's error names no file: say which one
                raise OSError(exc.errno, exc.strerror, self.path) from exc
            raise
        finally:
            with self._job_lock:
                self._job_running = False
                if self._close_after_job:
                    f.close()

    async def flush(self) -> None:
        """Write the buffer out: unbuffered, what is written is what readers see."""
        if self._closed:
            return
        await self._write_out()

    async def aclose(self) -> None:
        """Flush and close the file.

        A write still running when the batch's exit deadline cancels this (a hung
        disk) keeps the file open until it ends, and closes it then, in its thread
        (the event loop may be gone by then): closed under it, the descriptor's number
        could go to the next file opened, and the rest of the write with it.
        """
        if self._closed:
            return
        try:
            await self.flush()
        finally:
            self._closed = True
            f, self._file = self._file, None
            if f is not None:
                with self._job_lock:
                    deferred = self._close_after_job = self._job_running
                if not deferred:
                    with anyio.CancelScope(shield=True):
                        await _close_async(f, executor=FILE_EXECUTOR)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r})"


class JsonlSink(_FileSink):
    """JSON Lines, one object per file.

    By default a compact line with the event as recorded (``LOG_COLUMNS``:
    ``end_ts`` in seconds since the epoch, no derived fields), encoded in C: cheap
    enough to log every file of a fast batch. ``full=True`` writes the export rows
    instead, keys and values as ``get_file_metrics()`` (ISO ``start_time`` and
    ``end_time``, ``samples_per_second``), at about three times the cost per row.

    Buffered (``buffer_bytes``), flushed every ``interval`` and at exit. The file
    is truncated at the first write unless ``append=True``.
    """

    def __init__(self, path: str | os.PathLike[str], *, full: bool = False,
                 append: bool = False, buffer_bytes: int = 1 << 20) -> None:
        check_bool(full, "full")
        super().__init__(path, append=append, buffer_bytes=buffer_bytes)
        self.full = full

    def _render(self, records: Sequence[Event]) -> bytes:
        if self.full:
            return jsonl_bytes(records)
        return log_lines(records)


class CsvSink(_FileSink):
    """CSV: a header, then one row per file, columns as ``export_csv``."""

    def _header(self) -> bytes:
        return csv_header().encode("utf-8")

    def _render(self, records: Sequence[Event]) -> bytes:
        # an undecodable file name (lone surrogates) is written back as its own bytes
        return csv_rows(records).encode("utf-8", TEXT_ERRORS)
