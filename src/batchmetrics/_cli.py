"""The ``batchmetrics`` command line: read the history of runs, compare, merge, demo.

Reads the SQLite history with the stdlib ``sqlite3`` (read-only), not aiosqlite:
a command is short, synchronous work with nothing to overlap, so an event loop
and a database thread would only add start-up time. Only ``demo`` runs async code.

Exit codes: 0 done; 1 a regression (``compare --fail-on-regression``) or a
watched run that did not finish well; 2 bad input (unknown batch, ``files`` of a
run recorded without per-file rows, missing or damaged file) or an output that cannot
be written (a full disk, a closed stdout); 130 interrupted by
Ctrl-C; 141 (128 + SIGPIPE, as a shell reports a command its pipe ended) when the
output's reader went away before ``watch`` knew the run's outcome. A reader that goes
away once the exit code is known does not change it.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import errno
import functools
import hashlib
import importlib.util
import io
import itertools
import json
import logging
import math
import os
import secrets
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from wcwidth import wcswidth

from ._aggregate import merge_states
from ._display import fmt_count, one_line
from ._events import STATUS_NAMES, FileRecord, is_finite_number
from ._export import replaced_mode, temp_name
from ._render import json_text
from ._store import MAX_ROWS, RUN_STATUSES, History, HistoryError, StoredRun
from ._summary import BatchMetricsSummary

DEFAULT_DB = "batchmetrics.db"
ENV_DB = "BATCHMETRICS_DB"

#: The exit code when the output's reader goes away before the outcome is known.
EXIT_READER_GONE = 128 + 13  # SIGPIPE


class CliError(Exception):
    """A problem to tell the user in one line, with the exit code to leave with."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


# -- formatting ---------------------------------------------------------------------------------


def fmt_int(n: int) -> str:
    return f"{n:,}"


#: The micro sign, written ``u`` where the output's encoding has none (LC_ALL=C).
_MICRO = "µ"


def fmt_seconds(s: float) -> str:
    """A duration for people: ``850 µs``, ``12.3 ms``, ``4.56 s``, ``3m 05s``, ``2h 03m``."""
    if s <= 0:
        return "0 s"
    if s < 1e-3:
        return f"{s * 1e6:.0f} {_MICRO if _can_encode(sys.stdout, _MICRO) else 'u'}s"
    if s < 1:
        return f"{s * 1e3:.1f} ms"
    if s < 60:
        return f"{s:.2f} s"
    if s < 3600:
        return f"{int(s // 60)}m {int(s % 60):02d}s"
    return f"{int(s // 3600)}h {int(s % 3600 // 60):02d}m"


def fmt_bytes(n: float) -> str:
    """Bytes in SI units: ``512 B``, ``1.5 MB``."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")  # pragma: no cover


def fmt_rate(x: float) -> str:
    return f"{x:,.1f}" if abs(x) < 1000 else f"{x:,.0f}"


def fmt_time(ts: float | None) -> str:
    """A Unix time as local ``YYYY-MM-DD HH:MM:SS``; ``-`` when unknown."""
    if ts is None:
        return "-"
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))
    except (OverflowError, OSError, ValueError, TypeError):  # a damaged row: shown as it is
        return repr(ts)


def fmt_change(change: float | None) -> str:
    if change is None:
        return "n/a"
    if math.isinf(change):
        return "+inf%" if change > 0 else "-inf%"
    return f"{round(change, 1) + 0.0:+,.1f}%"  # + 0.0: a change rounding to -0.0 is +0.0


def _ellipsis(out: TextIO) -> str:
    """``…``, or ``...`` where the output's encoding has no ``…``."""
    return "…" if _can_encode(out, "…") else "..."


def _can_encode(out: TextIO, text: str) -> bool:
    return _encodes(getattr(out, "encoding", None) or "utf-8", text)


@functools.lru_cache(maxsize=16)
def _encodes(encoding: str, text: str) -> bool:
    """Whether ``encoding`` has ``text`` (asked once per duration shown: cached)."""
    try:
        text.encode(encoding)
    except (UnicodeError, LookupError):
        return False
    return True


def as_written(text: str, out: TextIO) -> str:
    """``text`` as ``out`` will write it: the characters its encoding lacks (under
    LC_ALL=C, every non-ASCII one) escaped, as its ``backslashreplace`` does. Columns
    are measured on this, not on text that is widened once written."""
    encoding = getattr(out, "encoding", None)
    if text.isascii() or not encoding:
        return text
    try:
        return text.encode(encoding, "backslashreplace").decode(encoding)
    except (UnicodeError, LookupError):
        return text


def _use_rich(out: TextIO) -> bool:
    """Tables through ``rich`` only on a terminal (and when installed): pipes get plain text."""
    if not out.isatty():
        return False
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


#: Rows a table is sized from; a longer one streams (``files`` of a million-file run).
_TABLE_BLOCK = 1000


def display_width(text: str) -> int:
    """The columns ``text`` takes on a terminal (``wcwidth``: wide characters take 2,
    combining ones 0, emoji sequences as terminals show them).

    Give it the text as printed (after ``one_line``): an escaped character counts as
    its escape.
    """
    if text.isascii():
        return len(text)
    width = wcswidth(text)
    return width if width >= 0 else len(text)  # -1: a control character (escaped before)


def cut_to_width(text: str, width: int, mark: str = "…") -> str:
    """``text`` cut to at most ``width`` columns (``display_width``), ending in ``mark``
    when cut."""
    if display_width(text) <= width:
        return text
    room = width - display_width(mark)
    if room < 0:
        return ""
    lo, hi = 0, len(text)  # the longest prefix that fits: fits(lo), not fits(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if display_width(text[:mid]) <= room else (lo, mid)
    return text[:lo] + mark


