"""Live summaries, recent rates, progress and ETA, parallelism, the slowest files."""

from __future__ import annotations

import functools
import json
import math
import subprocess
import sys
import time
from datetime import datetime
from itertools import pairwise
from pathlib import Path

import anyio
import pytest

from batchmetrics import BatchMetrics, BatchMetricsSummary, HistoryError, JsonlSink

from .clock import FakeClock


async def _produce(metrics: BatchMetrics, seconds: float, per_step: int = 20) -> int:
    """Record files in small bursts for about ``seconds``; return how many."""
    count = 0
    deadline = anyio.current_time() + seconds
    while anyio.current_time() < deadline:
        for _ in range(per_step):
            await metrics.record_file(f"f{count}.wfm", duration=0.01, samples=10)
            count += 1
        await anyio.sleep(0.01)
    return count


@pytest.mark.asyncio
async def test_live_yields_every_interval_then_the_final_summary() -> None:
    metrics = BatchMetrics("live")
    seen: list[BatchMetricsSummary] = []

    async def watch() -> None:
        async for summary in metrics.live(interval=0.2):
            seen.append(summary)

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        async with metrics:
            recorded = await _produce(metrics, 2.0)

    assert len(seen) >= 8
    counts = [s.total_files for s in seen]
    assert counts == sorted(counts)
    assert seen[-1].to_dict() == metrics.summary().to_dict()
    assert seen[-1].state == "finished"
    assert seen[-1].total_files == recorded
    # a tick may land while the block drains ("finishing"), never running again after
    order = {"running": 0, "finishing": 1}
    states = [order[s.state] for s in seen[:-1]]
    assert states == sorted(states)
    assert states.count(0) >= 7


@pytest.mark.asyncio
async def test_a_slow_live_reader_skips_ticks_and_does_not_slow_producers() -> None:
    metrics = BatchMetrics("slow-reader")
    fast: list[float] = []
    slow: list[float] = []

    async def read(into: list[float], pause: float) -> None:
        async for _ in metrics.live(interval=0.05):
            into.append(time.monotonic())
            await anyio.sleep(pause)  # a reader busy with something else

    async with anyio.create_task_group() as tg:
        tg.start_soon(read, fast, 0.0)
        tg.start_soon(read, slow, 0.5)
        async with metrics:
            started = time.monotonic()
            # the producer's own pace: 40 bursts of 25 files, 10 ms apart
            for burst in range(40):
                for i in range(25):
                    await metrics.record_file(f"{burst}-{i}", duration=0.001)
                await anyio.sleep(0.01)
            producer_time = time.monotonic() - started

    assert metrics.summary().total_files == 1000
    # unhurried, the producer takes 0.4 s of sleeps; a slow reader must not add to it
    assert producer_time < 0.4 + 0.35
    assert len(slow) < len(fast)
    # no backlog: the slow reader got one summary per pause, not one per missed tick
    gaps = [b - a for a, b in pairwise(slow)]
    assert all(gap >= 0.45 for gap in gaps[:-1])


@pytest.mark.asyncio
async def test_live_started_before_the_batch_waits_for_it() -> None:
    metrics = BatchMetrics("later")
    seen: list[BatchMetricsSummary] = []

    async def watch() -> None:
        async for summary in metrics.live(interval=0.05):
            seen.append(summary)

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        await anyio.sleep(0.2)
        assert seen == []  # nothing before the batch starts
        async with metrics:
            await metrics.record_file("a", duration=0.1)
            await anyio.sleep(0.15)
    assert seen[-1].total_files == 1
    assert seen[-1].state == "finished"


@pytest.mark.parametrize("interval", [0, -1.0, math.nan, math.inf])
def test_live_rejects_a_bad_interval_at_the_call(interval: float) -> None:
    with pytest.raises(ValueError, match="interval"):
        BatchMetrics("x").live(interval)


