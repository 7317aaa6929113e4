"""Streaming sinks, the live summary file, and what a cancelled batch leaves behind."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from batchmetrics import BatchMetrics, CsvSink, FileRecord, JsonlSink, _sinks
from batchmetrics._render import LOG_COLUMNS
from batchmetrics.testing import MemorySink

from .sinks import FailingSink, HungSink


async def _record_mix(metrics: BatchMetrics, n: int) -> None:
    for i in range(n):
        if i % 20 == 3:
            await metrics.record_error(f"dir/f{i}.wfm", "ValueError", f'bad "header" {i}',
                                       duration=0.01)
        elif i % 50 == 7:
            await metrics.record_skip(f"dir/f{i}.wfm", reason="duplicate")
        else:
            await metrics.record_file(f"dir/f{i}.wfm", duration=0.001 * (i % 13 + 1),
                                      samples=i, measurements=i % 5, bytes_processed=2 * i,
                                      memory_peak=i if i % 7 == 0 else None)


@pytest.mark.asyncio
async def test_jsonl_sink_logs_every_file_with_keep_files_off(tmp_path: Path) -> None:
    log = tmp_path / "files.jsonl"
    reference = BatchMetrics("ref")  # the same events, kept in memory, to compare with
    async with reference:
        await _record_mix(reference, 5000)
    async with BatchMetrics("log", keep_files=False, sinks=[JsonlSink(log)]) as m:
        await _record_mix(m, 5000)
    lines = log.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 5000
    rows = [json.loads(line) for line in lines]
    expected = reference.get_file_metrics()
    for row, want in zip(rows, expected, strict=True):
        assert tuple(row) == tuple(key for key in LOG_COLUMNS if key in row)
        assert isinstance(row.pop("end_ts"), float)  # recorded at another moment
        # the compact line is the export row without its timestamps, its derived rate,
        # and the optional fields that are None
        for key in ("start_time", "end_time", "samples_per_second"):
            want.pop(key)
        assert row == {key: value for key, value in want.items() if value is not None}


@pytest.mark.asyncio
async def test_jsonl_lines_agree_with_the_files_kept_in_the_same_batch(tmp_path: Path) -> None:
    compact, full = tmp_path / "compact.jsonl", tmp_path / "full.jsonl"
    async with BatchMetrics("both", sinks=[JsonlSink(compact), JsonlSink(full, full=True)]) as m:
        await _record_mix(m, 3000)
    kept = m.get_file_metrics()
    full_rows = [json.loads(line) for line in full.read_text(encoding="utf-8").splitlines()]
    assert full_rows == kept  # full=True: the export rows exactly, timestamps included
    for line, want in zip(compact.read_text(encoding="utf-8").splitlines(), kept, strict=True):
        row = json.loads(line)
        end = datetime.fromisoformat(want["end_time"]).timestamp()
        assert row["end_ts"] == pytest.approx(end, abs=1e-6)
        assert datetime.fromisoformat(want["start_time"]).timestamp() == pytest.approx(
            row["end_ts"] - row["duration_seconds"], abs=1e-6)
        if row["duration_seconds"] > 0:
            assert want["samples_per_second"] == row["samples"] / row["duration_seconds"]


@pytest.mark.asyncio
async def test_csv_sink_writes_a_header_and_one_row_per_file(tmp_path: Path) -> None:
    path = tmp_path / "files.csv"
    async with BatchMetrics("csv", keep_files=False, sinks=[CsvSink(path)]) as m:
        await _record_mix(m, 1200)
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1200
    assert rows[3]["status"] == "error"
    assert rows[3]["error_message"] == 'bad "header" 3'
    assert rows[7]["status"] == "skipped"
    assert rows[0]["memory_peak_bytes"] == "0"
    assert rows[1]["memory_peak_bytes"] == ""


@pytest.mark.asyncio
async def test_csv_sink_append_mode_adds_rows_under_the_one_header(tmp_path: Path) -> None:
    path = tmp_path / "all.csv"
    for run in range(2):  # a sink serves one batch: a new one on the same file for each
        async with BatchMetrics(f"run{run}", sinks=[CsvSink(path, append=True)]) as m:
            await _record_mix(m, 30)
    text = path.read_text(encoding="utf-8")
    header = text.splitlines()[0]
    assert header.startswith("filename,")
    assert text.splitlines().count(header) == 1  # not written again mid-file
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["filename"] for r in rows] == [f"dir/f{i}.wfm" for i in range(30)] * 2
    assert rows[30 + 3]["status"] == "error"
    assert rows[30 + 7]["status"] == "skipped"


@pytest.mark.asyncio
async def test_memory_sink_receives_records_in_order_and_is_closed() -> None:
    sink = MemorySink()
    async with BatchMetrics("mem", sinks=[sink], interval=0.05) as m:
        await _record_mix(m, 300)
        await anyio.sleep(0.15)  # at least one interval: the sink is flushed
    assert sink.closed
    assert sink.flushes >= 1
    assert sink.filenames == [f"dir/f{i}.wfm" for i in range(300)]
    assert all(isinstance(r, FileRecord) for r in sink.records)
    assert sink.records[3].status == "error"
    assert sink.records[3].error_type == "ValueError"
    assert sink.records[0].start_time == pytest.approx(sink.records[0].end_time - 0.001)


@pytest.mark.asyncio
async def test_sinks_are_flushed_on_the_interval_while_the_batch_runs(tmp_path: Path) -> None:
    log = tmp_path / "live.jsonl"
    async with BatchMetrics("flush", sinks=[JsonlSink(log)], interval=0.05) as m:
        await _record_mix(m, 100)
        await anyio.sleep(0.3)
        lines_while_running = log.read_text(encoding="utf-8").splitlines()
        assert len(lines_while_running) == 100
        assert all(json.loads(line) for line in lines_while_running)


@pytest.mark.asyncio
async def test_summary_file_is_rewritten_every_interval(tmp_path: Path) -> None:
    path = tmp_path / "summary.json"
    seen: list[dict[str, object]] = []
    async with BatchMetrics("sf", summary_path=path, interval=0.05) as m:
        for step in range(1, 7):
            await _record_mix(m, 50)
            with anyio.fail_after(5):  # the ticker rewrites it within an interval or so
                while True:
                    await anyio.sleep(0.02)
                    if path.exists():
                        current = json.loads(path.read_text(encoding="utf-8"))
                        if int(current["total_files"]) >= 50 * step:
                            break
            seen.append(current)
            assert current["state"] == "running"
    final = json.loads(path.read_text(encoding="utf-8"))
    counts = [int(str(s["total_files"])) for s in seen]
    assert counts == sorted(counts)
    assert len(set(counts)) == 6  # rewritten while the batch ran, not only at the end
    assert final == m.summary().to_dict()
    assert final["state"] == "finished"
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.asyncio
async def test_the_summary_file_ends_with_the_final_summary_however_the_ticker_is_timed(
        tmp_path: Path) -> None:
    # A periodic write still in its threads when the batch exits used to land after
    # the final one: the file then said "running", with older counts, for good.
    for run in range(60):
        path = tmp_path / f"summary-{run}.json"
        async with BatchMetrics("sf", summary_path=path, interval=0.001) as m:
            for i in range(run % 7 * 5 + 1):
                await m.record_file(f"f{i}.wfm", duration=0.1)
                if i % 5 == 0:
                    await anyio.sleep(0.0005 * (run % 4))
        assert json.loads(path.read_text(encoding="utf-8")) == m.summary().to_dict(), run


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.asyncio
async def test_a_failing_sink_leaves_the_others_complete_and_the_batch_failed(
        tmp_path: Path) -> None:
    # /dev/full: every write fails with ENOSPC. The CSV sink must still get every row
    # the aggregate counted, and the batch must say it failed, not finished.
    log, summary = tmp_path / "ok.csv", tmp_path / "summary.json"
    m = BatchMetrics("full", sinks=[JsonlSink("/dev/full", buffer_bytes=0), CsvSink(log)],
                     summary_path=summary, interval=0.01)
    with pytest.raises(RuntimeError, match="No space left on device"):  # noqa: PT012
        async with m:
            for i in range(1000):
                await m.record_file(f"f{i}.wfm", duration=0.1)
                if i % 50 == 0:
                    await anyio.sleep(0.005)
    with log.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == m.summary().total_files > 1
    assert m.summary().state == "failed"
    assert json.loads(summary.read_text(encoding="utf-8"))["state"] == "failed"


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.asyncio
async def test_a_sink_failing_only_as_it_closes_still_makes_the_batch_failed(
        tmp_path: Path) -> None:
    m = BatchMetrics("full-at-close", sinks=[JsonlSink("/dev/full")], interval=3600)
    with pytest.raises(RuntimeError, match="No space left on device"):
        async with m:
            await m.record_file("a.wfm", duration=0.1)  # buffered until the sink closes
    assert (m.summary().state, m.summary().total_files) == ("failed", 1)


@pytest.mark.asyncio
async def test_a_cancelled_batch_leaves_complete_logs_and_summary_file(tmp_path: Path) -> None:
    jsonl, csv_path, summary_path = (tmp_path / "f.jsonl", tmp_path / "f.csv",
                                     tmp_path / "summary.json")
    returned = 0
    metrics = BatchMetrics("cancelled", keep_files=False, buffer_size=64,
                           sinks=[JsonlSink(jsonl), CsvSink(csv_path)],
                           summary_path=summary_path, interval=10.0)

    async def producer(k: int) -> None:
        nonlocal returned
        i = 0
        while True:
            await metrics.record_file(f"p{k}-{i}", duration=0.001)
            returned += 1
            i += 1
            if i % 100 == 0:
                await anyio.lowlevel.checkpoint()

    with anyio.move_on_after(0.3):
        async with metrics, anyio.create_task_group() as tg:
            for k in range(4):
                tg.start_soon(producer, k)
    assert returned > 0
    summary = metrics.summary()
    assert summary.state == "cancelled"
    assert summary.total_files == returned
    assert len(jsonl.read_text(encoding="utf-8").splitlines()) == returned
    with csv_path.open(newline="", encoding="utf-8") as f:
        assert len(list(csv.DictReader(f))) == returned
    saved = json.loads(summary_path.read_text(encoding="utf-8"))
    assert saved["state"] == "cancelled"
    assert saved["total_files"] == returned


@pytest.mark.asyncio
async def test_a_failing_sink_surfaces_to_producers_and_at_exit() -> None:
    sink = FailingSink()
    metrics = BatchMetrics("broken", sinks=[sink], buffer_size=8)

    async def record_until_refused() -> None:
        for i in range(10_000):  # the consumer dies on its first batch
            await metrics.record_file(f"f{i}", duration=0.01)
            if i % 8 == 0:
                await anyio.lowlevel.checkpoint()

    async def run_batch() -> None:
        async with metrics:
            with pytest.raises(RuntimeError, match="consumer failed"):
                await record_until_refused()

    with pytest.raises(RuntimeError, match="consumer of batch 'broken' failed"):
        await run_batch()
    assert sink.closed


def test_an_object_that_is_not_a_sink_is_refused_with_its_name() -> None:
    with pytest.raises(TypeError, match=r"'nope' is not a sink"):
        BatchMetrics("x", sinks=["nope"])  # type: ignore[list-item]


@pytest.mark.asyncio
async def test_jsonl_sink_append_mode_keeps_earlier_runs(tmp_path: Path) -> None:
    log = tmp_path / "all.jsonl"
    for run in range(2):
        async with BatchMetrics(f"run{run}", sinks=[JsonlSink(log, append=True)]) as m:
            await _record_mix(m, 10)
    assert len(log.read_text(encoding="utf-8").splitlines()) == 20


@pytest.mark.asyncio
@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
async def test_a_write_that_fails_behind_the_consumer_is_raised_not_lost() -> None:
    # /dev/full refuses every write (ENOSPC); a small buffer makes the sink write
    # behind the consumer while the batch runs, and that failure must surface
    metrics = BatchMetrics("disk-full", sinks=[JsonlSink("/dev/full", buffer_bytes=1024)],
                           keep_files=False)
    with anyio.fail_after(10), pytest.raises(RuntimeError, match="disk-full") as caught:  # noqa: PT012
        async with metrics:
            for i in range(20_000):
                await metrics.record_file(f"f{i}.wfm", duration=0.01, samples=i)
                if i % 100 == 0:
                    await anyio.lowlevel.checkpoint()
    assert "No space left on device" in str(caught.value)  # the write's own error


@pytest.mark.asyncio
async def test_undecodable_file_names_are_written_back_as_their_own_bytes(tmp_path: Path) -> None:
    name = b"raw-\xff\xfe.wfm".decode("utf-8", "surrogateescape")  # as os.listdir gives it
    jsonl, csv_path, export = tmp_path / "f.jsonl", tmp_path / "f.csv", tmp_path / "e.csv"
    async with BatchMetrics("raw", sinks=[JsonlSink(jsonl), CsvSink(csv_path)]) as m:
        await m.record_file(name, duration=0.5, samples=3)
        await m.record_error("ok.wfm", "OSError", f"cannot open {name}")
    await m.export_csv(export)
    for path in (csv_path, export):
        assert b"raw-\xff\xfe.wfm" in path.read_bytes()
        with path.open(newline="", encoding="utf-8", errors="surrogateescape") as f:
            rows = list(csv.DictReader(f))
        assert [r["filename"] for r in rows] == [name, "ok.wfm"]
        assert rows[1]["error_message"] == f"cannot open {name}"
    lines = [json.loads(line) for line in jsonl.read_text(encoding="utf-8").split("\n")[:-1]]
    assert [row["filename"] for row in lines] == [name, "ok.wfm"]  # JSON escapes them



@pytest.mark.asyncio
async def test_a_lone_surrogate_no_bytes_give_loses_no_csv_row(tmp_path: Path) -> None:
    # "\ud800" (not from surrogateescape) failed the CSV sink's whole slice, valid rows
    # with it, and every export_csv of the batch
    odd = "odd-\ud800.wfm"
    sink_path, export = tmp_path / "f.csv", tmp_path / "e.csv"
    async with BatchMetrics("odd", sinks=[CsvSink(sink_path)]) as m:
        await m.record_file("ok.wfm", duration=0.5)
        await m.record_error(odd, "ValueError\udfff", "bad \ud800 header", duration=0.1)
        await m.record_file("after.wfm", duration=0.5)
    assert m.summary().state == "finished"
    await m.export_csv(export)
    for path in (sink_path, export):
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        assert [r["filename"] for r in rows] == ["ok.wfm", r"odd-\ud800.wfm", "after.wfm"]
        assert (rows[1]["error_type"], rows[1]["error_message"]) == (
            r"ValueError\udfff", r"bad \ud800 header")

def _records(n: int) -> list[FileRecord]:
    return [FileRecord(f"dir/f{i:05d}.wfm", 1_790_000_000.0 + i / 7, 0.001 * (i % 13 + 1),
                       i, i % 5, 2 * i, 0, None, None, None) for i in range(n)]


@pytest.mark.asyncio
async def test_a_sink_fed_one_record_at_a_time_writes_every_line_in_order(
        tmp_path: Path) -> None:
    # a slow pipeline hands the sink one record per batch: thousands of small pieces
    # wait in the buffer, more than one writev call may take, and all must land in order
    path = tmp_path / "one-by-one.jsonl"
    sink = JsonlSink(path, buffer_bytes=4 << 20)
    records = _records(5000)
    for record in records:
        await sink.write([record])
    await sink.aclose()
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["filename"] for line in lines] == [r.filename for r in records]
    assert sink.rows == 5000


@pytest.fixture(params=[CsvSink, JsonlSink])
def turning_sink(request: pytest.FixtureRequest, tmp_path: Path,
                 monkeypatch: pytest.MonkeyPatch) -> CsvSink | JsonlSink:
    """A file sink writing ``tmp_path / "out"`` that gives the event loop a turn after
    every slice of rows (``_TURN`` 0)."""
    monkeypatch.setattr(_sinks, "_TURN", 0.0)
    sink: CsvSink | JsonlSink = request.param(tmp_path / "out")
    return sink


@pytest.mark.asyncio
async def test_a_large_batch_gives_the_event_loop_turns_while_it_is_rendered(
        tmp_path: Path, turning_sink: CsvSink | JsonlSink) -> None:
    # a fold of 4,096 CSV rows held the loop for 40-140 ms: now it yields every _TURN
    # seconds
    sink = turning_sink
    records = _records(4096)
    turns = 0

    async def count_turns() -> None:
        nonlocal turns
        while True:
            await anyio.lowlevel.checkpoint()
            turns += 1

    async with anyio.create_task_group() as tg:
        tg.start_soon(count_turns)
        await anyio.lowlevel.checkpoint()  # the counter is waiting for its turn
        before = turns
        await sink.write(records)
        during = turns - before
        tg.cancel_scope.cancel()
    assert during >= 4096 // _sinks._SLICE - 1  # a turn between every two slices
    await sink.aclose()
    assert sink.rows == 4096
    text = (tmp_path / "out").read_text(encoding="utf-8")
    assert len(text.splitlines()) == 4096 + isinstance(sink, CsvSink)


@pytest.mark.asyncio
async def test_a_write_cancelled_at_one_of_its_turns_still_takes_every_row(
        tmp_path: Path, turning_sink: CsvSink | JsonlSink) -> None:
    # the consumer's fold counted the batch: the sink must hold all of it, as it did
    # when the whole batch was rendered before any wait
    sink = turning_sink
    records = _records(3000)
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            async def cancel_soon() -> None:
                await anyio.lowlevel.checkpoint()
                scope.cancel()  # lands at the write's first or second turn

            tg.start_soon(cancel_soon)
            await sink.write(records)
    assert scope.cancelled_caught
    assert sink.rows == 3000
    await sink.aclose()
    lines = (tmp_path / "out").read_text(encoding="utf-8").splitlines()
    if isinstance(sink, CsvSink):
        assert [row[0] for row in csv.reader(lines[1:])] == [r.filename for r in records]
    else:
        assert [json.loads(line)["filename"] for line in lines] == \
            [r.filename for r in records]


_SHORT_WRITE = """
import resource, signal, sys
import anyio
from batchmetrics import FileRecord, JsonlSink