def _pad(text: str, width: int, right: bool = False) -> str:
    """``text`` padded with spaces to ``width`` columns (``display_width``)."""
    gap = " " * (width - display_width(text))
    return gap + text if right else text + gap


#: The fewest columns a text column of a rich table is folded to; a table that does not
#: fit with its text columns that narrow is printed plain (the terminal wraps its lines).
_MIN_FOLD = 8


def _fit_widths(natural: Sequence[int], least: Sequence[int], groups: Iterable[Sequence[int]],
                room: int) -> list[int] | None:
    """Column widths within ``room``: the widest columns of the first group are narrowed
    first (to one level, none below its ``least``), then those of the next; ``None``
    when the ``least`` widths do not fit."""
    if sum(least) > room:
        return None
    widths = list(natural)
    for group in groups:
        if sum(widths) <= room or not group:
            continue
        lo, hi = 0, max(widths[i] for i in group)  # at hi, as wide as now: too wide
        while hi - lo > 1:  # the highest level that fits (or 0: each at its least)
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if sum(_narrowed(widths, least, group, mid)) <= room else (lo, mid)
        widths = _narrowed(widths, least, group, lo)
    return widths


def _narrowed(widths: Sequence[int], least: Sequence[int], group: Sequence[int],
              level: int) -> list[int]:
    """``widths`` with those of ``group`` lowered to ``level``, none below its ``least``."""
    return [max(least[i], min(w, level)) if i in group else w for i, w in enumerate(widths)]


def _print_rich_table(headers: Sequence[str], rows: Sequence[Sequence[str]],
                      right: set[int], out: TextIO) -> bool:
    """The table through rich, in the terminal's width: ids, names and paths are folded
    onto more lines (never cut), numbers kept whole. ``False`` (nothing printed) when it
    cannot fit."""
    from rich import box
    from rich.cells import cell_len
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(file=out, highlight=False)
    widest = [max((cell_len(row[i]) for row in rows), default=0) for i in range(len(headers))]
    natural = [max(cell_len(h), w, 1) for h, w in zip(headers, widest, strict=True)]
    # a number is never narrowed below its widest cell (its header may fold); text
    # columns fold down to _MIN_FOLD columns
    least = [max(widest[i], 1) if i in right else min(natural[i], _MIN_FOLD)
             for i in range(len(headers))]
    text_columns = [i for i in range(len(headers)) if i not in right]
    # each column has a space of padding on each inner side, and a separator between
    room = console.width - 3 * (len(headers) - 1)
    widths = _fit_widths(natural, least, (text_columns, sorted(right)), room)
    if widths is None:
        return False
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for i, (h, width) in enumerate(zip(headers, widths, strict=True)):
        table.add_column(Text(h, overflow="fold"), justify="right" if i in right else "left",
                         width=width, overflow="fold")
    for row in rows:
        # Text: a file name like "a[/]b" is not markup
        table.add_row(*(Text(cell, overflow="fold") for cell in row))
    console.print(table)
    return True