def test_live_rejects_a_non_number_interval() -> None:
    with pytest.raises(TypeError, match="interval"):
        BatchMetrics("x").live("1")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "error", "field"),
    [
        ({"total_files": -1}, ValueError, "total_files"),
        ({"total_files": 2.5}, TypeError, "total_files"),
        ({"interval": 0}, ValueError, "interval"),
        ({"rate_window": -3}, ValueError, "rate_window"),
        ({"buffer_size": 0}, ValueError, "buffer_size"),
        ({"sinks": [object()]}, TypeError, "not a sink"),
        ({"sinks": "jsonl"}, TypeError, "sinks"),
        ({"summary_path": ""}, ValueError, "summary_path must not be empty"),
        ({"summary_path": b"s.json"}, TypeError, "summary_path must be a str"),
        ({"store": ""}, ValueError, "store must not be empty"),
        ({"store": b"h.db"}, TypeError, "store must be a str"),
        ({"store": ":memory:"}, ValueError, "path must be a file"),
        ({"store_files": "no"}, TypeError, "store_files must be a bool, got str 'no'"),
        ({"display": "no"}, TypeError, "display must be a bool, got str 'no'"),
        ({"keep_files": 0}, TypeError, "keep_files must be a bool"),
        ({"shutdown_timeout": 0}, ValueError, "shutdown_timeout must be > 0 and finite, got 0"),
        ({"slowest": -1}, ValueError, "slowest must be >= 0, got -1"),
        ({"max_error_types": -1}, ValueError, "max_error_types must be >= 0, got -1"),
        ({"max_error_types": 2.0}, TypeError, "max_error_types must be an int, got float 2.0"),
        ({"clock": 1.7e9}, TypeError, "clock must be callable or None, got 1700000000.0"),
    ],
)
def test_bad_constructor_arguments_are_named(
    kwargs: dict[str, object], error: type[Exception], field: str
) -> None:
    with pytest.raises(error, match=field):
        BatchMetrics("x", **kwargs)  # type: ignore[arg-type]


async def _steady(metrics: BatchMetrics, clock: FakeClock, files: int, rate: float) -> None:
    for i in range(files):
        clock.advance(1.0 / rate)
        await metrics.record_file(f"s{i}", duration=0.5, samples=100, bytes_processed=1000)


@pytest.mark.asyncio
async def test_eta_at_a_steady_rate_is_close_to_the_true_remaining_time() -> None:
    clock = FakeClock()
    async with BatchMetrics("eta", total_files=1000, clock=clock, rate_window=10.0) as m:
        await _steady(m, clock, 300, rate=10.0)  # 30 s at 10 files/s
        summary = await m.snapshot()
    progress = summary.progress
    assert progress is not None
    assert (progress.completed, progress.remaining) == (300, 700)
    assert progress.percent == pytest.approx(30.0)
    true_remaining = 700 / 10.0
    assert progress.eta_seconds is not None
    assert abs(progress.eta_seconds - true_remaining) <= 0.2 * true_remaining
    assert progress.eta_low_seconds is not None
    assert progress.eta_high_seconds is not None
    assert progress.eta_low_seconds <= progress.eta_seconds <= progress.eta_high_seconds


@pytest.mark.asyncio
async def test_eta_follows_a_change_of_rate_within_the_window() -> None:
    clock = FakeClock()
    async with BatchMetrics("eta2", total_files=2000, clock=clock, rate_window=10.0) as m:
        await _steady(m, clock, 200, rate=10.0)  # 20 s slow
        await _steady(m, clock, 400, rate=40.0)  # then 10 s fast
        summary = await m.snapshot()
    assert summary.progress is not None
    eta = summary.progress.eta_seconds
    assert eta is not None
    true_remaining = 1400 / 40.0  # the recent rate is what the batch does now
    assert abs(eta - true_remaining) <= 0.2 * true_remaining
    # the range spans the overall rate too
    assert summary.progress.eta_high_seconds is not None
    assert summary.progress.eta_high_seconds > eta


@pytest.mark.asyncio
async def test_eta_does_not_go_blank_while_one_file_outlasts_the_window() -> None:
    clock = FakeClock()
    async with BatchMetrics("stall", total_files=100, clock=clock, rate_window=5.0) as m:
        await _steady(m, clock, 50, rate=5.0)
        clock.advance(60.0)  # one file takes a minute: no completion in the window
        summary = await m.snapshot()
    assert summary.throughput.recent_files_per_second == 0.0
    assert summary.progress is not None
    assert summary.progress.eta_seconds is not None
    assert summary.progress.eta_seconds > 0


