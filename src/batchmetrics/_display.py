"""Live progress on the terminal: a ``rich`` bar when installed, else a periodic log line."""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any, Protocol

from ._summary import BatchMetricsSummary

if TYPE_CHECKING:
    from ._collector import BatchMetrics

logger = logging.getLogger("batchmetrics")


class Display(Protocol):
    def update(self, summary: BatchMetricsSummary) -> None: ...

    def close(self, summary: BatchMetricsSummary) -> None: ...


def _eta_text(summary: BatchMetricsSummary) -> str:
    p = summary.progress
    if p is None or p.eta_seconds is None:
        return "ETA ?"
    if p.eta_low_seconds is not None and p.eta_high_seconds is not None \
            and round(p.eta_low_seconds) != round(p.eta_high_seconds):
        return f"ETA {p.eta_seconds:.0f}s ({p.eta_low_seconds:.0f}-{p.eta_high_seconds:.0f}s)"
    return f"ETA {p.eta_seconds:.0f}s"


#: Error types named on a status line, the most frequent first.
_TYPES_SHOWN = 3


def fmt_count(n: int, word: str) -> str:
    """``1 file``, ``2 files``: a count and its noun, plural unless one."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def _error_types(summary: BatchMetricsSummary) -> str:
    """The most frequent error types with their counts, and how many types are left out."""
    errors = summary.errors
    ranked = sorted(errors.by_type.items(), key=lambda kv: (-kv[1], kv[0]))
    text = ", ".join(f"{k} {v:,}" for k, v in ranked[:_TYPES_SHOWN])
    more = len(ranked) - _TYPES_SHOWN
    if more > 0:
        text += f", {fmt_count(more, 'more type')}"
    if errors.other_types:
        text += f", {errors.other_types:,} of other types"
    return text


def status_line(summary: BatchMetricsSummary) -> str:
    """One line: files done (of total), rates, errors (the most frequent types), ETA."""
    p = summary.progress
    files = "file" if (p.total_files if p else summary.total_files) == 1 else "files"
    done = (f"{summary.total_files:,}/{p.total_files:,} {files} ({p.percent:.1f}%)" if p
            else f"{summary.total_files:,} {files}")  # as watch writes it
    t = summary.throughput
    errors = _error_types(summary)
    parts = [
        f"batch {summary.batch_id}: {done}",
        f"{t.recent_files_per_second:.1f} files/s now, {t.files_per_second:.1f} overall",
        fmt_count(summary.error_count, "error") + (f" ({errors})" if errors else ""),
        f"{summary.skip_count:,} skipped",
    ]
    if p is not None:
        parts.append(_eta_text(summary))
    return " | ".join(parts)


class LogDisplay:
    """Without ``rich``: an INFO log line every interval, on the ``batchmetrics`` logger.

    Where logging would drop it (not configured, or above INFO), the line goes to
    stderr instead: ``display=True`` asked to see it.
    """

    def _show(self, text: str) -> None:
        if logger.hasHandlers() and logger.isEnabledFor(logging.INFO):
            logger.info("%s", text)
        else:
            print(text, file=sys.stderr, flush=True)

    def update(self, summary: BatchMetricsSummary) -> None:
        self._show(status_line(summary))

    def close(self, summary: BatchMetricsSummary) -> None:
        self._show(f"finished: {status_line(summary)}")


class RichDisplay:
    """A ``rich`` progress bar with files/s, ETA range and error counts, on stderr
    (as the status line without rich): the job's own output on stdout stays clean."""

    def __init__(self, metrics: BatchMetrics) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self._progress = Progress(
            # the description is the user's batch id: shown as written, never parsed as markup
            TextColumn("{task.description}", style="bold", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TextColumn("{task.fields[errors]}"),
            TextColumn("{task.fields[eta]}"),
            TimeElapsedColumn(),
            transient=False,
            console=Console(stderr=True),
        )
        self._task = self._progress.add_task(
            metrics.batch_id, total=metrics.total_files, rate="", errors="", eta="")
        self._progress.start()

    def _show(self, summary: BatchMetricsSummary) -> None:
        t = summary.throughput
        errors = summary.error_count
        self._progress.update(
            self._task,
            completed=summary.total_files,
            rate=f"{t.recent_files_per_second:.1f} files/s",
            errors=f"[red]{errors} errors[/red]" if errors else "0 errors",
            eta=_eta_text(summary) if summary.progress else "",
        )

    def update(self, summary: BatchMetricsSummary) -> None:
        self._show(summary)

    def close(self, summary: BatchMetricsSummary) -> None:
        self._show(summary)
        self._progress.stop()


def make_display(metrics: BatchMetrics) -> Any:
    """A ``RichDisplay`` when ``rich`` is importable, else a ``LogDisplay``."""
    try:
        return RichDisplay(metrics)
    except ImportError:
        return LogDisplay()
