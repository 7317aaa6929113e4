"""Recording from worker threads and sync code, and the @timed decorator."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
import pytest

from batchmetrics import BatchMetrics

from .sinks import FailingSink, SlowFirstWrite


@pytest.mark.asyncio
async def test_eight_threads_of_ten_thousand_records_lose_nothing() -> None:
    async with BatchMetrics("threads", buffer_size=1024) as m:

        def work(k: int) -> None:
            for i in range(10_000):
                m.record_file_threadsafe(f"t{k}/{i}", duration=0.001, samples=1)

        limiter = anyio.CapacityLimiter(8)

        async def in_thread(k: int) -> None:
            await anyio.to_thread.run_sync(work, k, limiter=limiter)

        async with anyio.create_task_group() as tg:
            for k in range(8):
                tg.start_soon(in_thread, k)
    summary = m.summary()
    assert summary.total_files == 80_000
    assert summary.total_samples == 80_000
    names = {row["filename"] for row in m.get_file_metrics()}
    assert len(names) == 80_000


@pytest.mark.asyncio
async def test_a_full_inbox_blocks_the_thread_not_the_loop() -> None:
    ticks = 0
    done = threading.Event()
    async with BatchMetrics("pressure", buffer_size=4) as m:

        def work() -> None:
            for i in range(3_000):
                m.record_file_threadsafe(f"f{i}", duration=0.001)
            done.set()

        async def ticker() -> None:
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await anyio.sleep(0.001)

        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker)
            await anyio.to_thread.run_sync(work)
    assert m.summary().total_files == 3_000
    assert ticks > 10  # the loop kept running while the thread waited for room


@pytest.mark.asyncio
async def test_a_plain_thread_pool_can_record_and_snapshot_sees_it() -> None:
    async with BatchMetrics("pool") as m:
        all_done = anyio.Event()
        token = anyio.lowlevel.current_token()

        def work(i: int) -> None:
            m.record_file_threadsafe(f"f{i}", duration=0.01)

        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(work, i) for i in range(200)]

            def signal_when_all_returned() -> None:
                for f in futures:
                    f.result()
                anyio.from_thread.run_sync(all_done.set, token=token)

            pool.submit(signal_when_all_returned)
            await all_done.wait()
        summary = await m.snapshot()  # every thread call that returned is in it
        assert summary.total_files == 200


@pytest.mark.asyncio
async def test_track_threadsafe_times_success_errors_and_skips() -> None:
    async with BatchMetrics("tt") as m:

        def work() -> None:
            with m.track_threadsafe("ok.wfm") as item:
                # the file is being worked on: a snapshot taken meanwhile counts it
                assert anyio.from_thread.run(m.snapshot).in_flight == 1
                item.samples = 5
                item.bytes_processed = 10
            with pytest.raises(KeyError), m.track_threadsafe("bad.wfm"):
                raise KeyError("missing")
            with m.track_threadsafe(Path("dup.wfm")) as item:
                item.skip("duplicate")

        await anyio.to_thread.run_sync(work)
    rows = {r["filename"]: r for r in m.get_file_metrics()}
    assert rows["ok.wfm"]["status"] == "success"
    assert rows["ok.wfm"]["samples"] == 5
    assert rows["bad.wfm"]["error_type"] == "KeyError"
    assert rows["bad.wfm"]["error_message"] == "'missing'"
    assert rows["dup.wfm"]["status"] == "skipped"
    assert m.summary().in_flight == 0


@pytest.mark.asyncio
async def test_bad_arguments_raise_in_the_calling_thread() -> None:
    async with BatchMetrics("bad") as m:

        def work() -> list[str]:
            errors = []
            for kwargs in ({"duration": -1.0}, {"duration": 0.1, "samples": 1.5},
                           {"duration": 0.1, "status": "done"}):
                try:
                    m.record_file_threadsafe("f", **kwargs)
                except (TypeError, ValueError) as exc:
                    errors.append(str(exc))
            try:
                m.record_error_threadsafe("f", 3, "x")  # type: ignore[arg-type]
            except TypeError as exc:
                errors.append(str(exc))
            return errors

        errors = await anyio.to_thread.run_sync(work)
        assert len(errors) == 4
        assert "duration" in errors[0]
        assert "samples" in errors[1]
        assert "status" in errors[2]
        assert "error_type" in errors[3]
        assert (await m.snapshot()).total_files == 0


@pytest.mark.asyncio
async def test_threadsafe_recording_on_the_loop_thread_is_refused() -> None:
    ran = False
    async with BatchMetrics("loop") as m:
        with pytest.raises(RuntimeError, match=r"record_file_threadsafe\(\) was called on "
                           r"the event loop's thread.*use `await metrics.record_file"):
            m.record_file_threadsafe("f", duration=0.1)
        # each names the call to use instead
        with pytest.raises(RuntimeError, match=r"use `await metrics\.record_error"):
            m.record_error_threadsafe("f", "OSError", "gone")
        with pytest.raises(RuntimeError, match=r"use `await metrics\.record_skip"):
            m.record_skip_threadsafe("f", reason="dup")
        # refused as it starts, not after the block ran
        with pytest.raises(RuntimeError, match=r"use `async with metrics\.track"), \
                m.track_threadsafe("g"):
            ran = True
        assert (await m.snapshot()).total_files == 0
    assert not ran


@pytest.mark.asyncio
async def test_threads_recording_after_the_batch_finished_get_a_clear_error() -> None:
    async with BatchMetrics("late") as m:
        pass

    def work() -> None:
        m.record_skip_threadsafe("f", "late")

    with pytest.raises(RuntimeError, match="cannot record into batch 'late': it has finished"):
        await anyio.to_thread.run_sync(work)


@pytest.mark.asyncio
async def test_timed_decorator_records_each_call_like_track() -> None:
    async with BatchMetrics("timed") as m:

        @m.timed()
        async def process(path: str) -> int:
            await anyio.sleep(0.01)
            if path.startswith("bad"):
                raise ValueError(f"cannot parse {path}")
            return 1234  # taken as the file's samples

        assert await process("good.wfm") == 1234
        with pytest.raises(ValueError, match="cannot parse"):
            await process("bad.wfm")

        @m.timed(filename=lambda job: job["name"])
        async def process_job(job: dict[str, str]) -> None:
            await anyio.lowlevel.checkpoint()

        await process_job({"name": "job-7"})

        class Decoder:  # a method decorated in its class body: the file comes after self
            @m.timed
            async def decode(self, path: Path) -> None:
                await anyio.lowlevel.checkpoint()

        await Decoder().decode(Path("shard") / "m.wfm")
        await Decoder().decode(path=Path("by-name.wfm"))  # passed by name, not position
        await process(path="kw.wfm")

        @m.timed
        async def keyword_only(*, path: str) -> None:
            await anyio.lowlevel.checkpoint()

        @m.timed
        async def with_default(path: str = "default.wfm") -> None:
            await anyio.lowlevel.checkpoint()

        await keyword_only(path="kw-only.wfm")
        await with_default()
    rows = {r["filename"]: r for r in m.get_file_metrics()}
    assert rows["by-name.wfm"]["status"] == rows["kw.wfm"]["status"] == "success"
    assert rows["kw-only.wfm"]["status"] == rows["default.wfm"]["status"] == "success"
    assert rows[str(Path("shard") / "m.wfm")]["status"] == "success"
    assert rows["good.wfm"]["samples"] == 1234
    assert rows["good.wfm"]["duration_seconds"] >= 0.01
    assert rows["bad.wfm"]["status"] == "error"
    assert rows["bad.wfm"]["error_type"] == "ValueError"
    assert rows["job-7"]["status"] == "success"


def _record_from_thread(m: BatchMetrics, n: int, pause: float = 0.0) -> None:
    for i in range(n):
        m.record_file_threadsafe(f"f{i}", duration=0.001)
        if pause:
            time.sleep(pause)


@pytest.mark.asyncio
async def test_cancelling_the_body_while_a_thread_records_neither_hangs_nor_loses() -> None:
    # The body waits for a worker thread that still records when the body is
    # cancelled; the inbox is small, so the thread depends on the loop emptying it.
    m = BatchMetrics("cancelled-with-thread", buffer_size=64, shutdown_timeout=5)
    with anyio.fail_after(30):
        with anyio.move_on_after(0.05):
            async with m:
                await anyio.to_thread.run_sync(_record_from_thread, m, 2000, 0.0002)
    assert m.summary().total_files == 2000


@pytest.mark.asyncio
async def test_events_from_threads_survive_a_cancelled_body_and_a_cancelled_snapshot() -> None:
    # The loop hands thread events to a full stream while the body, or a snapshot
    # under a timeout, is cancelled: what the threads recorded must all arrive.
    sink = SlowFirstWrite()
    m = BatchMetrics("body", sinks=[sink])
    with anyio.move_on_after(0.3):
        async with m:
            await anyio.to_thread.run_sync(_record_from_thread, m, 6000)
            await anyio.sleep(10)
    assert (m.summary().total_files, sink.rows) == (6000, 6000)

    sink = SlowFirstWrite()
    m = BatchMetrics("snapshot", sinks=[sink])
    async with m:
        await anyio.to_thread.run_sync(_record_from_thread, m, 6000)
        with anyio.move_on_after(0.1) as scope:
            await m.snapshot()
        assert scope.cancelled_caught
    assert (m.summary().total_files, sink.rows) == (6000, 6000)


@pytest.mark.asyncio
async def test_threads_learn_at_once_that_the_consumer_failed() -> None:
    m = BatchMetrics("dead", sinks=[FailingSink()], buffer_size=64)
    returned = 0

    def work() -> None:
        nonlocal returned
        for i in range(5000):
            m.record_file_threadsafe(f"f{i}", duration=0.001)
            returned += 1

    with anyio.fail_after(30), pytest.raises(RuntimeError, match="disk full"):  # noqa: PT012
        async with m:
            with pytest.raises(RuntimeError, match="its consumer failed: OSError"):
                await anyio.to_thread.run_sync(work)
    assert returned < 5000  # the calls after the failure raised instead of returning


@pytest.mark.asyncio
async def test_bare_timed_decorator_records_like_timed_with_parentheses() -> None:
    async with BatchMetrics("bare") as m:

        @m.timed
        async def process(path: str) -> int:
            await anyio.lowlevel.checkpoint()
            return 10

        assert await process("a.wfm") == 10
        assert await process("b.wfm") == 10
    rows = {r["filename"]: r["samples"] for r in m.get_file_metrics()}
    assert rows == {"a.wfm": 10, "b.wfm": 10}


@pytest.mark.asyncio
async def test_timed_wraps_async_callable_objects_and_refuses_plain_functions() -> None:
    class Process:
        async def __call__(self, path: str) -> int:
            await anyio.lowlevel.checkpoint()
            return 3

    class Inherited(Process):
        pass

    async with BatchMetrics("objects") as m:
        process = m.timed(Process())
        assert await process("a.wfm") == 3
        assert await m.timed(Inherited())("c.wfm") == 3

        # over a plain def (mypy says so too): it was taken as filename= and recorded nothing
        @m.timed  # type: ignore[arg-type]
        def plain(path: str) -> int:
            return 10

        with pytest.raises(TypeError, match=r"decorates an async function .*'b\.wfm'"):
            plain("b.wfm")  # type: ignore[unused-coroutine]
    rows = [(r["filename"], r["samples"]) for r in m.get_file_metrics()]
    assert rows == [("a.wfm", 3), ("c.wfm", 3)]


def test_timed_refuses_a_file_name_that_is_not_a_function() -> None:
    with pytest.raises(TypeError, match="filename must be a function"):
        BatchMetrics("x").timed("a.wfm")  # type: ignore[call-overload]


@pytest.mark.asyncio
async def test_awaiting_record_file_on_another_threads_event_loop_is_refused() -> None:
    # The stream is bound to the batch's loop: from another loop a send under
    # backpressure waited for ever. The call must be refused, naming the way to do it.
    outcome: list[BaseException | None] = []

    def other_loop() -> None:
        async def go() -> None:
            for i in range(5000):
                await m.record_file(f"o{i}", duration=0.001)

        try:
            anyio.run(go)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    with anyio.fail_after(20):
        async with BatchMetrics("wrong-loop", buffer_size=256, shutdown_timeout=5) as m:
            await anyio.to_thread.run_sync(other_loop, abandon_on_cancel=True)
            await m.record_file("mine.wfm", duration=0.1)  # the batch itself goes on
    assert isinstance(outcome[0], RuntimeError)
    assert "record_file_threadsafe" in str(outcome[0])
    assert m.summary().state == "finished"
    # no chunk was open, so its first call was refused: only the batch's own file counts
    assert m.summary().total_files == 1


@pytest.mark.asyncio
async def test_a_block_that_raises_after_the_batch_ended_keeps_its_own_exception() -> None:
    # the block's ValueError was replaced by "cannot record into batch": an
    # `except ValueError` around it no longer caught it
    m = BatchMetrics("ended")
    inside, ended = anyio.Event(), threading.Event()
    caught: dict[str, BaseException] = {}

    async def worker() -> None:
        try:
            async with m.track("async.wfm"):
                inside.set()
                await anyio.to_thread.run_sync(ended.wait)
                raise ValueError("decode failed")
        except BaseException as exc:  # what the caller would see
            caught["track"] = exc

    def thread_worker() -> None:
        try:
            with m.track_threadsafe("thread.wfm"):
                ended.wait()
                raise ValueError("decode failed")
        except BaseException as exc:
            caught["track_threadsafe"] = exc

    async with anyio.create_task_group() as tg:
        async with m:
            tg.start_soon(worker)
            await inside.wait()
            thread = threading.Thread(target=thread_worker)
            thread.start()
            await anyio.sleep(0.05)
        ended.set()
    thread.join()
    for kind, name in (("track", "async.wfm"), ("track_threadsafe", "thread.wfm")):
        exc = caught[kind]
        assert type(exc) is ValueError, (kind, exc)
        assert any(f"{name!r} was not recorded: cannot record into batch 'ended'" in note
                   for note in exc.__notes__), exc.__notes__
    with pytest.raises(RuntimeError, match="cannot record into batch 'ended'"):
        async with m.track("late.wfm"):
            pass


@pytest.mark.asyncio
async def test_timed_with_a_filename_function_on_a_function_without_parameters() -> None:
    async with BatchMetrics(keep_files=True) as m:
        @m.timed(lambda: "fixed.wfm")
        async def step() -> None:
            await anyio.lowlevel.checkpoint()

        await step()
    assert [r["filename"] for r in m.get_file_metrics()] == ["fixed.wfm"]


@pytest.mark.asyncio
async def test_timed_does_not_take_a_positional_only_file_from_a_keyword() -> None:
    async with BatchMetrics(keep_files=True) as m:
        @m.timed
        async def f(path: str = "d.wfm", /, **options: str) -> None:
            await anyio.lowlevel.checkpoint()

        await f(path="other.wfm")
    assert [r["filename"] for r in m.get_file_metrics()] == ["d.wfm"]


@pytest.mark.asyncio
async def test_timed_keyword_only_file_passed_by_position_records_nothing() -> None:
    async with BatchMetrics(keep_files=True) as m:
        @m.timed
        async def f(*, path: str) -> None:
            await anyio.lowlevel.checkpoint()

        with pytest.raises(TypeError, match="no file name"):
            await f("a.wfm")  # type: ignore[call-arg]
    assert m.get_file_metrics() == []