@pytest.mark.asyncio
async def test_recent_rates_cover_the_window_and_cumulative_rates_the_run() -> None:
    clock = FakeClock()
    async with BatchMetrics("rates", clock=clock, rate_window=10.0, total_files=1000) as m:
        await _steady(m, clock, 100, rate=2.0)  # 50 s slow
        for i in range(50):  # 10 s fast: 20 successful files/s, 10 failed and 5 skipped
            for j in range(4):
                clock.advance(0.2 / 7)
                await m.record_file(f"ok{i}-{j}", duration=0.5, samples=100,
                                    bytes_processed=1000)
            for j in range(2):
                clock.advance(0.2 / 7)
                await m.record_error(f"bad{i}-{j}", "ValueError", "bad header", duration=0.5)
            clock.advance(0.2 / 7)
            await m.record_skip(f"dup{i}", reason="duplicate")
        summary = await m.snapshot()
    t = summary.throughput
    # rates count the successful files only, as the cumulative ones do
    assert t.recent_files_per_second == pytest.approx(20.0, rel=0.15)
    assert t.recent_bytes_per_second == pytest.approx(20_000.0, rel=0.15)
    assert t.recent_samples_per_second == pytest.approx(2_000.0, rel=0.15)
    assert t.files_per_second == pytest.approx(300 / 60.0, rel=0.01)
    assert t.bytes_per_second == pytest.approx(300_000 / 60.0, rel=0.01)
    # progress counts every file done, whatever its outcome, and so does the ETA's rate
    progress = summary.progress
    assert progress is not None
    assert (progress.completed, progress.remaining) == (450, 550)
    assert progress.percent == pytest.approx(45.0)
    assert progress.eta_seconds == pytest.approx(550 / 35.0, rel=0.15)


@pytest.mark.asyncio
async def test_parallelism_is_work_time_over_wall_time() -> None:
    clock = FakeClock()
    async with BatchMetrics("par", clock=clock) as m:
        for i in range(100):
            clock.advance(0.1)
            await m.record_file(f"p{i}", duration=1.0)  # ten files at once, on average
    summary = m.summary()
    assert summary.timing.busy_seconds == pytest.approx(100.0)
    assert summary.timing.parallelism == pytest.approx(10.0, rel=0.01)


@pytest.mark.asyncio
async def test_to_dict_gives_percent_and_parallelism_to_two_decimals() -> None:
    clock = FakeClock()
    async with BatchMetrics("round", clock=clock, total_files=3) as m:
        clock.advance(3.0)
        await m.record_file("a.wfm", duration=2.0)  # 2 s of work in 3 s of wall time
    d = m.summary().to_dict()
    assert d["progress"]["percent"] == 33.33  # 1 file of 3
    assert d["timing"]["parallelism"] == 0.67


@pytest.mark.asyncio
async def test_summary_lists_the_slowest_files_and_first_messages_per_error_type() -> None:
    async with BatchMetrics("who", slowest=3) as m:
        for i in range(100):
            await m.record_file(f"f{i}", duration=0.001 * i)
        await m.record_file("huge", duration=99.0)
        for i in range(10):
            await m.record_error(f"e{i}", "ValueError", f"bad header {i}", duration=0.05)
        await m.record_error("x", "OSError", "disk", duration=120.0)
    summary = m.summary()
    assert [s.filename for s in summary.slowest_files] == ["x", "huge", "f99"]
    assert summary.slowest_files[0].status == "error"
    assert summary.errors.messages == {
        "ValueError": ["bad header 0", "bad header 1", "bad header 2"],
        "OSError": ["disk"],
    }
    assert summary.to_dict()["slowest_files"][1] == {
        "filename": "huge", "duration_seconds": 99.0, "status": "success"}