async def main(full: str, limited: str) -> None:
    records = [FileRecord(f"dir/f{i:05d}.wfm", 1.79e9 + i, 0.01, i, 1, i, 0, None, None, None)
               for i in range(4000)]
    sink = JsonlSink(full)
    await sink.write(records)
    await sink.aclose()
    # from now on a file may not grow past 64 KiB + 5 bytes: the kernel writes up to
    # the limit (a short write), and only the next write fails (EFBIG)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, ((1 << 16) + 5, (1 << 16) + 5))
    sink = JsonlSink(limited)
    await sink.write(records)
    try:
        await sink.aclose()
    except OSError as exc:
        print("OSError:", exc.strerror)
        print(exc)

anyio.run(main, *sys.argv[1:])
"""


@pytest.mark.skipif(os.name != "posix", reason="needs RLIMIT_FSIZE")
def test_a_write_past_a_file_size_limit_surfaces_and_keeps_the_log_start(
        tmp_path: Path) -> None:
    full, limited = tmp_path / "full.jsonl", tmp_path / "limited.jsonl"
    done = subprocess.run([sys.executable, "-c", _SHORT_WRITE, str(full), str(limited)],
                          capture_output=True, text=True, timeout=120, check=True)
    # the error names the file (a batch with several sinks said only "File too large")
    expected = f"OSError: File too large\n[Errno 27] File too large: {str(limited)!r}\n"
    assert done.stdout == expected, done.stdout + done.stderr
    # what did get written is exactly the start of the log: nothing repeated, nothing skipped
    assert limited.read_bytes() == full.read_bytes()[:(1 << 16) + 5]
    assert full.stat().st_size > 4 * (1 << 16)


@contextlib.contextmanager
def _slow_pipe() -> Iterator[tuple[int, bytearray]]:
    """A pipe drained slowly by a thread, while SIGALRM interrupts this thread every 5 ms.

    A blocking write interrupted by a signal after some bytes went through returns
    that count: the kernel's short write, many times over.
    """
    read_fd, write_fd = os.pipe()
    got = bytearray()

    def drain() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})  # for the writer only
        while chunk := os.read(read_fd, 4096):
            got.extend(chunk)
            time.sleep(0.001)

    thread = threading.Thread(target=drain)
    previous = signal.signal(signal.SIGALRM, lambda signum, frame: None)
    thread.start()
    signal.setitimer(signal.ITIMER_REAL, 0.005, 0.005)
    try:
        yield write_fd, got
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        os.close(write_fd)
        thread.join()
        os.close(read_fd)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux pipes and signals")
def test_short_writes_go_on_where_they_stopped() -> None:
    pieces = [bytes([65 + i % 26]) * (100 + 13 * i) for i in range(300)] + [b""] * 3
    expected = b"".join(pieces)
    with _slow_pipe() as (fd, _):  # the case under test does happen: a call sends a part
        assert 0 < os.writev(fd, pieces) < len(expected)
    with _slow_pipe() as (fd, got), io.FileIO(fd, "w", closefd=False) as pipe:
        _sinks._write_all(pipe, pieces)
    assert bytes(got) == expected


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
@pytest.mark.asyncio
async def test_a_write_stuck_past_the_exit_deadline_finishes_in_its_own_file(
        tmp_path: Path) -> None:
    # The log goes to a pipe nobody reads yet (a hung disk, as the batch sees it):
    # the final write blocks, the exit gives up after shutdown_timeout, and the file
    # must stay open under the write still running in aiofiles' thread. Closed, its
    # descriptor number could go to the next file opened, and the rest of the log
    # with it.
    fifo = tmp_path / "log.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # there, but not reading yet
    metrics = BatchMetrics("stuck", sinks=[JsonlSink(fifo, buffer_bytes=1 << 24)],
                           keep_files=False, interval=3600, shutdown_timeout=0.3)
    got = bytearray()

    def drain() -> None:
        os.set_blocking(reader, True)
        while chunk := os.read(reader, 1 << 16):
            got.extend(chunk)

    other = -1
    try:
        t0 = time.monotonic()
        # every event was folded; the final write (in the sink's close) is what hangs
        with pytest.raises(TimeoutError,  # noqa: PT012
                           match="finished draining but its sinks did not close"):
            async with metrics:
                for i in range(20_000):  # batches of 10: more pieces than a writev takes
                    await metrics.record_file(f"dir/f{i:05d}.wfm", duration=0.01, samples=i)
                    if i % 10 == 9:
                        await anyio.lowlevel.checkpoint()
        assert time.monotonic() - t0 < 5  # the exit kept its deadline
        other = os.open(tmp_path / "other.bin", os.O_WRONLY | os.O_CREAT)  # the next file
    finally:  # read the pipe in any case: the stuck write must end for the test to end
        with anyio.fail_after(30):
            await anyio.to_thread.run_sync(drain)  # until the sink closes the pipe
        os.close(reader)
        if other >= 0:
            os.close(other)
    assert (tmp_path / "other.bin").read_bytes() == b""
    lines = got.decode("utf-8").splitlines()
    assert [json.loads(line)["samples"] for line in lines] == list(range(20_000))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
@pytest.mark.asyncio
async def test_a_sink_whose_open_hangs_keeps_the_exit_deadline(tmp_path: Path) -> None:
    # opening a FIFO for writing blocks until a reader comes, as on a dead mount
    fifo = tmp_path / "log.fifo"
    os.mkfifo(fifo)
    m = BatchMetrics("open", sinks=[JsonlSink(fifo)], shutdown_timeout=0.5, interval=3600)
    t0 = time.monotonic()
    try:  # the rows are buffered: the open comes with the final write, in the close
        with pytest.raises(TimeoutError, match="finished draining but its sinks did not close"):
            async with m:
                await m.record_file("a.wfm", duration=0.1)
        assert time.monotonic() - t0 < 4  # the deadline, and the grace for the sinks
    finally:  # let the open in the executor end, so the test's loop can close
        reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        await anyio.sleep(0.2)
        os.close(reader)


_STUCK_SINK = """
import os, sys
import anyio, anyio.lowlevel
from batchmetrics import BatchMetrics, JsonlSink

