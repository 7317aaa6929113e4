"""BatchMetrics on a real event loop: lifecycle, track(), draining, concurrency, backpressure."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import re
import tracemalloc
from collections import Counter
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import cast

import anyio
import anyio.abc
import anyio.lowlevel
import pytest

from batchmetrics import BatchMetrics, History, JsonlSink, Store, get_batch_stats

from .sinks import (
    FailingSink,
    FailsAfterAWhile,
    FailsToClose,
    HungOnClose,
    HungSink,
    SecondWriteFails,
    SlowSink,
)

# -- lifecycle ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_recording_before_the_block_raises_naming_the_batch() -> None:
    m = BatchMetrics(batch_id="job-early")
    with pytest.raises(RuntimeError, match="job-early") as info:
        await m.record_file("a.wfm", duration=0.1)
    assert "not started" in str(info.value)
    with pytest.raises(RuntimeError, match="job-early"):
        await m.record_error("a.wfm", "OSError", "disk")
    with pytest.raises(RuntimeError, match="job-early"):
        await m.record_skip("a.wfm")
    async with m:  # the refused calls left nothing behind
        pass
    assert m.summary().total_files == 0


@pytest.mark.asyncio
async def test_recording_after_the_block_raises_naming_the_batch_as_finished() -> None:
    async with BatchMetrics(batch_id="job-late") as m:
        await m.record_file("a.wfm", duration=0.1)
    for call in (m.record_file("b.wfm", duration=0.1), m.record_error("b", "E", "m"),
                 m.record_skip("b")):
        with pytest.raises(RuntimeError, match="job-late") as info:
            await call
        assert "finished" in str(info.value)
    assert m.summary().total_files == 1


@pytest.mark.asyncio
async def test_entering_twice_raises() -> None:
    m = BatchMetrics(batch_id="job-twice")

    async def enter_inside() -> None:
        async with m:
            await m.record_file("a.wfm", duration=0.1)
            await m.__aenter__()

    with pytest.raises(RuntimeError, match="job-twice"):
        await enter_inside()
    # the outer block still finished and kept what was recorded
    assert m.summary().total_files == 1
    with pytest.raises(RuntimeError, match="job-twice"):
        await m.__aenter__()


@pytest.mark.asyncio
async def test_track_before_the_block_raises() -> None:
    m = BatchMetrics(batch_id="job-track-early")
    with pytest.raises(RuntimeError, match="job-track-early"):
        async with m.track("a.wfm"):
            pass  # pragma: no cover
    async with m:
        pass
    assert m.summary().total_files == 0
    assert m.summary().in_flight == 0


@pytest.mark.asyncio
async def test_snapshot_before_the_block_is_an_empty_summary() -> None:
    m = BatchMetrics(batch_id="job-new")
    snap = await m.snapshot()
    assert snap.batch_id == "job-new"
    assert (snap.total_files, snap.processed_count, snap.error_count, snap.skip_count) == (
        0, 0, 0, 0)
    assert (snap.start_time, snap.end_time) == ("", "")
    assert snap.timing.total_duration == 0.0
    assert m.summary() == snap


@pytest.mark.asyncio
async def test_summary_after_exit_is_final_and_equals_snapshot() -> None:
    async with BatchMetrics(batch_id="job-final") as m:
        await m.record_file("a.wfm", duration=0.2, samples=5)
        await m.record_error("b.wfm", "OSError", "disk")
    final = m.summary()
    assert final.state == "finished"
    assert final.end_time != ""
    await anyio.sleep(0.02)  # time passes: a final summary does not move
    assert m.summary() == final
    assert await m.snapshot() == final
    assert final.total_files == 2


@pytest.mark.asyncio
async def test_get_batch_stats_matches_and_rejects_another_batch_id() -> None:
    async with BatchMetrics(batch_id="job-1") as m:
        await m.record_file("a.wfm", duration=0.2)
    assert get_batch_stats("job-1", m) == m.summary().to_dict()
    with pytest.raises(ValueError, match=r"^Batch ID mismatch: expected job-2, got job-1$"):
        get_batch_stats("job-2", m)


@pytest.mark.asyncio
async def test_start_and_finish_are_logged_with_the_batch_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="batchmetrics"):
        async with BatchMetrics(batch_id="job-log") as m:
            await m.record_file("a.wfm", duration=0.2)
    messages = {r.getMessage(): r for r in caplog.records if r.name == "batchmetrics"}
    started = messages["Batch metrics collection started"]
    finished = messages["Batch metrics collection finished"]
    assert started.batch_id == finished.batch_id == "job-log"  # type: ignore[attr-defined]
    assert finished.total_files == 1  # type: ignore[attr-defined]


def test_default_batch_id_is_a_fresh_uuid() -> None:
    a, b = BatchMetrics(), BatchMetrics()
    assert a.batch_id != b.batch_id
    assert len(a.batch_id) == 36


# -- snapshot ----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_snapshot_includes_every_call_that_returned() -> None:
    async with BatchMetrics(buffer_size=4096) as m:
        for i in range(1, 3001):
            await m.record_file(f"f{i}", duration=0.001 * (i % 7), samples=1)
            if i % 500 == 0:
                snap = await m.snapshot()
                assert snap.total_files == i
                assert snap.total_samples == i
                assert snap.state == "running"


# -- track() -----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_track_times_the_block_and_records_its_counters() -> None:
    async with BatchMetrics() as m, m.track("a.wfm") as item:
        await anyio.sleep(0.01)
        item.samples = 1000
        item.measurements = 7
        item.bytes_processed = 4096
        item.memory_peak = 1 << 20
    row = m.get_file_metrics()[0]
    # anyio.sleep(0.01) lasts at least 10 ms, up to the loop clock's resolution
    assert row["duration_seconds"] >= 0.01 - 1e-3
    assert row["duration_seconds"] < 5.0
    assert (row["samples"], row["measurements"], row["bytes_processed"],
            row["memory_peak_bytes"], row["status"]) == (1000, 7, 4096, 1 << 20, "success")
    summary = m.summary()
    assert summary.processed_count == 1
    assert summary.timing.average_per_file == row["duration_seconds"]


@pytest.mark.asyncio
async def test_track_records_an_exception_as_an_error_and_reraises_it() -> None:
    error = ValueError("bad header in a.wfm")

    async def work(m: BatchMetrics) -> None:
        async with m.track("a.wfm") as item:
            item.samples = 10
            raise error

    async with BatchMetrics() as m:
        with pytest.raises(ValueError, match="bad header") as info:
            await work(m)
        assert info.value is error
    row = m.get_file_metrics()[0]
    assert (row["status"], row["error_type"], row["error_message"]) == (
        "error", "ValueError", "bad header in a.wfm")
    summary = m.summary()
    assert (summary.error_count, summary.errors.by_type) == (1, {"ValueError": 1})
    assert summary.total_samples == 0  # an error's counters are not successful totals


@pytest.mark.asyncio
async def test_track_skip_records_a_skip_with_its_reason() -> None:
    async with BatchMetrics() as m, m.track("a.wfm") as item:
        item.skip("duplicate")
    row = m.get_file_metrics()[0]
    assert (row["status"], row["error_message"]) == ("skipped", "duplicate")
    assert m.summary().skip_count == 1


@pytest.mark.asyncio
async def test_cancelled_track_block_records_nothing() -> None:
    async with BatchMetrics() as m:
        with anyio.CancelScope() as scope:
            async with m.track("a.wfm"):
                scope.cancel()
                await anyio.sleep(1)
        with anyio.move_on_after(0.01):
            async with m.track("b.wfm"):
                await anyio.sleep(1)
        snap = await m.snapshot()
        assert snap.total_files == 0
        assert snap.in_flight == 0
    assert m.summary().total_files == 0


@pytest.mark.asyncio
async def test_in_flight_counts_open_track_blocks() -> None:
    async with BatchMetrics() as m:
        assert (await m.snapshot()).in_flight == 0
        async with m.track("a.wfm"):
            assert (await m.snapshot()).in_flight == 1
            async with m.track("b.wfm"):
                assert (await m.snapshot()).in_flight == 2
            assert (await m.snapshot()).in_flight == 1
        assert (await m.snapshot()).in_flight == 0
    assert m.summary().total_files == 2


# -- shutdown drains ---------------------------------------------------------------------


@pytest.mark.asyncio
async def test_events_recorded_right_before_exit_are_all_counted() -> None:
    async with BatchMetrics(buffer_size=64) as m:
        for i in range(10_000):
            await m.record_file(f"f{i}", duration=0.001, samples=2)
    summary = m.summary()
    assert (summary.total_files, summary.total_samples) == (10_000, 20_000)
    assert len(m.get_file_metrics()) == 10_000


class _Producers:
    """Producers that record until cancelled, counting the calls that returned.

    They never yield on their own: a producer is suspended only inside ``record_file``,
    waiting for room in the buffer, so a cancellation lands there.
    """

    def __init__(self, m: BatchMetrics, n: int, enough: int) -> None:
        self.m = m
        self.returned = [0] * n
        self.total = 0
        self.cancelled_in_record = 0
        self.enough = enough
        self.reached = anyio.Event()  # set once ``enough`` calls returned

    async def produce(self, i: int) -> None:
        while True:
            try:
                await self.m.record_file(f"p{i}-{self.returned[i]}", duration=0.001)
            except anyio.get_cancelled_exc_class():
                self.cancelled_in_record += 1
                raise
            self.returned[i] += 1  # counted only once the call returned
            self.total += 1
            if self.total == self.enough:
                self.reached.set()

    def start(self, tg: anyio.abc.TaskGroup) -> None:
        for i in range(len(self.returned)):
            tg.start_soon(self.produce, i)

    def expected_names(self) -> set[str]:
        return {f"p{i}-{j}" for i, count in enumerate(self.returned) for j in range(count)}


async def _cancel_producers_midway(*, whole_body: bool) -> tuple[BatchMetrics, _Producers]:
    """16 producers record until the test has seen 20,000 calls return, then are cancelled:
    only their task group, or the whole ``async with`` body of the batch."""
    m = BatchMetrics(buffer_size=256)
    producers = _Producers(m, 16, enough=20_000)
    with anyio.CancelScope() as outer:
        async with m, anyio.create_task_group() as tg:
            producers.start(tg)
            await producers.reached.wait()
            (outer if whole_body else tg.cancel_scope).cancel()
    assert outer.cancelled_caught == whole_body
    assert producers.cancelled_in_record > 0  # calls were cut off while waiting for room
    return m, producers


@pytest.mark.asyncio
@pytest.mark.parametrize("whole_body", [False, True], ids=["producers", "whole-body"])
async def test_cancelled_producers_lose_no_returned_call(whole_body: bool) -> None:
    m, producers = await _cancel_producers_midway(whole_body=whole_body)
    summary = m.summary()
    assert summary.state == ("cancelled" if whole_body else "finished")
    names = Counter(row["filename"] for row in m.get_file_metrics())
    assert producers.expected_names() <= names.keys()  # every returned call is counted
    assert names.most_common(1)[0][1] == 1  # and counted once
    assert summary.total_files == len(names)


@pytest.mark.asyncio
@pytest.mark.parametrize("whole_body", [False, True], ids=["producers", "whole-body"])
async def test_call_cancelled_while_waiting_for_room_records_nothing(whole_body: bool) -> None:
    m, producers = await _cancel_producers_midway(whole_body=whole_body)
    assert m.summary().total_files == producers.total
    names = {row["filename"] for row in m.get_file_metrics()}
    assert names == producers.expected_names()


@pytest.mark.asyncio
async def test_body_exception_propagates_unchanged_and_the_batch_is_failed() -> None:
    error = KeyError("boom")
    m = BatchMetrics(batch_id="job-fail")

    async def body() -> None:
        async with m:
            for i in range(1000):
                await m.record_file(f"f{i}", duration=0.001)
            raise error

    with pytest.raises(KeyError) as info:
        await body()
    assert info.type is KeyError  # not wrapped in an ExceptionGroup
    assert info.value is error
    summary = m.summary()
    assert summary.state == "failed"
    assert summary.total_files == 1000
    assert summary.end_time != ""


@pytest.mark.asyncio
async def test_cancelled_body_marks_the_batch_cancelled() -> None:
    m = BatchMetrics()
    with anyio.CancelScope() as scope:
        async with m:
            await m.record_file("a.wfm", duration=0.1)
            await m.record_skip("b.wfm")
            scope.cancel()
            await anyio.sleep(1)  # pragma: no cover
    summary = m.summary()
    assert summary.state == "cancelled"
    assert (summary.total_files, summary.skip_count) == (2, 1)


# -- many producers ----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_64_concurrent_producers_of_5000_events_lose_nothing() -> None:
    producers, per_producer = 64, 5_000

    async def produce(i: int) -> None:
        for j in range(per_producer):
            name = f"p{i:02d}/f{j:04d}"
            if j % 50 == 0:
                await m.record_error(name, "OSError" if j % 100 else "ValueError", "x", 0.01)
            elif j % 97 == 0:
                await m.record_skip(name, reason="dup")
            else:
                await m.record_file(name, duration=0.001 + (j % 13) * 1e-4, samples=3,
                                    bytes_processed=10)

    async with BatchMetrics(buffer_size=512) as m, anyio.create_task_group() as tg:
        for i in range(producers):
            tg.start_soon(produce, i)
    total = producers * per_producer
    errors = producers * len(range(0, per_producer, 50))
    value_errors = producers * len(range(0, per_producer, 100))
    skips = producers * sum(1 for j in range(per_producer) if j % 50 and j % 97 == 0)
    successes = total - errors - skips
    summary = m.summary()
    assert (summary.total_files, summary.error_count, summary.skip_count,
            summary.processed_count) == (total, errors, skips, successes)
    assert summary.errors.by_type == {"ValueError": value_errors,
                                      "OSError": errors - value_errors}
    assert (summary.total_samples, summary.total_bytes) == (3 * successes, 10 * successes)
    rows = m.get_file_metrics()
    assert len(rows) == total
    names = Counter(row["filename"] for row in rows)
    assert len(names) == total  # each filename exactly once
    assert names.most_common(1)[0][1] == 1


# -- the record path does not yield; backpressure does -----------------------------------


async def _run_with_ticker(m: BatchMetrics, n: int) -> tuple[int, int]:
    """Record ``n`` events while a second task counts how often it gets to run."""
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        await anyio.sleep(0.005)  # the ticker and the consumer are up and waiting
        before = ticks
        for i in range(n):
            await m.record_file(f"f{i}", duration=0.001)
        after = ticks
        tg.cancel_scope.cancel()
    return before, after


@pytest.mark.asyncio
async def test_record_path_does_not_yield_to_the_loop_per_event() -> None:
    async with BatchMetrics(buffer_size=4096) as m:
        before, after = await _run_with_ticker(m, 1_000)
        assert after == before  # no other task ran: no await suspended
        assert (await m.snapshot()).total_files == 1_000


@pytest.mark.asyncio
async def test_full_buffer_makes_the_producer_wait_and_loses_nothing() -> None:
    async with BatchMetrics(buffer_size=1) as m:
        before, after = await _run_with_ticker(m, 5_000)
        assert after > before  # the producer suspended: the other tasks ran
        assert (await m.snapshot()).total_files == 5_000
    assert len(m.get_file_metrics()) == 5_000


# -- keep_files=False ----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_keep_files_false_refuses_per_file_rows() -> None:
    async with BatchMetrics(keep_files=False) as m:
        await m.record_file("a.wfm", duration=0.1)
    with pytest.raises(RuntimeError, match="keep_files"):
        m.get_file_metrics()
    assert m.summary().total_files == 1


@pytest.mark.asyncio
async def test_keep_files_false_memory_does_not_grow_with_files() -> None:
    durations = [0.001 * (1 + k % 97) for k in range(1000)]  # a fixed spread of durations
    async with BatchMetrics(keep_files=False, buffer_size=4096) as m:
        for i in range(5_000):  # warm up: every bucket, error type and slot exists
            await m.record_file(f"warm/{i}", duration=durations[i % 1000], samples=i,
                                bytes_processed=i)
            if i % 100 == 0:
                await m.record_error(f"warm/e{i}", "OSError", "disk")
        await m.snapshot()
        gc.collect()
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            for i in range(100_000):
                await m.record_file(f"run/{i}", duration=durations[i % 1000], samples=i,
                                    bytes_processed=i)
                if i % 100 == 0:
                    await m.record_error(f"run/e{i}", "OSError", "disk")
            await m.snapshot()
            gc.collect()
            growth = tracemalloc.get_traced_memory()[0] - base
        finally:
            tracemalloc.stop()
        assert (await m.snapshot()).total_files == 5_050 + 101_000
    assert growth < 64 * 1024, growth


@pytest.mark.asyncio
async def test_the_exit_keeps_its_shutdown_timeout_and_says_it_timed_out() -> None:
    m = BatchMetrics("hung", sinks=[HungSink()], shutdown_timeout=1.0)
    t0 = anyio.current_time()
    with pytest.raises(TimeoutError, match=r"'hung' did not finish draining within 1\.0 s"):
        async with m:
            await m.record_file("a.wfm", duration=0.1)
    assert anyio.current_time() - t0 < 1.5  # one deadline for draining and closing the sinks
    assert m.summary().state == "failed"  # as the exit raised, and as the store would say


@pytest.mark.asyncio
async def test_a_sink_whose_close_hangs_stops_no_other_sink_from_closing(tmp_path: Path) -> None:
    log = tmp_path / "files.jsonl"
    sink = JsonlSink(log)
    m = BatchMetrics("close", sinks=[HungOnClose(), sink], shutdown_timeout=0.5, interval=60)
    # every event was folded: the message says the close, not the drain, is stuck
    with pytest.raises(TimeoutError,  # noqa: PT012
                       match=r"finished draining but its sinks did not close within 0\.5 s"):
        async with m:
            for i in range(100):
                await m.record_file(f"f{i}", duration=0.1)
    # past the deadline, the sinks not closed yet get the short grace that follows it
    assert len(log.read_text(encoding="utf-8").splitlines()) == 100
    with pytest.raises(RuntimeError, match="is closed"):
        await sink.write([])


@pytest.mark.asyncio
async def test_after_the_consumer_failed_every_record_call_raises() -> None:
    # no call may return as if recorded once the consumer is gone
    m = BatchMetrics("dead", sinks=[FailingSink()])
    returned = 0
    with pytest.raises(RuntimeError, match="consumer of batch 'dead' failed: OSError"):  # noqa: PT012
        async with m:
            with pytest.raises(RuntimeError, match="its consumer failed"):  # noqa: PT012
                for i in range(10_000):
                    await m.record_file(f"f{i}.wfm", duration=0.1)
                    returned += 1
                    await anyio.lowlevel.checkpoint()
    # the calls that returned are the ones the consumer folded; the next one raised
    assert 0 < returned < 10_000
    assert m.summary().total_files == returned


@pytest.mark.asyncio
async def test_the_timeout_is_what_is_raised_when_a_sink_also_fails_to_close() -> None:
    m = BatchMetrics("both", sinks=[HungSink(), FailsToClose()], shutdown_timeout=0.5)
    with pytest.raises(TimeoutError) as caught:
        async with m:
            await m.record_file("a.wfm", duration=0.1)
    assert any("OSError" in note for note in caught.value.__notes__)


@pytest.mark.asyncio
@pytest.mark.parametrize("where", ["write", "aclose"])
async def test_a_sinks_system_exit_goes_on_as_it_is(where: str) -> None:
    # it used to come out as RuntimeError("the consumer ... failed: SystemExit(3)")
    class Exiting:
        async def write(self, records: object) -> None:
            if where == "write":
                raise SystemExit(3)

        async def flush(self) -> None:
            pass

        async def aclose(self) -> None:
            if where == "aclose":
                raise SystemExit(3)

    with pytest.raises(SystemExit) as caught:
        async with BatchMetrics("exiting", sinks=[Exiting()]) as m:
            await m.record_file("a.wfm", duration=0.1)
    assert caught.value.code == 3


@pytest.mark.asyncio
async def test_a_failed_summary_file_is_not_hidden_by_a_failed_sink(tmp_path: Path) -> None:
    folder = tmp_path / "gone-by-the-exit"
    folder.mkdir()
    with pytest.raises(RuntimeError, match="consumer of batch 'both' failed") as caught:  # noqa: PT012
        async with BatchMetrics("both", sinks=[FailingSink()], summary_path=folder /
                                "summary.json", interval=3600) as m:
            await m.record_file("a.wfm", duration=0.1)
            folder.rmdir()
    assert any("could not write" in note and "summary.json" in note
               for note in caught.value.__notes__)


@pytest.mark.asyncio
async def test_a_batch_that_is_starting_says_new_not_finishing(tmp_path: Path) -> None:
    # while the start awaited (path checks, the history), the state said "finishing"
    # and a record call was told the batch "is finishing"
    m = BatchMetrics("starting", store=tmp_path / "h.db", summary_path=tmp_path / "s.json")
    after_new: list[str] = []
    refusals: set[str] = set()
    watched = anyio.Event()

    async def watch() -> None:
        while (state := m.summary().state) == "new":
            try:
                await m.record_file("early.wfm", duration=0.1)
            except RuntimeError as exc:
                refusals.add(str(exc).split(": ", 1)[1])
            await anyio.lowlevel.checkpoint()
        after_new.append(state)
        watched.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        await anyio.lowlevel.checkpoint()
        async with m:
            await watched.wait()
    assert after_new == ["running"]
    assert "it is still starting: record inside the `async with metrics:` block" in refusals


@pytest.mark.asyncio
async def test_a_snapshot_during_the_exit_waits_for_the_drain() -> None:
    # snapshot() called while the exit drains (or caught by the exit mid-send) returned
    # what was folded so far, not every call that had returned
    metrics = BatchMetrics("exiting", buffer_size=256, sinks=[SlowSink()])
    seen: list[int] = []

    async def watch() -> None:
        while metrics.state.value != "finishing":  # polls the state
            await anyio.lowlevel.checkpoint()
        seen.append((await metrics.snapshot()).total_files)

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        async with metrics:
            for i in range(3000):
                await metrics.record_file(f"f{i}", duration=0.1)
    assert seen == [3000]


@pytest.mark.asyncio
async def test_cancelled_snapshots_leave_nothing_behind() -> None:
    # a snapshot cancelled while its marker waited for room kept the marker for good
    async def produce(m: BatchMetrics) -> None:
        for i in range(3000):
            await m.record_file(f"f{i}", duration=0.1)

    async with anyio.create_task_group() as tg, BatchMetrics(
            "cancelled", buffer_size=1, sinks=[SlowSink()]) as m:
        tg.start_soon(produce, m)
        for _ in range(100):
            with anyio.move_on_after(0.0005):
                await m.snapshot()
        await anyio.sleep(0.05)
    assert len(m._markers) == 0  # each marker was taken back or used
    assert m.summary().total_files == 3000


@pytest.mark.asyncio
async def test_a_snapshot_while_the_batch_starts_does_not_wait_for_an_exit(
        tmp_path: Path) -> None:
    # snapshot() waits for the drain only once the exit has begun: during a start that
    # then fails, there is no consumer to wait for
    class FailingStart(Store):
        async def begin(self, metrics: BatchMetrics) -> None:
            await anyio.sleep(0.3)
            raise OSError("cannot begin")

    m = BatchMetrics("starting", store=FailingStart(tmp_path / "h.db"))
    states: list[str] = []

    async def snap() -> None:
        await anyio.sleep(0.1)  # the start is under way
        with anyio.fail_after(5):
            states.append((await m.snapshot()).state)

    async with anyio.create_task_group() as tg:
        tg.start_soon(snap)
        with pytest.raises(OSError, match="cannot begin"):
            async with m:
                pass
    assert len(states) == 1


@pytest.mark.asyncio
async def test_a_per_file_time_limit_inside_track_counts_the_file_as_an_error() -> None:
    # as the README advises: a limit around the block cancels it (nothing recorded),
    # a limit inside it ends the file with TimeoutError
    async with BatchMetrics("limits") as m:
        for i, limit in enumerate(("anyio", "asyncio", "anyio")):
            with contextlib.suppress(TimeoutError):
                async with m.track(f"f{i}.wfm"):
                    if limit == "anyio":
                        with anyio.fail_after(0.01):
                            await anyio.sleep(5)
                    else:
                        async with asyncio.timeout(0.01):
                            await anyio.sleep(5)
    s = m.summary()
    assert (s.total_files, s.error_count) == (3, 3)
    assert s.errors.by_type == {"TimeoutError": 3}


@pytest.mark.asyncio
async def test_events_buffered_when_the_consumer_failed_are_counted_in_its_error() -> None:
    # calls that returned before the failure, still waiting in the buffer, were lost
    # without a word: the error now says how many
    returned = 0
    m = BatchMetrics("full-disk", sinks=[FailsAfterAWhile()], buffer_size=100_000)
    with pytest.raises(RuntimeError, match="consumer of batch 'full-disk' failed") as caught:  # noqa: PT012
        async with m:
            with contextlib.suppress(RuntimeError):  # refused once the consumer is gone
                for i in range(100_000):
                    await m.record_file(f"f{i}.wfm", duration=0.01)
                    returned += 1
                    if i % 100 == 0:
                        await anyio.sleep(0.001)
    message = str(caught.value)
    assert message.startswith("the consumer of batch 'full-disk' failed: OSError: disk full; ")
    uncounted = int(message.split("; ")[1].split()[0])
    assert uncounted > 0
    assert m.summary().total_files + uncounted == returned


def _uncounted(error: BaseException) -> int:
    found = re.search(r"; (\d+) events recorded before that were never counted", str(error))
    return int(found.group(1)) if found else 0


@pytest.mark.asyncio
async def test_events_behind_a_snapshot_or_from_threads_are_counted_when_lost() -> None:
    # lost events after a snapshot's marker, or still in the threads' inbox, were left
    # out of the count of those never counted
    returned = 0
    m = BatchMetrics("lost", sinks=[SecondWriteFails()], interval=10)

    async def snapshot() -> None:
        with contextlib.suppress(RuntimeError):  # the consumer fails meanwhile
            await m.snapshot()

    with pytest.raises(RuntimeError, match="consumer of batch 'lost' failed") as caught:  # noqa: PT012
        async with m, anyio.create_task_group() as tg:
            await m.record_file("first", duration=0.01)
            returned += 1
            await anyio.sleep(0.05)  # the consumer is in the slow first write
            for i in range(300):
                await m.record_file(f"a{i}", duration=0.01)
                returned += 1
            tg.start_soon(snapshot)
            await anyio.sleep(0.01)
            for i in range(300):  # behind the snapshot's marker
                await m.record_file(f"b{i}", duration=0.01)
                returned += 1
    assert _uncounted(caught.value) > 0
    assert m.summary().total_files + _uncounted(caught.value) == returned

    from_threads = 0
    m = BatchMetrics("lost-threads", sinks=[SecondWriteFails()], buffer_size=256, interval=10)

    def work() -> None:
        nonlocal from_threads
        with contextlib.suppress(RuntimeError):  # refused once the consumer is gone
            for i in range(100_000):
                m.record_file_threadsafe(f"t{i}", duration=0.01)
                from_threads += 1

    with pytest.raises(RuntimeError, match="consumer of batch 'lost-threads'") as caught:
        async with m:
            await anyio.to_thread.run_sync(work)
    assert m.summary().total_files + _uncounted(caught.value) == from_threads


def test_a_batch_entered_without_an_asyncio_loop_says_it_needs_asyncio() -> None:
    # under trio it failed with a bare "no running event loop" from deep in the start
    m = BatchMetrics("elsewhere")
    entering = m.__aenter__()
    with pytest.raises(RuntimeError, match="batchmetrics runs on asyncio"):
        entering.send(None)  # a coroutine driven by hand: no asyncio loop runs
    assert m.state.value == "new"  # nothing started
    # the calls a watcher makes before or without entering: live() and wait_finished()
    # waited forever for a start that could not come, exports failed deep in aiofiles
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: anext(m.live(0.1)), m.wait_finished, m.snapshot,
        lambda: m.export_json("x.json"), lambda: m.export_csv("x.csv")]
    for call in calls:
        with pytest.raises(RuntimeError, match="batchmetrics runs on asyncio"):
            cast("Coroutine[object, None, object]", call()).send(None)


@pytest.mark.asyncio
@pytest.mark.parametrize("how", ["asyncio.timeout", "Task.cancel"])
async def test_asyncio_cancelling_the_exit_still_leaves_complete_outputs(
        tmp_path: Path, how: str) -> None:
    # asyncio's own cancellation passes anyio's shield: it cut the exit off halfway, the
    # summary file unwritten, the history left "running" with no rows
    sink, summary, db = SlowSink(pause=0.3), tmp_path / "summary.json", tmp_path / "h.db"
    m = BatchMetrics("cut", sinks=[sink], summary_path=summary, store=db, store_files=True)

    async def run() -> None:
        async with m:
            for i in range(100):
                await m.record_file(f"f{i}.wfm", duration=0.01)
            if how == "Task.cancel":
                task = asyncio.current_task()
                assert task is not None
                asyncio.get_running_loop().call_later(0.1, task.cancel)

    if how == "asyncio.timeout":
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):  # the body ends at once: it expires in the exit
                await run()
    else:
        with pytest.raises(asyncio.CancelledError):
            await run()
    assert m.summary().state == "finished"  # every file went through
    assert sink.rows == 100
    assert json.loads(summary.read_text(encoding="utf-8"))["total_files"] == 100
    with History(db) as history:
        run_row = history.get("cut")
        assert run_row is not None
        assert (run_row.status, run_row.summary["total_files"]) == ("finished", 100)
        assert len(list(history.files("cut"))) == 100


# asyncio.run() ending while a batch runs in a task of its own: asyncio cancels every
# task left, the batch's consumer too, past anyio's shields
_SWEPT_BATCH = r"""
import asyncio, json, os, sys
from batchmetrics import BatchMetrics, JsonlSink
folder = sys.argv[1]
made, returned = [], [0]

