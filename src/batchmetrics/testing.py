"""Test helpers for users' own pipelines: an in-memory sink."""

from __future__ import annotations

from collections.abc import Sequence

from ._events import FileRecord

__all__ = ["MemorySink"]


class MemorySink:
    """A sink that keeps every record in a list; for tests, not for millions of files.

    ``records`` holds what was written, ``flushes`` counts ``flush()`` calls and
    ``closed`` tells whether the batch closed it.
    """

    def __init__(self) -> None:
        self.records: list[FileRecord] = []
        self.flushes = 0
        self.closed = False

    async def write(self, records: Sequence[FileRecord]) -> None:
        if self.closed:
            raise RuntimeError("MemorySink is closed")
        self.records.extend(records)

    async def flush(self) -> None:
        self.flushes += 1

    async def aclose(self) -> None:
        self.closed = True

    @property
    def filenames(self) -> list[str]:
        return [r.filename for r in self.records]
