"""Summary values with the reference design's ``to_dict()`` schema.

Every key of the reference is kept with its meaning and rounding; keys we add
come after them. Pure: stdlib only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ._events import STATUS_NAMES, Event, FileRecord
from ._render import iso_timestamp


@dataclass(frozen=True, slots=True)
class FileMetrics:
    """One file's outcome, as the reference's ``FileMetrics`` (plus ``bytes_processed``)."""

    filename: str
    start_time: float = 0.0
    end_time: float = 0.0
    duration: float = 0.0
    samples: int = 0
    measurements: int = 0
    status: str = "pending"
    error_type: str | None = None
    error_message: str | None = None
    memory_peak: int | None = None
    bytes_processed: int = 0

    @classmethod
    def from_event(cls, ev: Event | FileRecord) -> FileMetrics:
        rec = FileRecord._make(ev)
        return cls(
            filename=rec.filename,
            start_time=rec.end_time - rec.duration,
            end_time=rec.end_time,
            duration=rec.duration,
            samples=rec.samples,
            measurements=rec.measurements,
            status=STATUS_NAMES[rec.status_code],
            error_type=rec.error_type,
            error_message=rec.error_message,
            memory_peak=rec.memory_peak,
            bytes_processed=rec.bytes_processed,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "filename": self.filename,
            "start_time": iso_timestamp(self.start_time) if self.start_time else None,
            "end_time": iso_timestamp(self.end_time) if self.end_time else None,
            "duration_seconds": self.duration,
            "samples": self.samples,
            "measurements": self.measurements,
            "status": self.status,
            "error_type": self.error_type,
            "error_message": self.error_message,
            "memory_peak_bytes": self.memory_peak,
            "samples_per_second": self.samples / self.duration if self.duration > 0 else 0,
            "bytes_processed": self.bytes_processed,
        }


@dataclass(frozen=True, slots=True)
class ErrorBreakdown:
    """Errors by type; ``rate`` is errors / all files (0..1).

    ``by_type`` holds the first ``max_error_types`` types seen (100 by default);
    errors of later types are counted in ``other_types``.
    """

    by_type: dict[str, int] = field(default_factory=dict)
    total: int = 0
    rate: float = 0.0
    #: The first few messages seen for each error type.
    messages: dict[str, list[str]] = field(default_factory=dict)
    #: Errors whose type is not in ``by_type``: it already held ``max_error_types`` types.
    other_types: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "by_type": dict(self.by_type),
            "total": self.total,
            "rate_percent": round(self.rate * 100, 2),
            "messages": {k: list(v) for k, v in self.messages.items()},
            "other_types": self.other_types,
        }


@dataclass(frozen=True, slots=True)
class TimingStats:
    """Per-file durations of successful files with duration > 0, and the batch's wall time."""

    total_duration: float = 0.0
    average_per_file: float = 0.0
    min_per_file: float = 0.0
    max_per_file: float = 0.0
    median_per_file: float = 0.0
    stddev_per_file: float = 0.0
    p90_per_file: float = 0.0
    p95_per_file: float = 0.0
    p99_per_file: float = 0.0
    #: Sum of every file's duration (all statuses): the work done.
    busy_seconds: float = 0.0
    #: ``busy_seconds / total_duration``: how many files were processed at once, on average.
    parallelism: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "total_duration_seconds": round(self.total_duration, 3),
            "average_per_file_seconds": round(self.average_per_file, 3),
            "min_per_file_seconds": round(self.min_per_file, 3),
            "max_per_file_seconds": round(self.max_per_file, 3),
            "median_per_file_seconds": round(self.median_per_file, 3),
            "stddev_per_file_seconds": round(self.stddev_per_file, 3),
            "p90_per_file_seconds": round(self.p90_per_file, 6),
            "p95_per_file_seconds": round(self.p95_per_file, 6),
            "p99_per_file_seconds": round(self.p99_per_file, 6),
            "busy_seconds": round(self.busy_seconds, 3),
            "parallelism": round(self.parallelism, 2),
        }


@dataclass(frozen=True, slots=True)
class ThroughputStats:
    """Successful totals per second of wall time; ``recent_*`` over a sliding window."""

    files_per_second: float = 0.0
    samples_per_second: float = 0.0
    measurements_per_second: float = 0.0
    bytes_per_second: float = 0.0
    recent_files_per_second: float = 0.0
    recent_samples_per_second: float = 0.0
    recent_bytes_per_second: float = 0.0
    recent_window_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "files_per_second": round(self.files_per_second, 3),
            "samples_per_second": round(self.samples_per_second, 0),
            "measurements_per_second": round(self.measurements_per_second, 0),
            "bytes_per_second": round(self.bytes_per_second, 0),
            "recent_files_per_second": round(self.recent_files_per_second, 3),
            "recent_samples_per_second": round(self.recent_samples_per_second, 0),
            "recent_bytes_per_second": round(self.recent_bytes_per_second, 0),
            "recent_window_seconds": round(self.recent_window_seconds, 3),
        }


@dataclass(frozen=True, slots=True)
class ProgressStats:
    """Progress against ``BatchMetrics(total_files=N)``; ETAs in seconds, ``None`` when unknown."""

    total_files: int
    completed: int
    remaining: int
    percent: float
    eta_seconds: float | None = None
    eta_low_seconds: float | None = None
    eta_high_seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        def r(x: float | None) -> float | None:
            return None if x is None else round(x, 1)

        return {
            "total_files": self.total_files,
            "completed": self.completed,
            "remaining": self.remaining,
            "percent": round(self.percent, 2),
            "eta_seconds": r(self.eta_seconds),
            "eta_low_seconds": r(self.eta_low_seconds),
            "eta_high_seconds": r(self.eta_high_seconds),
        }


@dataclass(frozen=True, slots=True)
class SlowFile:
    """One of the slowest files of the batch."""

    filename: str
    duration: float
    status: str

    def to_dict(self) -> dict[str, Any]:
        return {"filename": self.filename, "duration_seconds": self.duration,
                "status": self.status}


@dataclass(frozen=True, slots=True)
class BatchMetricsSummary:
    """The batch at one moment: the reference's summary plus added sections."""

    batch_id: str
    total_files: int
    processed_count: int
    error_count: int
    skip_count: int
    timing: TimingStats
    throughput: ThroughputStats
    errors: ErrorBreakdown
    start_time: str
    end_time: str
    #: ``"running"`` while the batch runs, then ``"finished"``, ``"failed"`` or ``"cancelled"``.
    state: str = "finished"
    total_samples: int = 0
    total_measurements: int = 0
    total_bytes: int = 0
    in_flight: int = 0
    slowest_files: tuple[SlowFile, ...] = ()
    progress: ProgressStats | None = None

    @property
    def success_rate(self) -> float:
        """Successes / all files (0..1)."""
        return self.processed_count / self.total_files if self.total_files > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch_id": self.batch_id,
            "total_files": self.total_files,
            "processed_count": self.processed_count,
            "error_count": self.error_count,
            "skip_count": self.skip_count,
            "success_rate_percent": round(self.success_rate * 100, 2),
            "timing": self.timing.to_dict(),
            "throughput": self.throughput.to_dict(),
            "errors": self.errors.to_dict(),
            "start_time": self.start_time,
            "end_time": self.end_time,
            "state": self.state,
            "totals": {
                "samples": self.total_samples,
                "measurements": self.total_measurements,
                "bytes_processed": self.total_bytes,
            },
            "in_flight": self.in_flight,
            "slowest_files": [s.to_dict() for s in self.slowest_files],
            "progress": None if self.progress is None else self.progress.to_dict(),
        }