@pytest.mark.asyncio
async def test_error_types_past_max_error_types_are_counted_apart_and_long_messages_cut() -> None:
    # error types made unique by the job (a URL in them) must not grow the summary
    long_message = "x" * 20_000
    async with BatchMetrics("types", max_error_types=2) as m:
        await m.record_error("a", "TimeoutError", long_message)
        for i in range(50):
            await m.record_error(f"u{i}", f"HTTP 404 /item/{i}", "not found")
        await m.record_error("b", "TimeoutError", "again")
    errors = m.summary().to_dict()["errors"]
    assert errors["by_type"] == {"TimeoutError": 2, "HTTP 404 /item/0": 1}
    assert errors["other_types"] == 49
    assert errors["total"] == 52
    kept = errors["messages"]["TimeoutError"]
    assert kept == ["x" * 999 + "\u2026", "again"]
    # the file's own row keeps the whole message
    assert m.get_file_metrics()[0]["error_message"] == long_message


@pytest.mark.asyncio
@pytest.mark.parametrize("phase", [0.0, 0.13, 0.25, 0.49])
async def test_the_recent_rate_is_exact_wherever_now_falls_in_a_slot(phase: float) -> None:
    # 100 files/s for 30 s; the window's slots are 0.5 s, and "now" may fall anywhere
    # in one: the rate must divide by the time the counted slots cover
    clock = FakeClock(1_800_000_000.0 + phase)
    async with BatchMetrics("phase", clock=clock, rate_window=10.0, total_files=10_000) as m:
        for i in range(3000):
            clock.advance(0.01)
            await m.record_file(f"f{i}", duration=0.01)
        summary = await m.snapshot()
    assert summary.throughput.recent_files_per_second == pytest.approx(100.0, rel=0.002)
    assert summary.progress is not None
    assert summary.progress.eta_seconds == pytest.approx(70.0, rel=0.002)


@pytest.mark.asyncio
async def test_a_clock_starting_at_zero_still_gives_wall_time_and_stamps() -> None:
    clock = FakeClock(0.0)
    async with BatchMetrics("zero", clock=clock) as m:
        clock.advance(5.0)
        await m.record_file("a.wfm", duration=1.0)
        clock.advance(5.0)
        await m.record_file("b.wfm", duration=1.0)
    summary = m.summary()
    assert summary.timing.total_duration == 10.0  # wall time, not the sum of durations
    assert summary.throughput.files_per_second == pytest.approx(0.2)
    assert summary.to_dict()["start_time"] == "1970-01-01T00:00:00+00:00"


# A child whose wall clock NTP steps back an hour mid-run. The system's clock cannot be
# stepped here, so ``time.time`` is replaced before batchmetrics is imported; the
# monotonic clock is the real one.
_STEPPED_CLOCK_RUN = r"""
import json, time
_real, _step = time.time, [0.0]
time.time = lambda: _real() + _step[0]
import anyio
from batchmetrics import BatchMetrics

async def main():
    async with BatchMetrics("stepped", keep_files=True, total_files=4) as m:
        await m.record_file("a.wfm", duration=0.02, samples=100)
        await anyio.sleep(0.05)
        _step[0] = -3600.0
        await m.record_file("b.wfm", duration=0.02, samples=100)
        live = (await m.snapshot()).to_dict()
    print(json.dumps({"live": live, "final": m.summary().to_dict(),
                      "files": m.get_file_metrics()}))

anyio.run(main)
"""