def print_table(headers: Sequence[str], rows: Iterable[Sequence[str]], *,
                right: Iterable[int] = (), out: TextIO | None = None) -> None:
    """Aligned columns; ``right`` are the indexes of right-aligned (numeric) columns.

    A table longer than ``_TABLE_BLOCK`` rows is printed as its rows come, in
    columns as wide as its first rows need: memory stays bounded. On a terminal
    (with rich) it is fitted to the terminal's width, ids and names folded, numbers
    whole; one that cannot fit, and any other, is printed plain, in full.
    """
    out = out or sys.stdout
    it = ([as_written(one_line(cell), out) for cell in row] for row in rows)
    first: list[Sequence[str]] = list(itertools.islice(it, _TABLE_BLOCK))
    more = next(it, None)
    rest: Iterable[Sequence[str]] = () if more is None else itertools.chain([more], it)
    right = set(right)
    headers = [as_written(one_line(h), out) for h in headers]
    if more is None and _use_rich(out) and _print_rich_table(headers, first, right, out):
        return
    # by the columns a cell takes, not its len(): a wide (CJK) or combining character
    # would shift the columns after it
    widths = [max([display_width(h), *(display_width(r[i]) for r in first)])
              for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(_pad(c, w, i in right)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    print(line(headers), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for row in itertools.chain(first, rest):
        print(line(row), file=out)


def print_pairs(title: str, pairs: Sequence[tuple[str, str]], out: TextIO | None = None) -> None:
    """A section: its title, then ``key  value`` lines indented under it."""
    out = out or sys.stdout
    print(as_written(one_line(title), out), file=out)
    pairs = [(as_written(one_line(key), out), as_written(one_line(value), out))
             for key, value in pairs]
    width = max([11, *(display_width(k) for k, _ in pairs)])  # the same in every section
    for key, value in pairs:
        print(f"  {_pad(key, width)}  {value}", file=out)


# -- the history --------------------------------------------------------------------------------


def db_path(args: argparse.Namespace) -> str:
    """``--db``, else ``$BATCHMETRICS_DB``, else ``./batchmetrics.db``."""
    path: str | None = getattr(args, "db", None)
    return path or os.environ.get(ENV_DB) or DEFAULT_DB


def open_history(args: argparse.Namespace) -> History:
    path = db_path(args)
    try:
        return History(path)
    except HistoryError as exc:
        hint = ""
        if not os.path.exists(path):
            hint = f" (choose one with --db or ${ENV_DB}; `batchmetrics demo` creates one)"
        raise CliError(f"{exc}{hint}") from None


#: How many batch ids an unknown one is compared with: every one in a history this
#: small; in a larger one, as many of the most recent and of those sorting next to it
#: (which share its longest prefixes).
_SUGGEST_FROM = 1000


def get_run(history: History, batch_id: str) -> StoredRun:
    """The run, or exit 2 naming the closest batch ids."""
    run = history.get(batch_id)
    if run is not None:
        return run
    ids = history.batch_ids(_SUGGEST_FROM + 1)
    if not ids:
        raise CliError(f"no batch {batch_id!r} in {history.path}: the history is empty")
    candidates = set(ids)
    if len(ids) > _SUGGEST_FROM:  # a large history: difflib over every id takes seconds
        candidates.update(history.batch_ids_around(batch_id, _SUGGEST_FROM // 2))
    close = difflib.get_close_matches(batch_id, candidates, n=3, cutoff=0.5)
    if close:
        hint = "did you mean " + ", ".join(repr(i) for i in close) + "?"
    else:
        hint = "the most recent are " + ", ".join(repr(i) for i in ids[:3])
    raise CliError(f"no batch {batch_id!r} in {history.path}; {hint}")


def run_summary(run: StoredRun) -> BatchMetricsSummary:
    """The run's summary with unrounded numbers, rebuilt from its mergeable state."""
    try:
        agg = merge_states([run.state])  # read, and its stamps checked: they are shown
    except (TypeError, ValueError) as exc:
        raise CliError(f"batch {run.batch_id!r} has a state this batchmetrics cannot read: "
                       f"{exc}") from None
    now = checkpoint_time(run) if run.stored_status == "running" else None
    return agg.to_summary(run.batch_id, now=now, state=run.status)


def wall_time(run: StoredRun) -> float:
    """A run's wall time as ``stats`` shows it, without its state: end minus start from
    its stamps (the summary's is rounded to the millisecond); the summary's while it has
    no end (``stats`` then measures to its last checkpoint, which is the same)."""
    start, end = run.started_at, run.finished_at
    if is_finite_number(start) and is_finite_number(end):
        return float(end - start)  # type: ignore[operator]  # both numbers, checked
    duration: float = run.summary["timing"]["total_duration_seconds"]  # checked when read
    return duration


def checkpoint_time(run: StoredRun) -> float:
    """When a run's last checkpoint was taken, on the run's own clock: its stamps do
    not follow a step of the system clock, which ``updated_at`` (system time) does."""
    if run.started_at is None:
        return run.updated_at
    duration: float = run.summary["timing"]["total_duration_seconds"]  # checked when read
    return run.started_at + duration


# -- stats ----------------------------------------------------------------------------------------


def has_timing(s: BatchMetricsSummary) -> bool:
    """Whether the run timed a file: its timing is over successful files with a
    duration > 0, so its longest is 0 when there is none."""
    return s.timing.max_per_file > 0


def render_stats(run: StoredRun, out: TextIO | None = None) -> None:
    """A run's last stored summary, readable.

    Numbers come from the stored mergeable state (unrounded: the summary's JSON
    rounds per-file times to the millisecond); progress from the stored summary.
    """
    out = out or sys.stdout
    s = run_summary(run)
    t = s.timing
    total = s.total_files
    status = run.status
    if run.status == "running":
        status += f" (last checkpoint {fmt_time(checkpoint_time(run))})"
    elif run.status == "interrupted":
        status += (f" (its process stopped writing at {fmt_time(checkpoint_time(run))}; "
                   "counts are from that checkpoint)")
    head: list[tuple[str, str]] = [
        ("status", status),
        ("started", fmt_time(run.started_at)),
        ("ended", fmt_time(run.finished_at)),
        ("wall time", fmt_seconds(t.total_duration)),
        ("host", f"{run.host} (pid {run.pid})"),
    ]
    progress = run.summary.get("progress")
    # while it runs, and once it ended short of (or past) the files it expected
    if progress and (run.status == "running"
                     or progress["completed"] != progress["total_files"]):
        head.append(("progress", f"{fmt_int(progress['completed'])} of "
                                 f"{fmt_int(progress['total_files'])} ({progress['percent']}%)"))
    print_pairs(f"Batch {run.batch_id}", head, out)

    def share(n: int) -> str:
        return f"{fmt_int(n)}  ({100 * n / total:.2f}%)" if total else fmt_int(n)

    files: list[tuple[str, str]] = [
        ("total", fmt_int(total)),
        ("succeeded", share(s.processed_count)),
        ("errors", share(s.error_count)),
        ("skipped", share(s.skip_count)),
    ]
    if run.store_files and run.files_stored != total:
        # per-file rows are written between checkpoints: a run that did not finish has
        # stored more rows than its last checkpoint counted
        files.append(("rows stored", f"{fmt_int(run.files_stored)} (see `files`)"))
    print_pairs("Files", files, out)
    # a run without a timed file (none yet, or only skips and errors) has no time per
    # file, not one of 0 s
    per_file = fmt_seconds if has_timing(s) else (lambda _: "-")
    print_pairs("Time per successful file", [
        ("mean", per_file(t.average_per_file)),
        ("median", per_file(t.median_per_file)),
        ("p90", per_file(t.p90_per_file)),
        ("p95", per_file(t.p95_per_file)),
        ("p99", per_file(t.p99_per_file)),
        ("min", per_file(t.min_per_file)),
        ("max", per_file(t.max_per_file)),
        ("stddev", per_file(t.stddev_per_file)),
    ], out)
    print_pairs("Throughput", [
        ("files/s", fmt_rate(s.throughput.files_per_second)),
        ("samples/s", fmt_rate(s.throughput.samples_per_second)),
        ("bytes/s", fmt_bytes(s.throughput.bytes_per_second) + "/s"),
        ("parallelism", f"{t.parallelism:.1f} files at once"),
    ], out)
    if s.errors.by_type or s.errors.other_types:
        messages = s.errors.messages
        ranked = sorted(s.errors.by_type.items(), key=lambda kv: -kv[1])
        pairs = [
            (etype, fmt_int(count) + (f"  e.g. {messages[etype][0]}"
                                      if messages.get(etype) else ""))
            for etype, count in ranked[:_ERROR_TYPES_SHOWN]
        ]
        left = ranked[_ERROR_TYPES_SHOWN:]
        if left:  # thousands of types (an id in each): the most frequent, then a count
            pairs.append(("(more types)", fmt_int(sum(count for _, count in left))
                          + f"  of {fmt_count(len(left), 'more type')} (--json lists "
                            "every type)"))
        if s.errors.other_types:  # types past max_error_types: counted, not by type
            pairs.append(("(other types)", fmt_int(s.errors.other_types)
                          + f"  of types after the first {len(s.errors.by_type)}"))
        print_pairs("Errors by type", pairs, out)
    if s.slowest_files:
        slowest = [(f.filename, fmt_seconds(f.duration), f.status) for f in s.slowest_files[:5]]
        width = max(display_width(duration) for _, duration, _ in slowest)
        print_pairs("Slowest files", [
            (name, f"{_pad(duration, width, right=True)}  {status}")
            for name, duration, status in slowest
        ], out)


#: Error types ``stats`` lists, the most frequent first (``--json`` has every one).
_ERROR_TYPES_SHOWN = 20


def cmd_stats(args: argparse.Namespace) -> int:
    with open_history(args) as history:
        run = get_run(history, args.batch_id)
    if args.json:
        summary = run.summary
        if run.status == "interrupted":  # stored while it ran; its process is gone since
            summary = {**summary, "state": "interrupted"}
        print(json.dumps(summary, indent=2))
    else:
        render_stats(run)
    return 0


# -- list -----------------------------------------------------------------------------------------


def _list_row(run: StoredRun) -> dict[str, Any]:
    s = run.summary
    return {
        "batch_id": run.batch_id,
        "status": run.status,
        # a damaged row may hold text, a blob or inf instead of a number
        "started_at": run.started_at if is_finite_number(run.started_at) else None,
        "total_files": s["total_files"],
        "error_rate_percent": s["errors"]["rate_percent"],
        "duration_seconds": wall_time(run),
        "files_per_second": s["throughput"]["files_per_second"],
    }


def cmd_list(args: argparse.Namespace) -> int:
    damaged: list[HistoryError] = []
    with open_history(args) as history:
        runs = history.runs(args.limit, status=args.status, with_state=False, damaged=damaged)
    # The others are listed, the damaged ones named, and the exit code says so.
    for problem in damaged:
        print(f"batchmetrics: {problem}", file=sys.stderr)
    code = args.exit_code = 2 if damaged else 0  # also if the output's reader goes away
    rows = [_list_row(r) for r in runs]
    if args.json:
        print(json.dumps(rows, indent=2))
        return code
    if not rows:
        if not damaged:
            print("no runs" + (f" with status {args.status}" if args.status else ""),
                  file=sys.stderr)
        return code
    print_table(
        ["BATCH", "STATUS", "STARTED", "FILES", "ERRORS", "DURATION", "FILES/S"],
        [[r["batch_id"], r["status"], fmt_time(r["started_at"]), fmt_int(r["total_files"]),
          f"{r['error_rate_percent']:.2f}%", fmt_seconds(r["duration_seconds"]),
          fmt_rate(r["files_per_second"])] for r in rows],
        right=(3, 4, 5, 6))
    return code


# -- files ----------------------------------------------------------------------------------------


def cmd_files(args: argparse.Namespace) -> int:
    with open_history(args) as history:
        run = get_run(history, args.batch_id)
        if not run.store_files:
            # not an empty answer: the run was recorded without its rows (its store_files
            # column says so), whatever --status asks; a script must not take it for "none"
            raise CliError(f"batch {run.batch_id!r} kept no per-file rows: it was recorded "
                           "without store_files=True (BatchMetrics(..., store=..., "
                           "store_files=True) keeps them)")
        records: Iterable[FileRecord]
        if args.slowest is not None:
            records = history.slowest(run.batch_id, args.slowest, status=args.status)
        else:
            records = history.files(run.batch_id, status=args.status)
        if args.limit is not None:
            records = itertools.islice(records, args.limit)  # still streamed
        if args.json:
            from ._render import file_row_json

            for r in records:
                print(file_row_json(tuple(r)))  # type: ignore[arg-type]  # same layout
            return 0
        print_table(
            ["FILE", "STATUS", "DURATION", "SAMPLES", "BYTES", "ERROR/REASON"],
            ([r.filename, STATUS_NAMES[r.status_code], fmt_seconds(r.duration),
              fmt_int(r.samples), fmt_int(r.bytes_processed),
              ": ".join(x for x in (r.error_type, r.error_message) if x)] for r in records),
            right=(2, 3, 4))
    return 0


# -- compare --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measure:
    """One compared quantity: how to read it, show it, and which way is worse."""

    name: str
    get: Callable[[BatchMetricsSummary], float | None]  # None: the run has no value for it
    show: Callable[[float], str]
    higher_is_better: bool
    gated: bool = True  # counts for --fail-on-regression


def _timed(s: BatchMetricsSummary, value: float) -> float | None:
    """A time per file, or ``None`` for a run that timed no file."""
    return value if has_timing(s) else None


MEASURES = (
    Measure("files/s", lambda s: s.throughput.files_per_second, fmt_rate, True),
    Measure("p50 per file", lambda s: _timed(s, s.timing.median_per_file), fmt_seconds, False),
    Measure("p90 per file", lambda s: _timed(s, s.timing.p90_per_file), fmt_seconds, False),
    Measure("p99 per file", lambda s: _timed(s, s.timing.p99_per_file), fmt_seconds, False),
    # no rate of a run without files
    Measure("error rate", lambda s: s.errors.rate * 100 if s.total_files else None,
            lambda x: f"{x:.2f}%", False),
    Measure("files", lambda s: s.total_files, lambda x: fmt_int(int(x)), True, gated=False),
    Measure("mean per file", lambda s: _timed(s, s.timing.average_per_file), fmt_seconds,
            False, gated=False),
    Measure("bytes/s", lambda s: s.throughput.bytes_per_second,
            lambda x: fmt_bytes(x) + "/s", True, gated=False),
    Measure("wall time", lambda s: s.timing.total_duration, fmt_seconds, False, gated=False),
)


def percent_change(a: float, b: float) -> float | None:
    """``(b - a) / a`` in percent; ``inf`` from zero to something, ``None`` from zero to zero."""
    if a == 0:
        return None if b == 0 else math.copysign(math.inf, b)
    return (b - a) / abs(a) * 100


def worse_by(m: Measure, change: float | None) -> float:
    """How much worse ``b`` is than ``a`` in percent (negative: better; no change is 0.0,
    not -0.0)."""
    if change is None or change == 0:
        return 0.0
    return -change if m.higher_is_better else change


def _finite(x: float | None) -> float | None:
    """``x``, or ``None`` (JSON null) when it is not a finite number."""
    return x if x is not None and math.isfinite(x) else None


def cmd_compare(args: argparse.Namespace) -> int:
    """Print the table (or JSON; a percentage with no finite value is null) and gate."""
    with open_history(args) as history:
        run_a, run_b = get_run(history, args.a), get_run(history, args.b)
    a, b = run_summary(run_a), run_summary(run_b)
    rows, report, regressions = [], [], []
    for m in MEASURES:
        va, vb = m.get(a), m.get(b)
        # a run without a value for it (no timed file): nothing to compare, no regression
        both = va is not None and vb is not None
        change = percent_change(va, vb) if va is not None and vb is not None else None
        worse = worse_by(m, change)
        flag = ""
        if m.gated and args.fail_on_regression is not None and worse > args.fail_on_regression:
            flag = "REGRESSION"
            regressions.append(f"{m.name} {fmt_change(change)}")
        rows.append([m.name, "-" if va is None else m.show(va), "-" if vb is None else m.show(vb),
                     fmt_change(change), flag])
        report.append({"measure": m.name, "a": _finite(va), "b": _finite(vb),
                       "change_percent": _finite(change),
                       "worse_percent": _finite(worse) if both else None,
                       "gated": m.gated, "regression": bool(flag)})
    args.exit_code = 1 if regressions else 0  # also if the output's reader goes away
    if args.json:
        print(json.dumps({"a": run_a.batch_id, "b": run_b.batch_id, "measures": report,
                          "fail_on_regression": args.fail_on_regression,
                          "regressions": regressions}, indent=2, allow_nan=False))
    else:
        # the REGRESSION column only when it has something to show
        headers = ["", run_a.batch_id, run_b.batch_id, "CHANGE", "REGRESSION"]
        if not regressions:
            headers, rows = headers[:-1], [row[:-1] for row in rows]
        print_table(headers, rows, right=(1, 2, 3))
        for run in (run_a, run_b):
            if run.status != "finished":
                print(f"note: {one_line(run.batch_id)} is {run.status}", file=sys.stderr)
    if regressions:
        print(f"regression beyond {args.fail_on_regression:g}%: {'; '.join(regressions)}",
              file=sys.stderr)
        return 1
    return 0


# -- watch ----------------------------------------------------------------------------------------


def watch_line(run: StoredRun) -> str:
    """One line about a run: status, files (of total), rates, errors, ETA."""
    s = run.summary
    t = s["throughput"]
    progress = s.get("progress")
    eta = ""
    if progress:  # "3/200 files": the noun goes with the total
        files = f"{fmt_int(s['total_files'])}/{fmt_count(progress['total_files'], 'file')}"
        files += f" ({progress['percent']:.1f}%)"
        if run.status == "running" and progress.get("eta_seconds") is not None:
            eta = f" | ETA {fmt_seconds(progress['eta_seconds'])}"
    else:
        files = fmt_count(s["total_files"], "file")
    wall = fmt_seconds(wall_time(run))
    return (f"{one_line(run.batch_id)}: {run.status} | {files} | "
            f"{fmt_rate(t.get('recent_files_per_second', 0.0))} files/s now, "
            f"{fmt_rate(t['files_per_second'])} overall | {fmt_count(s['error_count'], 'error')}, "
            f"{fmt_int(s['skip_count'])} skipped | {wall}{eta}")


#: Seconds between looks for a batch not there yet (``watch --wait``) without ``--interval``.
_WAIT_POLL = 0.5


class _Waiting:
    """``watch --wait``: the deadline, the pause between looks, and one line on stderr."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.deadline = time.monotonic() + args.wait
        self.said = False

    def pause(self) -> bool:
        """Say once that the batch is awaited, and sleep till the next look; ``False``
        (without sleeping) once the time is up."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            return False
        if not self.said:
            self.said = True
            print(f"batchmetrics: no batch {self.args.batch_id!r} in {db_path(self.args)} "
                  f"yet; waiting up to {self.args.wait:g} s", file=sys.stderr, flush=True)
        time.sleep(min(self.args.interval or _WAIT_POLL, left))
        return True


def _history_and_run(args: argparse.Namespace) -> tuple[History, StoredRun]:
    """The history and the watched run; with ``--wait``, each waited for until it appears.

    A history file not there yet is waited for (and then one its first batch is still
    creating); one that is there but unreadable, or not a history, is an error at once.
    """
    waiting = _Waiting(args)
    was_missing = False
    while True:
        try:
            history = open_history(args)
            break
        except CliError:
            was_missing = was_missing or not os.path.exists(db_path(args))
            if not (was_missing and waiting.pause()):
                raise
    try:
        run = history.get(args.batch_id)
        while run is None and waiting.pause():
            run = history.get(args.batch_id)
        return history, run or get_run(history, args.batch_id)  # not there: exit 2
    except BaseException:
        history.close()
        raise


def cmd_watch(args: argparse.Namespace) -> int:
    out = sys.stdout
    # on a terminal the line is rewritten in place: cut to its width, or each wrapped
    # line would stay behind; a dumb one (TERM=dumb) gets no escape codes, a line each
    rewrite = out.isatty() and os.environ.get("TERM") != "dumb"
    history, run = _history_and_run(args)
    with history:
        interval = args.interval or min(max(run.interval, 0.1), 5.0)
        while True:
            # what to exit with if the reader goes away while this is written
            args.exit_code = EXIT_READER_GONE if run.status == "running" else \
                _watch_outcome(run)
            line = watch_line(run)
            if rewrite:
                # one column to spare: some terminals wrap as soon as the last is written
                width = shutil.get_terminal_size().columns - 1
                out.write("\r\x1b[K" + cut_to_width(as_written(line, out), width,
                                                      _ellipsis(out)))
            else:
                out.write(line + "\n")
            out.flush()
            if run.status != "running":
                break
            time.sleep(interval)
            fresh = history.get(args.batch_id)
            if fresh is None:
                raise CliError(f"batch {args.batch_id!r} disappeared from {history.path}")
            run = fresh
    if rewrite:
        out.write("\n")
    print(file=out)
    render_stats(run, out)
    return _watch_outcome(run)


def _watch_outcome(run: StoredRun) -> int:
    """``watch``'s exit code for a run that has ended: 0 finished, else 1."""
    return 0 if run.status == "finished" else 1


# -- merge ----------------------------------------------------------------------------------------


def _fingerprint(state: dict[str, Any]) -> str:
    """A name for one export's state: equal for copies of it, different for other runs."""
    text = json.dumps(state, sort_keys=True, ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _sources(path: str, data: dict[str, Any]) -> list[str]:
    """The fingerprints of what a file's state was made of: its own state's, then a
    merge's ``sources`` (every export and merge in it)."""
    own = _fingerprint(data["state"])
    sources = data.get("sources")
    if sources is None:
        return [own]
    if not (isinstance(sources, list) and sources
            and all(isinstance(x, str) for x in sources)):
        raise CliError(f"{path}: \"sources\" must be a non-empty list of strings "
                       "(written by merge)")
    return [own, *(x for x in sources if x != own)]


def _read_state(path: str) -> tuple[str, dict[str, Any], list[str]]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise CliError(f"{path} is not JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("state"), dict):
        raise CliError(f"{path} has no \"state\": merge takes files written by export_json "
                       "(or by merge)")
    summary = data.get("summary")
    batch_id = summary.get("batch_id", path) if isinstance(summary, dict) else path
    return str(batch_id), data["state"], _sources(path, data)


def _new_temp(folder: str, base: str) -> tuple[int, str]:
    """A new file beside the target, mode ``0o666 & ~umask`` (the kernel applies the umask)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) \
        | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = os.path.join(folder, temp_name(base, secrets.token_hex(6)))
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary file name", folder)


def write_atomic(path: str, text: str) -> None:
    """Replace ``path`` with ``text``: a temp file beside it, fsync, ``os.replace``.

    The result keeps the mode of the file it replaces; a new file gets ``0o666 & ~umask``.
    ``ValueError`` for a path that is, or links to, a device, a FIFO or a socket.
    """
    mode = replaced_mode(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = _new_temp(folder, os.path.basename(path))
    try:
        if mode is not None:
            os.chmod(tmp, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def _check_not_an_input(output: str, inputs: Sequence[str]) -> None:
    """Exit 2 when ``output`` is one of ``inputs``, by any path (a link, ``..``, relative):
    the merge would replace what it read."""
    try:
        target = os.stat(output)
    except OSError:
        return  # not there yet (or not reachable: writing it says why)
    for path in inputs:
        try:
            same = os.path.samestat(target, os.stat(path))
        except OSError:
            continue  # reading it says why
        if same:
            raise CliError(f"cannot write {output}: it is the input {path}; choose another -o")


def cmd_merge(args: argparse.Namespace) -> int:
    if args.output not in (None, "-"):
        _check_not_an_input(args.output, args.inputs)
    states = [_read_state(p) for p in args.inputs]
    # Each export and merge is named by a fingerprint of its state; a merge's output
    # lists those of every export and merge in it ("sources"), so one reaching this
    # merge twice (a file given twice, a copy, or inside an earlier merge's output,
    # also one written before "sources" existed) is refused.
    first_with: dict[str, int] = {}
    for i, (path, (_, _, sources)) in enumerate(zip(args.inputs, states, strict=True)):
        for source in sources:
            first = first_with.setdefault(source, i)
            if first == i:
                continue
            other = args.inputs[first]
            if source == sources[0] == states[first][2][0]:  # the states themselves
                why = f"it holds the same state as {other} (given twice, or a copy?)"
            else:
                why = (f"it and {other} both hold the files of one export (one was merged "
                       "into the other?)")
            raise CliError(f"cannot merge {path}: {why}; its files would be counted twice")
    reading = [""]

    def each_state() -> Iterator[dict[str, Any]]:
        for path, (_, state, _) in zip(args.inputs, states, strict=True):
            reading[0] = path
            yield state

    try:  # merge_states reads the states one at a time: an error is about the last read
        agg = merge_states(each_state())
    except ValueError as exc:  # a bad state, sketches of different precision, a sum too big
        raise CliError(f"cannot merge {reading[0]}: {exc}") from None
    batch_id = args.batch_id or "+".join(bid for bid, _, _ in states)
    text = json_text({"summary": agg.to_summary(batch_id).to_dict(), "state": agg.to_state(),
                      "sources": list(first_with)})
    if args.output in (None, "-"):
        sys.stdout.write(text + "\n")
        return 0
    try:
        write_atomic(args.output, text + "\n")
    except OSError as exc:
        raise CliError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    except ValueError as exc:  # a device or a FIFO: -o - writes to standard output
        raise CliError(f"cannot write {args.output}: {exc}; -o - writes to standard "
                       "output") from None
    print(f"merged {fmt_count(len(states), 'state')} ({fmt_count(agg.total_files, 'file')}) "
          f"into {args.output}", file=sys.stderr)
    return 0


# -- demo -----------------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    import anyio

    from .demo import run_demo

    path = db_path(args)
    # the process id: two demos started in the same second get their own ids
    batch_id = args.batch_id or time.strftime(f"demo-%Y%m%d-%H%M%S-{os.getpid()}")
    if not args.no_display and importlib.util.find_spec("rich") is None:
        # without rich the display is a log line every interval: let it through
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    if os.path.exists(path):  # refuse a taken batch id before making any files
        try:
            history = History(path)
        except HistoryError:
            # not a history (yet: another process may be making it): the store says
            # what is wrong, if anything, as the run begins
            pass
        else:
            with history:
                if history.get(batch_id) is not None:
                    raise CliError(f"batch {batch_id!r} is already in {path}: choose "
                                   "another --batch-id")
    try:
        anyio.run(lambda: run_demo(path, files=args.files, workers=args.workers,
                                   batch_id=batch_id, latency=args.latency,
                                   display=not args.no_display))
    except* (HistoryError, ValueError) as group:  # the store refused the file or the id
        raise CliError(str(group.exceptions[0])) from None
    print()
    with open_history(args) as history:
        render_stats(get_run(history, batch_id))
    # commands that work when pasted (quoted for a shell), shown on one line
    cmd = "batchmetrics" + (f" --db {shlex.quote(path)}" if path != DEFAULT_DB else "")
    quoted = shlex.quote(batch_id)
    print(f"\nStored in {one_line(path)}. Try:")
    for rest in ("list", f"files {quoted} --status error", f"stats {quoted} --json",
                 f"compare {quoted} <another run, e.g. the next demo>"):
        print(one_line(f"  {cmd} {rest}"))
    return 0


# -- the parser -----------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _row_count(text: str) -> int:
    """A ``--limit`` or ``--slowest``: at least 1, and no more than SQLite and ``islice`` take."""
    value = _positive_int(text)
    if value > MAX_ROWS:
        raise argparse.ArgumentTypeError(f"must be at most 2**63 - 1, got {value}")
    return value


def _non_empty(text: str) -> str:
    """A ``--db``, ``--batch-id`` or ``--output``: an empty one would mean the default
    (or, for ``--output``, no file) without a word."""
    if not text:
        raise argparse.ArgumentTypeError("must not be empty, got ''")
    return text


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _version() -> str:
    from . import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    db_help = (f"the history file (default: ${ENV_DB}, else ./{DEFAULT_DB})")
    parser = argparse.ArgumentParser(
        prog="batchmetrics",
        description="Look at the history of batch runs recorded by batchmetrics "
                    "(BatchMetrics(..., store=path)).",
        epilog="Start with `batchmetrics demo`, then `batchmetrics list`.")
    parser.add_argument("--db", type=_non_empty, help=db_help)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", type=_non_empty, default=argparse.SUPPRESS, help=db_help)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("stats", parents=[common], help="the summary of one run",
                       description="The summary of one run: a readable table, or the stored "
                                   "summary as JSON.")
    p.add_argument("batch_id")
    p.add_argument("--json", action="store_true",
                   help="print the stored summary (BatchMetricsSummary.to_dict()) as JSON "
                        "(every error type: the table lists the 20 most frequent)")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("list", parents=[common], help="recent runs",
                       description="Recent runs, newest first: status, files, error rate, "
                                   "duration, files/s. A run whose process died shows as "
                                   "interrupted.")
    p.add_argument("-n", "--limit", type=_row_count, default=20, help="how many (default 20)")
    p.add_argument("--status", choices=RUN_STATUSES, help="only runs with this status")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("files", parents=[common], help="the stored per-file rows of a run",
                       description="The per-file rows of a run recorded with "
                                   "store_files=True, in the order they were recorded. "
                                   "Exits 2 for a run recorded without them.")
    p.add_argument("batch_id")
    p.add_argument("--status", choices=list(STATUS_NAMES), help="only files with this status")
    p.add_argument("--slowest", type=_row_count, metavar="N",
                   help="the N longest files, longest first")
    p.add_argument("-n", "--limit", type=_row_count, help="at most this many rows")
    p.add_argument("--json", action="store_true", help="print JSON lines")
    p.set_defaults(func=cmd_files)

    p = sub.add_parser("compare", parents=[common], help="two runs side by side",
                       description="Two runs side by side with the change from A to B of "
                                   "files/s, p50/p90/p99 per file and error rate.")
    p.add_argument("a", help="the baseline batch id")
    p.add_argument("b", help="the batch id to compare with it")
    p.add_argument("--fail-on-regression", type=_non_negative_float, metavar="PCT",
                   help="exit 1 when B is worse than A by more than PCT percent in files/s, "
                        "p50, p90, p99 or error rate (errors appearing where A had none "
                        "count as infinitely worse)")
    p.add_argument("--json", action="store_true",
                   help="print JSON; change_percent and worse_percent are null when A is 0 "
                        "(no percentage: see a, b and regression); a or b is null when that "
                        "run has no value (no timed file, or no file for the error rate)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("watch", parents=[common], help="follow a running batch",
                       description="Follow a run from another terminal: a live line every "
                                   "interval until the run ends, then its summary. Exits 0 "
                                   "when it finished, 1 when it failed, was cancelled or was "
                                   "interrupted (also when the output's reader goes away, as "
                                   "with | head), and 141 when the reader goes away while the "
                                   "run is still going.")
    p.add_argument("batch_id")
    p.add_argument("--interval", type=_non_negative_float,
                   help="seconds between polls (default: the run's checkpoint interval)")
    p.add_argument("--wait", type=_non_negative_float, default=0.0, metavar="SECONDS",
                   help="when the batch (or the history file) is not there yet, look again "
                        f"every --interval (default {_WAIT_POLL:g} s) for up to this long "
                        "before exiting 2; default 0: exit 2 at once")
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser("merge", help="combine exported states into one",
                       description="Combine the \"state\" of JSON files written by "
                                   "export_json (one per process or machine) into one "
                                   "summary and state, as if one batch had seen every file.")
    p.add_argument("inputs", nargs="+", metavar="FILE.json")
    p.add_argument("-o", "--output", type=_non_empty, metavar="OUT.json",
                   help="write here (atomically; not one of the inputs); default: standard "
                        "output")
    p.add_argument("--batch-id", type=_non_empty,
                   help="the merged batch id (default: the inputs' ids joined with +)")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("demo", parents=[common], help="run a sample batch and store it",
                       description="Create sample files in a temporary folder, process them "
                                   "with async workers (real file I/O, some corrupt files and "
                                   "duplicates), show live progress, store the run in the "
                                   "history and print its summary.")
    p.add_argument("--files", type=_positive_int, default=2000,
                   help="how many sample files (default 2000)")
    p.add_argument("--workers", type=_positive_int, default=16,
                   help="concurrent workers (default 16)")
    p.add_argument("--latency", type=_non_negative_float, default=0.02,
                   help="simulated storage latency per file in seconds (default 0.02)")
    p.add_argument("--batch-id", type=_non_empty, help="default: demo-<date>-<time>-<process id>")
    p.add_argument("--no-display", action="store_true", help="no live progress display")
    p.set_defaults(func=cmd_demo)
    return parser


def argument_text(arg: str) -> str:
    """A command-line argument as the text it was typed as: under a locale that is not
    UTF-8 (LC_ALL=C) Python decodes argv's UTF-8 bytes as lone surrogates, while batch
    ids are stored as UTF-8 text; bytes that are not UTF-8 stay surrogates."""
    try:
        return os.fsencode(arg).decode("utf-8", "surrogateescape")
    except UnicodeError:  # a surrogate that does not stand for a byte
        return arg


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    for name in ("batch_id", "a", "b"):  # batch ids (file paths stay as the OS gave them)
        value = getattr(args, name, None)
        if isinstance(value, str) and not value.isascii():
            setattr(args, name, argument_text(value))
    if sys.stdout is None:  # started with its standard output closed (>&-)
        sys.stdout = _ClosedOutput()  # a command that writes to it fails as a full disk does
    for stream in (sys.stdout, sys.stderr):
        # a stored name from undecodable bytes (lone surrogates) is shown escaped
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
    try:
        code: int = args.func(args)
        sys.stdout.flush()  # here, where a reader gone away is handled, not at exit
    except CliError as exc:
        print(f"batchmetrics: {exc}", file=sys.stderr)
        return exc.code
    except HistoryError as exc:
        print(f"batchmetrics: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `batchmetrics files x | head`: stop quietly
        _drop_output()
        return int(getattr(args, "exit_code", 0))  # what the command had decided, if it had
    except OSError as exc:
        if exc.filename is not None:  # a file's, not the output's: not expected here
            raise
        # a full disk (> /dev/full), a closed output (>&-), an I/O error
        print(f"batchmetrics: cannot write output: {exc.strerror or exc}", file=sys.stderr)
        _drop_output()
        return 2
    return code


class _ClosedOutput(io.TextIOBase):
    """``sys.stdout`` when the process started without one: writing fails with EBADF."""

    def write(self, text: str) -> int:
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))


def _drop_output() -> None:
    """Send what is left in stdout's buffer to the null device, so that the interpreter's
    flush at exit does not fail again (with a second message): as the Python docs
    advise for SIGPIPE."""
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError):  # no file behind it (closed at start)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)