async def batch():
    m = BatchMetrics("swept", buffer_size=200_000, store=os.path.join(folder, "h.db"),
                     sinks=[JsonlSink(os.path.join(folder, "files.jsonl"))],
                     summary_path=os.path.join(folder, "summary.json"), store_files=True)
    made.append(m)
    async with m:
        while True:
            await m.record_file(f"f{returned[0]}.wfm", duration=0.01)
            returned[0] += 1
            if returned[0] % 50_000 == 0:
                await asyncio.sleep(0)

async def main():
    asyncio.create_task(batch())
    await asyncio.sleep(0.3)
    raise RuntimeError("main gave up")

try:
    asyncio.run(main())
except RuntimeError:
    pass
print(json.dumps({"returned": returned[0], "state": made[0].summary().state,
                  "total": made[0].summary().total_files}))
"""


def test_asyncio_run_ending_under_a_running_batch_counts_or_reports_every_event(
        tmp_path: Path) -> None:
    # the history stayed "running" with no total, and events buffered for the consumer
    # were dropped without a word
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _SWEPT_BATCH, str(tmp_path)],
                          capture_output=True, text=True, timeout=120, check=True)
    out = json.loads(done.stdout)
    lost = re.search(r"(\d+) events recorded before that were never counted", done.stderr)
    assert out["total"] + (int(lost.group(1)) if lost else 0) == out["returned"], done.stderr
    assert out["state"] == "cancelled"
    lines = (tmp_path / "files.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == out["total"]
    summary = json.loads((tmp_path / "summary.json").read_text(encoding="utf-8"))
    assert (summary["state"], summary["total_files"]) == ("cancelled", out["total"])
    with History(tmp_path / "h.db") as history:
        run = history.get("swept")
        assert run is not None
        assert (run.status, run.summary["total_files"]) == ("cancelled", out["total"])
        assert len(list(history.files("swept"))) == out["total"]


# asyncio.run() ending while the consumer waits in a user sink's write: the outputs
# after that sink must still get the rows the aggregate counted
_CUT_IN_A_SINK = r"""
import asyncio, json, os, sys
from batchmetrics import BatchMetrics, History, JsonlSink