def test_a_wall_clock_stepped_back_mid_run_changes_no_duration_or_rate() -> None:
    out = subprocess.run([sys.executable, "-c", _STEPPED_CLOCK_RUN], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    run = json.loads(out)
    live, final = run["live"], run["final"]
    for summary in (live, final):
        assert 0.05 <= summary["timing"]["total_duration_seconds"] < 30
        assert summary["throughput"]["files_per_second"] > 0
        assert summary["throughput"]["recent_files_per_second"] > 0
    assert live["progress"]["eta_seconds"] > 0
    assert final["end_time"] > final["start_time"]
    first, second = run["files"]
    assert second["end_time"] > first["end_time"]


@pytest.mark.asyncio
async def test_a_batch_that_fails_to_start_reports_failed_to_live_readers(
        tmp_path: Path) -> None:
    m = BatchMetrics("no-start", store=tmp_path / "missing" / "history.db", total_files=10)
    states: list[str] = []

    async def read() -> None:
        async for summary in m.live(interval=0.05):
            states.append(summary.state)

    async with anyio.create_task_group() as tg:
        tg.start_soon(read)
        await anyio.sleep(0.05)  # the reader waits for the start
        with pytest.raises(HistoryError):
            async with m:
                pass
    assert states == ["failed"]
    assert m.summary().state == "failed"


@pytest.mark.asyncio
async def test_recent_rates_do_not_depend_on_how_events_were_batched() -> None:
    # A batch crossing a slot boundary was counted in the slot of its last event, so
    # a burst just before the boundary stayed in the window a slot too long.
    async def recent(split: bool) -> float:
        clock = FakeClock(1000.0)
        async with BatchMetrics("w", clock=clock, rate_window=10.0) as m:
            clock.advance(9.9)
            for i in range(50):  # a burst near the end of a 0.5 s slot
                await m.record_file(f"a{i}", duration=0.01)
            if split:
                await m.snapshot()  # folded on its own
            clock.advance(0.4)  # the next slot
            await m.record_file("b", duration=0.01)
            await m.snapshot()
            clock.advance(9.3)  # the burst has left the window, "b" has not
            return (await m.snapshot()).throughput.recent_files_per_second

    apart, together = await recent(split=True), await recent(split=False)
    assert together == apart == pytest.approx(1 / 9.6, rel=0.01)


@pytest.mark.asyncio
@pytest.mark.parametrize(("total", "remaining", "percent"), [(10, 7, 30.0), (2, 0, 100.0)])
async def test_a_batch_that_ended_short_of_or_past_total_files(
        total: int, remaining: int, percent: float) -> None:
    # short: no ETA (it did not say 0); past: 100 percent, never more, none remaining
    async with BatchMetrics("ended", total_files=total) as m:
        for i in range(3):
            await m.record_file(f"f{i}.wfm", duration=0.01)
    progress = m.summary().progress
    assert progress is not None
    assert (progress.completed, progress.remaining) == (3, remaining)
    assert progress.percent == percent
    assert m.summary().to_dict()["progress"]["percent"] == percent
    if remaining:
        assert (progress.eta_seconds, progress.eta_low_seconds,
                progress.eta_high_seconds) == (None, None, None)


def test_a_rate_window_too_short_to_slot_is_refused() -> None:
    with pytest.raises(ValueError, match=r"rate_window must be >= 0\.01 seconds, got 1e-300"):
        BatchMetrics(rate_window=1e-300)


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


@pytest.mark.asyncio
async def test_the_default_clock_stamps_every_kind_of_record_in_wall_time(tmp_path: Path) -> None:
    log = tmp_path / "f.jsonl"
    before = time.time()
    async with BatchMetrics(keep_files=True, sinks=[JsonlSink(log)]) as m:
        await m.record_file("a.wfm", duration=0.1)
        await m.record_error("b.wfm", "OSError", "gone")
        await m.record_skip("c.wfm", "empty")
        await anyio.to_thread.run_sync(
            functools.partial(m.record_file_threadsafe, "d.wfm", duration=0.1))
    after = time.time()
    stamps = {json.loads(x)["filename"]: json.loads(x)["end_ts"]
              for x in log.read_text().splitlines()}
    assert sorted(stamps) == ["a.wfm", "b.wfm", "c.wfm", "d.wfm"]
    for name, ts in stamps.items():
        assert before - 1 <= ts <= after + 1, name
    start = _epoch(m.summary().to_dict()["start_time"])
    assert before - 1 <= start <= after + 1


@pytest.mark.asyncio
async def test_the_start_is_stamped_with_the_wall_time_at_the_enter_not_at_construction(
        monkeypatch: pytest.MonkeyPatch) -> None:
    m = BatchMetrics(keep_files=True)
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() - 3600.0)  # NTP steps back before the start
    async with m:
        await m.record_file("a.wfm", duration=0.1)
    start = _epoch(m.summary().to_dict()["start_time"])
    assert abs(start - time.time()) < 60
