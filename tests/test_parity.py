"""Summary and per-file parity with the reference design on the same mixed events."""

from __future__ import annotations

import csv
import json
import math
import statistics
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import pytest

from batchmetrics import Aggregate, BatchMetrics, BatchMetricsSummary
from batchmetrics._events import STATUS_CODES, Event

from ._workload import (
    Call,
    apply_ours,
    apply_reference,
    mixed_calls,
    success_bytes,
    timed_durations,
)
from .clock import FakeClock

N_EVENTS = 3_600


def _exact_quantile(values: list[float], q: float) -> float:
    """The exact q-quantile: linear interpolation at rank q*(n-1) of the sorted values
    (numpy's default method; for q = 0.5 this is statistics.median)."""
    ordered = sorted(values)
    r = q * (len(ordered) - 1)
    lo, hi = math.floor(r), math.ceil(r)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (r - lo)


def _missing_keys(ref: dict[str, Any], ours: dict[str, Any], prefix: str = "") -> list[str]:
    """Keys of ``ref`` (recursively into nested dicts) absent from ``ours``.

    ``errors.by_type`` is data keyed by error type, compared separately.
    """
    missing = []
    for key, value in ref.items():
        path = f"{prefix}{key}"
        if key not in ours:
            missing.append(path)
        elif isinstance(value, dict) and path != "errors.by_type":
            assert isinstance(ours[key], dict), path
            missing += _missing_keys(value, ours[key], path + ".")
    return missing


@pytest.fixture(scope="module")
def calls() -> list[Call]:
    return mixed_calls(N_EVENTS, seed=20240611)


class Run:
    """Both implementations after recording the same calls, with the same start/end."""

    def __init__(self, ref: Any, metrics: BatchMetrics) -> None:
        self.ref = ref
        self.metrics = metrics
        self.ours: BatchMetricsSummary = metrics.summary()
        self.theirs: Any = ref.summary()


@pytest.fixture(scope="module")
def run(reference_cls: Any, calls: list[Call]) -> Run:
    ref = reference_cls(batch_id="parity")
    apply_reference(ref, calls)
    metrics = BatchMetrics(batch_id="parity")

    async def record() -> None:
        async with metrics:
            await apply_ours(metrics, calls)

    anyio.run(record)  # a real event loop of its own, once for the module
    # the same wall-clock stamps for both, so total_duration and rates are comparable
    ref._start_time = metrics._agg.start_ts
    ref._end_time = metrics._agg.end_ts
    return Run(ref, metrics)


def test_workload_is_mixed(calls: list[Call]) -> None:
    kinds = {(c.method, c.kwargs.get("status", "success")) for c in calls}
    assert kinds == {("record_file", "success"), ("record_file", "error"),
                     ("record_error", "success"), ("record_skip", "success")}
    assert any(c.kwargs.get("duration") == 0.0 for c in calls if c.method == "record_file")
    assert len(calls) >= 3_000


def test_every_reference_summary_key_is_present(run: Run) -> None:
    theirs, ours = run.theirs.to_dict(), run.ours.to_dict()
    assert _missing_keys(theirs, ours) == []
    # the reference's keys come first and in its order (we only add after them)
    assert list(ours)[: len(theirs)] == list(theirs)
    for section in ("timing", "throughput", "errors"):
        assert list(ours[section])[: len(theirs[section])] == list(theirs[section])


def test_counts_rates_and_error_breakdown_equal_the_reference(run: Run) -> None:
    theirs, ours = run.theirs.to_dict(), run.ours.to_dict()
    for key in ("batch_id", "total_files", "processed_count", "error_count", "skip_count",
                "success_rate_percent"):
        assert ours[key] == theirs[key], key
    # by_type, total and rate_percent as the reference has them
    assert {key: ours["errors"][key] for key in theirs["errors"]} == theirs["errors"]
    assert run.ours.errors.by_type == run.theirs.errors.by_type
    assert run.ours.errors.rate == run.theirs.errors.rate
    assert run.ours.success_rate == run.theirs.processed_count / run.theirs.total_files
    assert ours["total_files"] == N_EVENTS


def test_mean_stddev_min_max_match_statistics(run: Run, calls: list[Call]) -> None:
    durations = timed_durations(calls)  # successes with duration > 0
    t = run.ours.timing
    assert t.average_per_file == pytest.approx(statistics.mean(durations), rel=1e-9)
    assert t.stddev_per_file == pytest.approx(statistics.stdev(durations), rel=1e-9)
    assert t.min_per_file == pytest.approx(min(durations), rel=1e-9)
    assert t.max_per_file == pytest.approx(max(durations), rel=1e-9)
    # the reference computes the same with statistics: check we agree with it too
    assert t.average_per_file == pytest.approx(run.theirs.timing.average_per_file, rel=1e-9)
    assert t.stddev_per_file == pytest.approx(run.theirs.timing.stddev_per_file, rel=1e-9)