class Stuck:  # a user's sink whose write waits (a slow network), as asyncio.run ends
    def __init__(self):
        self.writing = asyncio.Event()
    async def write(self, records):
        self.writing.set()
        await asyncio.Event().wait()
    async def flush(self):
        pass
    async def aclose(self):
        pass

def once(folder):
    made = []
    async def batch(stuck):
        m = BatchMetrics("cut", store=os.path.join(folder, "h.db"), store_files=True,
                         sinks=[stuck, JsonlSink(os.path.join(folder, "files.jsonl"))])
        made.append(m)
        async with m:
            for i in range(1000):
                await m.record_file(f"f{i}.wfm", duration=0.01)
            await asyncio.Event().wait()
    async def main():
        stuck = Stuck()
        asyncio.create_task(batch(stuck))
        await stuck.writing.wait()  # the consumer has folded the rows and waits in it
        raise RuntimeError("main gave up")
    try:
        asyncio.run(main())
    except RuntimeError:
        pass
    with open(os.path.join(folder, "files.jsonl")) as f:
        lines = len(f.readlines())
    with History(os.path.join(folder, "h.db")) as h:
        stored = len(list(h.files("cut")))
    return made[0].summary().total_files, lines, stored

# asyncio cancels the tasks left in the order of a set: the consumer may come first
print(json.dumps([once(os.path.join(sys.argv[1], str(k)))
                  for k in range(6) if not os.mkdir(os.path.join(sys.argv[1], str(k)))]))
