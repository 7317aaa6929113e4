"""Streaming sinks: every per-file row, written as the consumer aggregates it.

A sink is anything with three async methods (:class:`Sink`). The consumer
calls ``write`` with each aggregated batch, ``flush`` every ``interval`` and
``aclose`` once at the end (also when the batch is cancelled). With
``keep_files=False`` a sink gives a complete per-file log in constant memory.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import aiofiles
import aiofiles.os
from aiofiles.threadpool.text import AsyncTextIOWrapper

from ._events import Event, FileRecord
from ._render import csv_header, csv_rows, jsonl_lines


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


class _TextFileSink:
    """A buffered text sink writing through aiofiles; subclasses render lines."""

    #: The consumer may hand this sink its raw event tuples (same layout as FileRecord).
    accepts_raw_events = True

    def __init__(self, path: str | os.PathLike[str], *, append: bool = False,
                 buffer_bytes: int = 1 << 20) -> None:
        if isinstance(buffer_bytes, bool) or not isinstance(buffer_bytes, int) \
                or buffer_bytes < 0:
            raise ValueError(f"buffer_bytes must be an int >= 0, got {buffer_bytes!r}")
        self.path = os.fspath(path)
        self._append = append
        self._limit = buffer_bytes
        self._buf: list[str] = []
        self._size = 0
        self._file: AsyncTextIOWrapper | None = None
        self._closed = False
        #: Rows written so far.
        self.rows = 0

    def _header(self) -> str:
        return ""

    def _render(self, records: Sequence[Event]) -> str:
        raise NotImplementedError

    async def _open(self) -> AsyncTextIOWrapper:
        if self._file is None:
            existed = False
            if self._append:
                try:
                    existed = await aiofiles.os.path.getsize(self.path) > 0
                except FileNotFoundError:
                    existed = False
            self._file = await aiofiles.open(
                self.path, "a" if self._append else "w", encoding="utf-8", newline="")
            if not existed:
                self._buf.insert(0, self._header())
        return self._file

    async def write(self, records: Sequence[FileRecord]) -> None:
        if self._closed:
            raise RuntimeError(f"sink {self.path!r} is closed")
        text = self._render(records)
        self._buf.append(text)
        self._size += len(text)
        self.rows += len(records)
        if self._size >= self._limit:
            await self._write_out()

    async def _write_out(self) -> None:
        f = await self._open()
        if self._buf:
            data = "".join(self._buf)
            self._buf.clear()
            self._size = 0
            await f.write(data)

    async def flush(self) -> None:
        if self._closed:
            return
        await self._write_out()
        assert self._file is not None
        await self._file.flush()

    async def aclose(self) -> None:
        if self._closed:
            return
        try:
            await self.flush()
        finally:
            self._closed = True
            if self._file is not None:
                await self._file.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r})"


class JsonlSink(_TextFileSink):
    """JSON Lines: one object per file, keys as ``get_file_metrics()``.

    Buffered (``buffer_bytes``), flushed every ``interval`` and at exit. The file
    is truncated at the first write unless ``append=True``.
    """

    def _render(self, records: Sequence[Event]) -> str:
        return jsonl_lines(records)


class CsvSink(_TextFileSink):
    """CSV: a header, then one row per file, columns as ``export_csv``."""

    def _header(self) -> str:
        return csv_header()

    def _render(self, records: Sequence[Event]) -> str:
        return csv_rows(records)