async def main(fifo, reader):
    if reader:  # a reader that opens the pipe and never reads: the write is what hangs
        os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:  # every write goes out at once; 2,000 rows fill the pipe, not the batch's buffer
        async with BatchMetrics("stuck", sinks=[JsonlSink(fifo, buffer_bytes=0)],
                                shutdown_timeout=1.0) as m:
            for i in range(2_000):
                await m.record_file(f"f{i}.wfm", duration=0.1)
                await anyio.lowlevel.checkpoint()
    except TimeoutError as exc:
        print("TimeoutError:", exc, flush=True)

anyio.run(main, sys.argv[1], sys.argv[2] == "reader")
print("ended", flush=True)
"""


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
@pytest.mark.parametrize("stuck_in", ["open", "write"])
def test_a_sink_stuck_for_good_does_not_keep_the_process_alive(
        tmp_path: Path, stuck_in: str) -> None:
    # A FIFO nobody reads stands for a dead disk: the open (no reader at all) or the
    # write (a reader that never reads) never returns. The exit gives up at its
    # deadline, and the process must then end: asyncio.run joins the loop's default
    # executor, so a call stuck there kept the process alive for ever.
    fifo = tmp_path / "log.fifo"
    os.mkfifo(fifo)
    done = subprocess.run(
        [sys.executable, "-c", _STUCK_SINK, str(fifo), "reader" if stuck_in == "write" else "-"],
        capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("TimeoutError: batch 'stuck' did not finish draining")
    assert done.stdout.endswith("ended\n")


@pytest.mark.asyncio
async def test_events_lost_by_a_cancelled_batch_past_its_deadline_are_reported(
        caplog: pytest.LogCaptureFixture) -> None:
    # The body is cancelled (a job's time limit) and the exit cannot drain in time: the
    # cancellation goes on, and swallows any note on it, so the loss is logged.
    with caplog.at_level(logging.ERROR, logger="batchmetrics"):
        with anyio.move_on_after(0.3):
            async with BatchMetrics("limited", sinks=[HungSink()], shutdown_timeout=0.5) as m:
                for i in range(100_000):
                    await m.record_file(f"f{i}.wfm", duration=0.01)
    assert m.summary().state == "cancelled"
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("while finishing batch 'limited'" in e and "did not finish draining" in e
               for e in errors), errors


_STUCK_THEN_HEALTHY = """
import os, sys
import anyio
from batchmetrics import BatchMetrics, JsonlSink