"""


def test_outputs_after_a_sink_cut_off_by_asyncio_run_still_get_the_counted_rows(
        tmp_path: Path) -> None:
    # the JSONL sink and the history missed every row of the fold whose write was cut
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _CUT_IN_A_SINK, str(tmp_path)],
                          capture_output=True, text=True, timeout=120, check=True)
    for total, lines, stored in json.loads(done.stdout):
        assert total == 1000, done.stderr
        assert (lines, stored) == (total, total), done.stderr


class _StuckOnSecondWrite:
    """A user's sink whose second write never ends (a hung network call)."""

    def __init__(self) -> None:
        self.calls = 0

    async def write(self, records: object) -> None:
        self.calls += 1
        if self.calls == 2:
            await anyio.sleep_forever()

    async def flush(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


async def _record_1000_around_a_first_write(m: BatchMetrics) -> None:
    """Run ``m`` over 1,000 files: 500, folded (the sinks' first write is done), 500 more."""
    async with m:
        for i in range(500):
            await m.record_file(f"f{i}.wfm", duration=0.01)
        await m.snapshot()
        for i in range(500, 1000):
            await m.record_file(f"f{i}.wfm", duration=0.01)


@pytest.mark.asyncio
async def test_a_sink_stuck_past_the_exit_deadline_leaves_the_rows_to_the_sinks_after_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # the store had let the run go at the deadline: handing it the rows raised
    # "not being recorded" in place of the cancellation, logged as the consumer failing
    log = tmp_path / "files.jsonl"
    m = BatchMetrics("stuck", store=tmp_path / "h.db", store_files=True, shutdown_timeout=1,
                     sinks=[_StuckOnSecondWrite(), JsonlSink(log)])

    with pytest.raises(TimeoutError):
        await _record_1000_around_a_first_write(m)
    assert m.summary().total_files == 1000
    assert len(log.read_text(encoding="utf-8").splitlines()) == 1000
    assert "not being recorded" not in caplog.text
    assert "missed 500 rows of batch 'stuck'" in caplog.text  # the store: let go already


class _ExitsOnSecondWrite:
    """A user's sink in whose second write the process is told to stop (SystemExit, as a
    second Ctrl-C raises KeyboardInterrupt wherever the code is)."""

    def __init__(self) -> None:
        self.writes = 0

    async def write(self, records: object) -> None:
        self.writes += 1
        if self.writes == 2:
            raise SystemExit(3)

    async def flush(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


@pytest.mark.asyncio
async def test_an_interrupt_in_a_sinks_write_leaves_the_rows_to_the_outputs_after_it(
        tmp_path: Path) -> None:
    # the rows the summary counted went to neither the sinks after it nor the history
    log, db = tmp_path / "files.jsonl", tmp_path / "h.db"
    m = BatchMetrics("hit", store=db, store_files=True,
                     sinks=[_ExitsOnSecondWrite(), JsonlSink(log)])

    with pytest.raises(SystemExit):
        await _record_1000_around_a_first_write(m)
    counted = m.summary().total_files
    assert counted == 1000
    assert len(log.read_text(encoding="utf-8").splitlines()) == counted
    with History(db) as history:
        assert len(list(history.files("hit"))) == counted


@pytest.mark.asyncio
async def test_a_second_enter_while_the_first_is_starting_is_refused(tmp_path: Path) -> None:
    m = BatchMetrics("twice", summary_path=tmp_path / "s.json")
    release = anyio.Event()

    async def first() -> None:
        async with m:
            await release.wait()

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            await anyio.lowlevel.checkpoint()
            assert m.summary().state == "new"
            try:
                with pytest.raises(RuntimeError, match="already entered"):
                    await m.__aenter__()
            finally:
                release.set()


@pytest.mark.asyncio
async def test_a_batch_in_an_async_generator_closed_early_is_cancelled_not_failed() -> None:
    # a reader that stops early (break, then aclose) is not a failure of the batch
    m = BatchMetrics("gen", keep_files=True)

    async def processed() -> AsyncGenerator[str, None]:
        async with m:
            for i in range(100):
                await m.record_file(f"f{i}.wfm", duration=0.01)
                yield f"f{i}.wfm"

    async with contextlib.aclosing(processed()) as files:
        async for name in files:
            if name == "f2.wfm":
                break
    assert (m.summary().state, m.summary().total_files) == ("cancelled", 3)


_LEFT_OPEN = r"""
import asyncio, contextlib, sys
from batchmetrics import BatchMetrics

class SlowSink:
    async def write(self, records): await asyncio.sleep(1.0)
    async def flush(self): pass
    async def aclose(self): pass

stack = contextlib.AsyncExitStack()

async def main():
    sinks = [SlowSink()] if sys.argv[1] == "in a write" else []
    m = await stack.enter_async_context(BatchMetrics("left-open", sinks=sinks))
    await m.record_file("a.wfm", duration=0.1)  # never exited: main() just returns
    await asyncio.sleep(0.1)

asyncio.run(main())
print("returned")
"""


@pytest.mark.parametrize("consumer", ["waiting", "in a write"])
def test_asyncio_run_returns_when_a_batch_was_left_open(consumer: str) -> None:
    # the consumer outlived asyncio.run's cancellation, waiting for an exit that never
    # came: asyncio.run never returned
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _LEFT_OPEN, consumer], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.stdout.strip() == "returned", done.stderr


@pytest.mark.asyncio
async def test_an_asyncio_timeout_during_the_exit_of_a_failed_body_still_times_out() -> None:
    # the body's error went on and the timeout's cancellation was swallowed: the caller
    # caught the error, retried, and its deadline never came
    sink = SlowSink(pause=0.3)
    with pytest.raises(TimeoutError) as caught:  # noqa: PT012
        async with asyncio.timeout(0.1):
            async with BatchMetrics("failing", sinks=[sink]) as m:
                await m.record_file("a.wfm", duration=0.1)
                raise ValueError("bad file")
    assert isinstance(caught.value.__context__, asyncio.CancelledError)
    assert isinstance(caught.value.__context__.__context__, ValueError)
    assert sink.rows == 1  # the exit still drained
