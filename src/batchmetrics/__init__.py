"""Measure async batch jobs while they run.

Constant-memory streaming aggregates, live summaries, atomic exports and a
SQLite history of runs. Start with :class:`BatchMetrics`.
"""

from typing import Any as _Any

from ._aggregate import Aggregate as Aggregate
from ._aggregate import merge_states as merge_states
from ._collector import BatchMetrics as BatchMetrics
from ._collector import BatchState as BatchState
from ._collector import Tracked as Tracked
from ._collector import get_batch_stats as get_batch_stats
from ._events import FileRecord as FileRecord
from ._export import ExportError as ExportError
from ._sinks import CsvSink as CsvSink
from ._sinks import JsonlSink as JsonlSink
from ._sinks import Sink as Sink
from ._sketch import QuantileSketch as QuantileSketch
from ._stats import RunningStats as RunningStats
from ._store import History as History
from ._store import HistoryError as HistoryError
from ._store import Store as Store
from ._store import StoredRun as StoredRun
from ._summary import BatchMetricsSummary as BatchMetricsSummary
from ._summary import ErrorBreakdown as ErrorBreakdown
from ._summary import FileMetrics as FileMetrics
from ._summary import ProgressStats as ProgressStats
from ._summary import SlowFile as SlowFile
from ._summary import ThroughputStats as ThroughputStats
from ._summary import TimingStats as TimingStats

__all__ = [
    "Aggregate",
    "BatchMetrics",
    "BatchMetricsSummary",
    "BatchState",
    "CsvSink",
    "ErrorBreakdown",
    "ExportError",
    "FileMetrics",
    "FileRecord",
    "History",
    "HistoryError",
    "JsonlSink",
    "ProgressStats",
    "QuantileSketch",
    "RunningStats",
    "Sink",
    "SlowFile",
    "Store",
    "StoredRun",
    "ThroughputStats",
    "TimingStats",
    "Tracked",
    "get_batch_stats",
    "merge_states",
]

__version__: str  # the installed distribution's version, read when first asked for


def __getattr__(name: str) -> _Any:
    # importlib.metadata costs about 90 ms to import: a sixth of the CLI's start
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            found = version("batchmetrics")
        except PackageNotFoundError:  # pragma: no cover - a source tree, not installed
            found = "0+unknown"
        globals()["__version__"] = found
        return found
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