def test_median_p90_p99_within_one_percent_of_exact(run: Run, calls: list[Call]) -> None:
    # exact median = statistics.median; exact p90/p99 = linear interpolation at rank
    # q*(n-1) of the sorted durations
    durations = timed_durations(calls)
    t = run.ours.timing
    assert _exact_quantile(durations, 0.5) == statistics.median(durations)
    assert t.median_per_file == pytest.approx(statistics.median(durations), rel=0.01)
    assert t.median_per_file == pytest.approx(run.theirs.timing.median_per_file, rel=0.01)
    assert t.p90_per_file == pytest.approx(_exact_quantile(durations, 0.90), rel=0.01)
    assert t.p95_per_file == pytest.approx(_exact_quantile(durations, 0.95), rel=0.01)
    assert t.p99_per_file == pytest.approx(_exact_quantile(durations, 0.99), rel=0.01)


def test_total_duration_and_throughput_equal_the_reference(
    run: Run, calls: list[Call]
) -> None:
    ours, theirs = run.ours, run.theirs
    total = run.metrics._agg.end_ts - run.metrics._agg.start_ts  # type: ignore[operator]
    assert total > 0
    assert ours.timing.total_duration == theirs.timing.total_duration == total
    for key in ("files_per_second", "samples_per_second", "measurements_per_second"):
        assert getattr(ours.throughput, key) == pytest.approx(
            getattr(theirs.throughput, key), rel=1e-12), key
    # the reference never fills bytes_per_second; we do
    assert theirs.throughput.bytes_per_second == 0.0
    assert ours.throughput.bytes_per_second == pytest.approx(success_bytes(calls) / total,
                                                             rel=1e-12)
    assert ours.total_bytes == success_bytes(calls)


def test_start_and_end_times_render_as_the_reference(run: Run) -> None:
    assert run.ours.start_time == run.theirs.start_time
    assert run.ours.end_time == run.theirs.end_time


def test_file_rows_have_every_reference_column_and_the_same_values(run: Run) -> None:
    theirs = run.ref.get_file_metrics()
    ours = run.metrics.get_file_metrics()
    assert len(ours) == len(theirs) == N_EVENTS
    for mine, ref in zip(ours, theirs, strict=True):
        assert set(ref) <= set(mine)
        assert list(mine)[: len(ref)] == list(ref)
        for key in ("filename", "duration_seconds", "samples", "measurements", "status",
                    "error_type", "error_message", "memory_peak_bytes", "samples_per_second"):
            assert mine[key] == ref[key], key


@pytest.mark.asyncio
async def test_csv_header_starts_with_the_reference_columns(run: Run, tmp_path: Path) -> None:
    ours_path, ref_path = tmp_path / "ours.csv", tmp_path / "ref.csv"
    run.ref.export_csv(ref_path)
    await run.metrics.export_csv(ours_path)
    with ref_path.open(newline="") as f:
        ref_header = next(csv.reader(f))
    with ours_path.open(newline="") as f:
        our_header = next(csv.reader(f))
    assert our_header[: len(ref_header)] == ref_header
    assert our_header[len(ref_header):] == ["bytes_processed"]


def test_unstamped_summary_uses_the_sum_of_durations_as_the_reference(
    reference_cls: Any, calls: list[Call]
) -> None:
    # without start/end stamps total_duration is the sum of the timed durations
    ref = reference_cls(batch_id="unstamped")
    apply_reference(ref, calls)
    agg = Aggregate()
    events: list[Event] = []
    for c in calls:
        if c.method == "record_file":
            kw = c.kwargs
            events.append((c.args[0], 1e9, kw["duration"], kw.get("samples", 0),
                           kw.get("measurements", 0), c.extra.get("bytes_processed", 0),
                           STATUS_CODES[kw.get("status", "success")], kw.get("error_type"),
                           kw.get("error_message"), kw.get("memory_peak")))
        elif c.method == "record_error":
            name, etype, msg, duration = c.args
            events.append((name, 1e9, duration, 0, 0, 0, 1, etype, msg, None))
        else:
            events.append((c.args[0], 1e9, 0.0, 0, 0, 0, 2, None, c.kwargs["reason"], None))
    agg.add_batch(events)
    ours, theirs = agg.to_summary("unstamped"), ref.summary()
    assert ours.timing.total_duration == pytest.approx(theirs.timing.total_duration, rel=1e-9)
    assert ours.timing.total_duration == pytest.approx(sum(timed_durations(calls)), rel=1e-9)
    assert ours.throughput.files_per_second == pytest.approx(
        theirs.throughput.files_per_second, rel=1e-9)
    assert (ours.start_time, ours.end_time) == (theirs.start_time, theirs.end_time) == ("", "")


