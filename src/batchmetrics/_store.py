"""The history of runs in SQLite (aiosqlite). Placeholder until the store lands."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ._events import Event
from ._summary import BatchMetricsSummary

if TYPE_CHECKING:
    from ._collector import BatchMetrics


class Store:
    """A SQLite file holding batch runs."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)

    async def begin(self, metrics: BatchMetrics) -> None:
        raise NotImplementedError

    async def checkpoint(self, metrics: BatchMetrics, summary: BatchMetricsSummary) -> None:
        raise NotImplementedError

    async def write_files(self, metrics: BatchMetrics, events: Sequence[Event]) -> None:
        raise NotImplementedError

    async def finish(
        self, metrics: BatchMetrics, summary: BatchMetricsSummary, outcome: str
    ) -> None:
        raise NotImplementedError
