"""Live progress on the terminal: a ``rich`` bar when installed, else a periodic log line."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol

from ._summary import BatchMetricsSummary

if TYPE_CHECKING:
    from ._collector import BatchMetrics

logger = logging.getLogger("batchmetrics")


class Display(Protocol):
    def update(self, summary: BatchMetricsSummary) -> None: ...

    def close(self, summary: BatchMetricsSummary) -> None: ...


#: Control characters as escapes: a multi-line error message stays on its row.
_ONE_LINE = {**{c: f"\\x{c:02x}" for c in (*range(32), *range(127, 160))},
             0x2028: "\\u2028", 0x2029: "\\u2029",
             ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t", ord("\\"): "\\\\"}


def one_line(text: str) -> str:
    """``text`` with its line breaks, control and other invisible characters (bidi
    overrides, zero widths) escaped and backslashes doubled: what is shown is what
    is there, on one line."""
    if text.isprintable() and "\\" not in text:
        return text
    # a backslash is doubled, as in repr(): a name "a\\nb" is not one with a line break
    return "".join(c if c.isprintable() and c != "\\" else _escape(c) for c in text)


def _escape(c: str) -> str:
    code = ord(c)
    known = _ONE_LINE.get(code)
    if known is not None:
        return known
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


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
        f"batch {one_line(summary.batch_id)}: {done}",
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


#: The columns of the bar's batch id: shortened (with …) to as few as ``_ID_MIN`` before
#: anything else is left out, never wider than ``_ID_MAX``; the bar's, likewise.
_ID_MIN, _ID_MAX = 12, 40
_BAR_MIN, _BAR_MAX = 10, 40


def fit_progress_line(width: int, count: int, description: int, others: Sequence[int]
                      ) -> tuple[int, int, list[bool]]:
    """The widths of the batch id and the bar on a progress line ``width`` columns wide
    (0: left out), and which of ``others`` (rate, errors, ETA, elapsed: their widths)
    are shown. The count is always shown whole; the id is shortened first, then the
    bar; then each of the others is shown if it still fits, in order (a later, narrower
    one may fit where an earlier one did not). One space between parts."""
    # in the order they are kept; on a terminal too narrow for the id's least, what is left
    parts = [min(description, _ID_MIN, max(width - count - 1, 0)), _BAR_MIN, *others]
    shown = [False] * len(parts)
    used = count
    for i, need in enumerate(parts):
        if need and used + 1 + need <= width:
            shown[i] = True
            used += 1 + need
    desc = parts[0] if shown[0] else 0
    bar = _BAR_MIN if shown[1] else 0
    if desc:  # what is left widens the id, then the bar
        grow = min(min(description, _ID_MAX) - desc, width - used)
        desc, used = desc + grow, used + grow
    if bar:
        bar += min(_BAR_MAX - bar, width - used)
    return desc, bar, shown[2:]


class RichDisplay:
    """A ``rich`` progress bar with files/s, ETA range and error counts, on stderr
    (as the status line without rich): the job's own output on stdout stays clean.

    It is fitted to the terminal's width as it is drawn: the count of files is always
    whole, the batch id is shortened first (and never takes more than 40 columns).
    """

    def __init__(self, metrics: BatchMetrics) -> None:
        from rich.console import Console, ConsoleOptions, RenderResult
        from rich.measure import Measurement
        from rich.progress import Progress, ProgressColumn, Task
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        class Line:
            """One task's line, laid out in the width it is given."""

            def __init__(self, task: Task) -> None:
                total = int(task.total) if task.total is not None else None
                # as MofNCompleteColumn writes it: the count as wide as the total
                width = len(str(total)) if total is not None else 1
                self.count = Text(f"{int(task.completed):{width}d}/"
                                  f"{total if total is not None else '?'}",
                                  style="progress.download")
                # the description is the user's batch id: shown as written (escaped),
                # never parsed as markup
                self.description = Text(one_line(task.description), style="bold",
                                        no_wrap=True, overflow="ellipsis")
                errors = task.fields.get("errors", 0)
                elapsed = task.finished_time if task.finished else task.elapsed
                self.others = [
                    Text(task.fields.get("rate", "")),
                    Text(fmt_count(errors, "error"), style="red" if errors else ""),
                    Text(task.fields.get("eta", "")),
                    Text(str(timedelta(seconds=max(0, int(elapsed)))) if elapsed is not None
                         else "-:--:--", style="progress.elapsed"),
                ]
                self.bar = ProgressBar(
                    total=max(0, task.total) if task.total is not None else None,
                    completed=max(0, task.completed), pulse=not task.started,
                    animation_time=task.get_time())

            def __rich_measure__(self, console: Console, options: ConsoleOptions
                                 ) -> Measurement:
                widest = sum(1 + o.cell_len for o in self.others if o.cell_len) + \
                    min(self.description.cell_len, _ID_MAX) + 1 + _BAR_MAX + 1 + \
                    self.count.cell_len
                return Measurement(self.count.cell_len, widest).with_maximum(
                    options.max_width)

            def __rich_console__(self, console: Console, options: ConsoleOptions
                                 ) -> RenderResult:
                desc, bar, others = fit_progress_line(
                    options.max_width, self.count.cell_len, self.description.cell_len,
                    [o.cell_len for o in self.others])
                grid = Table.grid(padding=(0, 1, 0, 0))
                cells: list[Any] = []
                if desc:
                    grid.add_column(width=desc, no_wrap=True)
                    cells.append(self.description)
                if bar:
                    grid.add_column(width=bar, no_wrap=True)
                    self.bar.width = bar
                    cells.append(self.bar)
                grid.add_column(no_wrap=True)
                cells.append(self.count)
                for text, show in zip(self.others, others, strict=True):
                    if show:
                        grid.add_column(no_wrap=True)
                        cells.append(text)
                grid.add_row(*cells)
                yield grid

        class LineColumn(ProgressColumn):
            def render(self, task: Task) -> Line:
                return Line(task)

        self._progress = Progress(LineColumn(), transient=False,
                                  console=Console(stderr=True))
        self._task = self._progress.add_task(
            metrics.batch_id, total=metrics.total_files, rate="", errors=0, eta="")
        self._progress.start()

    def _show(self, summary: BatchMetricsSummary) -> None:
        t = summary.throughput
        self._progress.update(
            self._task,
            completed=summary.total_files,
            rate=f"{t.recent_files_per_second:.1f} files/s",
            errors=summary.error_count,
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