async def main(folder):
    fifos = [os.path.join(folder, f"dead-{i}.fifo") for i in range(12)]
    for fifo in fifos:
        os.mkfifo(fifo)
    try:  # 12 opens stuck for good, as on a dead mount
        async with BatchMetrics("dead", sinks=[JsonlSink(f) for f in fifos],
                                shutdown_timeout=0.2) as m:
            await m.record_file("a.wfm", duration=0.1)
    except TimeoutError:
        pass
    with anyio.fail_after(10):  # then a healthy disk, in the same process
        async with BatchMetrics("healthy", sinks=[JsonlSink(os.path.join(folder, "ok.jsonl"))],
                                summary_path=os.path.join(folder, "ok-summary.json")) as m:
            await m.record_file("b.wfm", duration=0.1)
        await m.export_json(os.path.join(folder, "ok.json"))
    print("healthy written", flush=True)

anyio.run(main, sys.argv[1])
"""


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_file_calls_stuck_on_a_dead_disk_do_not_starve_healthy_ones(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", _STUCK_THEN_HEALTHY, str(tmp_path)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "healthy written\n"
    assert (tmp_path / "ok.jsonl").read_text(encoding="utf-8").count("\n") == 1


_FORKED = """
import multiprocessing, os, sys
import anyio
from batchmetrics import BatchMetrics, JsonlSink