# -- the exported files, on one clock -----------------------------------------------

#: Summary values that differ by design: the median comes from the sketch (within 1%),
#: and the reference never fills bytes_per_second.
_APPROX = {"summary.timing.median_per_file_seconds"}
_OURS_ONLY_VALUE = {"summary.throughput.bytes_per_second"}


def _differences(ref: Any, ours: Any, path: str) -> list[str]:
    """Where ``ours`` lacks a key of ``ref`` or holds another value (or type) for it."""
    if path in _OURS_ONLY_VALUE:
        return []
    if isinstance(ref, dict):
        if not isinstance(ours, dict):
            return [f"{path}: {ours!r} is not an object"]
        out = []
        for key, value in ref.items():
            if key not in ours:
                out.append(f"{path}.{key}: missing")
            else:
                out += _differences(value, ours[key], f"{path}.{key}")
        return out
    if isinstance(ref, list):
        if not isinstance(ours, list) or len(ours) != len(ref):
            return [f"{path}: {len(ref)} items in the reference, ours {ours!r:.80}"]
        return [d for i, (a, b) in enumerate(zip(ref, ours, strict=True))
                for d in _differences(a, b, f"{path}[{i}]")]
    if path in _APPROX:
        return [] if ours == pytest.approx(ref, rel=0.01) else [f"{path}: {ref} vs {ours}"]
    if ours != ref or type(ours) is not type(ref):
        return [f"{path}: reference {ref!r}, ours {ours!r}"]
    return []


@pytest.mark.asyncio
async def test_json_and_csv_exports_equal_the_reference_on_one_clock(
    reference_cls: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # names a CSV must quote, non-ASCII ones (the reference's JSON escapes them), then
    # the mixed workload; both sides read the same clock, so every timestamp matches
    calls = [Call("record_file", (name,), {"duration": 0.25, "samples": 7},
                  {"bytes_processed": 3})
             for name in ('a,b "c".wfm', "line\nbreak.wfm", "é😀 Ω.wfm")]
    calls.append(Call("record_error", ("ü.wfm", "ValueError", "ñ bad header", 0.5)))
    calls += mixed_calls(600, seed=7)
    clock = FakeClock(1_800_000_000.25)
    refmod = sys.modules[reference_cls.__module__]
    monkeypatch.setattr(refmod, "time", SimpleNamespace(time=clock))

    ref = reference_cls(batch_id="exports")
    ref.start()
    for call in calls:
        clock.advance(0.125)
        getattr(ref, call.method)(*call.args, **call.kwargs)
    clock.advance(0.125)
    ref.finish()

    clock.now = 1_800_000_000.25
    metrics = BatchMetrics(batch_id="exports", clock=clock)
    async with metrics:
        for call in calls:
            clock.advance(0.125)
            await getattr(metrics, call.method)(*call.args, **call.kwargs, **call.extra)
        clock.advance(0.125)

    ref.export_json(tmp_path / "ref.json")
    ref.export_csv(tmp_path / "ref.csv")
    await metrics.export_json(tmp_path / "ours.json")
    await metrics.export_csv(tmp_path / "ours.csv")

    ref_json = (tmp_path / "ref.json").read_bytes()
    ours_json = (tmp_path / "ours.json").read_bytes()
    assert ref_json.isascii()
    assert ours_json.isascii()  # non-ASCII escaped, as the reference's json.dump does
    theirs, ours = json.loads(ref_json), json.loads(ours_json)
    assert _differences(theirs["summary"], ours["summary"], "summary") == []
    assert _differences(theirs["files"], ours["files"], "files") == []
    assert ours["files"][2]["filename"] == "é😀 Ω.wfm"
    assert ours["files"][0]["start_time"] == theirs["files"][0]["start_time"] != ""

    # CSV: the same text in every reference column (quoting, floats, empty cells)
    with (tmp_path / "ref.csv").open(newline="", encoding="utf-8") as f:
        ref_rows = list(csv.reader(f))
    with (tmp_path / "ours.csv").open(newline="", encoding="utf-8") as f:
        our_rows = list(csv.reader(f))
    assert len(our_rows) == len(ref_rows) == len(calls) + 1
    assert [row[:-1] for row in our_rows] == ref_rows
    assert our_rows[0][-1] == "bytes_processed"
    assert our_rows[1][-1] == "3"
    assert (tmp_path / "ours.csv").read_bytes().count(b"\r\n") == \
        (tmp_path / "ref.csv").read_bytes().count(b"\r\n")