async def job(tag):
    folder = sys.argv[1]
    with anyio.fail_after(10):
        async with BatchMetrics(tag, sinks=[JsonlSink(os.path.join(folder, tag + ".jsonl"))],
                                shutdown_timeout=5) as m:
            await m.record_file("a.wfm", duration=0.1)
        await m.export_json(os.path.join(folder, tag + ".json"))

def child():
    anyio.run(job, "child")

anyio.run(job, "parent")  # the file threads exist now
process = multiprocessing.get_context("fork").Process(target=child)
process.start()
process.join(30)
print("child exit code", process.exitcode, flush=True)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_writes_its_files_too(tmp_path: Path) -> None:
    # fork is multiprocessing's default on Linux: the child has none of the parent's
    # file threads, and its writes used to wait for them for ever
    done = subprocess.run([sys.executable, "-c", _FORKED, str(tmp_path)],
                          capture_output=True, text=True, timeout=90, check=False)
    assert done.stdout == "child exit code 0\n", done.stdout + done.stderr
    assert json.loads((tmp_path / "child.json").read_text())["summary"]["total_files"] == 1
    assert (tmp_path / "child.jsonl").read_text(encoding="utf-8").count("\n") == 1


@pytest.mark.asyncio
@pytest.mark.parametrize("interval", [1e-6, 1e-300])
async def test_an_interval_shorter_than_a_consumer_round_still_drains(interval: float) -> None:
    # Each receive used to be cut off by the flush deadline that had already passed:
    # the consumer only flushed, nothing was counted and the exit timed out.
    sink = MemorySink()
    with anyio.fail_after(20):
        async with BatchMetrics("tiny", interval=interval, sinks=[sink],
                                shutdown_timeout=10) as m:
            for i in range(300):
                await m.record_file(f"f{i}.wfm", duration=0.1)
                if i % 50 == 0:
                    assert (await m.snapshot()).total_files == i + 1
    assert m.summary().total_files == 300
    assert sink.filenames == [f"f{i}.wfm" for i in range(300)]
