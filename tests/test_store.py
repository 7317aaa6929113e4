"""The SQLite history: runs, checkpoints, outcomes, per-file chunks, schema, read errors."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import msgspec
import numpy as np
import pytest

from batchmetrics import (
    BatchMetrics,
    BatchMetricsSummary,
    ExportError,
    FileMetrics,
    History,
    HistoryError,
    Store,
)
from batchmetrics._store import (
    SCHEMA_VERSION,
    STALE_MIN_SECONDS,
    ChunkBuilder,
    PackBuilder,
    StoredRun,
    decode_chunk,
    decode_pack,
    derive_status,
    encode_chunk,
)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """The path of a history file that does not exist yet."""
    return tmp_path / "history.db"


@pytest.fixture
def other_writer(db: Path) -> Iterator[sqlite3.Connection]:
    """Another connection to the history, which has a run "first" (another process, as
    SQLite sees it): ``BEGIN IMMEDIATE`` on it holds the file's write lock."""

    async def create() -> None:
        async with BatchMetrics("first", store=db):
            pass

    anyio.run(create)
    other = sqlite3.connect(db, isolation_level=None)
    yield other
    other.close()


async def record_mixed(m: BatchMetrics, n: int) -> None:
    """``n`` files: every 10th an error, every 25th a skip, some with a memory peak."""
    for i in range(n):
        if i % 10 == 3:
            await m.record_error(f"f{i}.wfm", "ValueError", f"bad header {i}", duration=0.01)
        elif i % 25 == 7:
            await m.record_skip(f"f{i}.wfm", reason="duplicate")
        else:
            await m.record_file(f"f{i}.wfm", duration=0.001 * (i % 17 + 1), samples=i,
                                measurements=i % 5, bytes_processed=2 * i,
                                memory_peak=1000 + i if i % 7 == 0 else None)


# -- runs -------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_run_is_running_while_it_runs_and_finished_with_its_final_summary(
        db: Path) -> None:
    async with BatchMetrics("job-1", store=db) as m:
        await record_mixed(m, 50)
        with History(db) as history:
            run = history.get("job-1")
            assert run is not None
            assert run.status == run.stored_status == "running"
            assert run.finished_at is None
    with History(db) as history:
        run = history.get("job-1")
    assert run is not None
    assert run.status == "finished"
    assert run.summary == m.summary().to_dict()
    assert run.state == m.state_dict()
    assert run.interval == 1.0
    assert run.started_at is not None
    assert run.finished_at is not None
    assert run.finished_at >= run.started_at


@pytest.mark.asyncio
async def test_checkpoints_write_the_current_counts_every_interval(db: Path) -> None:
    async with BatchMetrics("job-cp", store=db, interval=0.05) as m:
        await record_mixed(m, 40)
        await m.snapshot()
        await anyio.sleep(0.3)
        with History(db) as history:
            run = history.get("job-cp")
        assert run is not None
        assert run.summary["total_files"] == 40
        assert run.summary["state"] == "running"
        assert run.state["total_files"] == 40


@pytest.mark.asyncio
async def test_checkpoints_go_on_when_the_summary_file_cannot_be_written(
        db: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # they were in the summary file's try: its first failure skipped them, and after
    # 30 s `batchmetrics list` showed the live run as interrupted
    folder = tmp_path / "dash"
    folder.mkdir()
    m = BatchMetrics("job-tick", store=db, interval=0.05, summary_path=folder / "s.json")

    seen: list[StoredRun | None] = []

    async def run_it() -> None:
        async with m:
            await record_mixed(m, 10)
            await m.snapshot()
            await anyio.sleep(0.2)
            (folder / "s.json").unlink()
            folder.rmdir()
            await record_mixed(m, 30)
            await m.snapshot()
            await anyio.sleep(0.4)  # 8 rounds of the summary file failing
            with History(db) as history:
                seen.append(history.get("job-tick"))

    with pytest.raises(ExportError):  # the final summary file cannot be written either
        await run_it()
    (run,) = seen
    assert run is not None
    assert (run.status, run.summary["total_files"]) == ("running", 40)
    failures = [r for r in caplog.records if "periodic summary file" in r.getMessage()]
    assert len(failures) >= 2
    # its traceback once, then a line a round, not the same traceback every interval
    assert failures[0].exc_info is not None
    assert all(r.exc_info is None and r.getMessage().endswith("failed again")
               for r in failures[1:])
    assert not [r for r in caplog.records if "checkpoint" in r.getMessage()]


@pytest.mark.asyncio
async def test_a_failing_body_is_stored_as_failed(db: Path) -> None:
    async def failing_batch() -> None:
        async with BatchMetrics("job-fail", store=db) as m:
            await record_mixed(m, 5)
            raise KeyError("boom")

    with pytest.raises(KeyError):
        await failing_batch()
    with History(db) as history:
        run = history.get("job-fail")
    assert run is not None
    assert run.status == "failed"
    assert run.summary["total_files"] == 5


@pytest.mark.asyncio
async def test_a_cancelled_body_is_stored_as_cancelled_with_what_it_recorded(db: Path) -> None:
    with anyio.move_on_after(0.2):
        async with BatchMetrics("job-cancel", store=db, store_files=True) as m:
            await record_mixed(m, 30)
            await anyio.sleep(10)
    with History(db) as history:
        run = history.get("job-cancel")
        assert run is not None
        assert run.status == "cancelled"
        assert run.summary["total_files"] == 30
        assert run.files_stored == 30
        assert len(list(history.files("job-cancel"))) == 30


@pytest.mark.asyncio
async def test_a_batch_id_already_in_the_history_is_refused_at_begin(db: Path) -> None:
    async with BatchMetrics("job-dup", store=db) as m:
        await record_mixed(m, 3)
    with pytest.raises(ValueError, match=r"job-dup.*already in the history"):
        await Store(db).begin(BatchMetrics("job-dup"))
    with History(db) as history:
        assert history.batch_ids() == ["job-dup"]
        run = history.get("job-dup")
    assert run is not None
    assert run.summary["total_files"] == 3


@pytest.mark.asyncio
async def test_entering_a_batch_whose_id_is_taken_raises_value_error(db: Path) -> None:
    async with BatchMetrics("job-dup", store=db):
        pass
    again = BatchMetrics("job-dup", store=db)
    with pytest.raises(ValueError, match="already in the history"):
        async with again:
            pass  # pragma: no cover - never entered
    with pytest.raises(RuntimeError, match="it failed to start: ValueError"):
        await again.record_file("late.wfm", duration=0.1)


@pytest.mark.asyncio
async def test_one_store_records_several_batches_at_once(db: Path) -> None:
    store = Store(db)

    async def batch(name: str, n: int) -> None:
        async with BatchMetrics(name, store=store, store_files=True) as m:
            await record_mixed(m, n)

    async with anyio.create_task_group() as tg:
        for i in range(4):
            tg.start_soon(batch, f"job-{i}", 100 * (i + 1))
    with History(db) as history:
        runs = {run.batch_id: run for run in history.runs()}
        assert sorted(runs) == ["job-0", "job-1", "job-2", "job-3"]
        for i in range(4):
            run = runs[f"job-{i}"]
            assert run.status == "finished"
            assert run.summary["total_files"] == run.files_stored == 100 * (i + 1)
            assert len(list(history.files(f"job-{i}"))) == 100 * (i + 1)


def test_store_arguments_are_checked() -> None:
    with pytest.raises(TypeError, match="path"):
        Store(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="path must not be empty"):  # SQLite: a private temp db
        Store("")
    with pytest.raises(ValueError, match="outlive the batch, got ':memory:'"):
        Store(":memory:")
    with pytest.raises(ValueError, match="busy_timeout"):
        Store("x.db", busy_timeout=0)
    with pytest.raises(ValueError, match="flush_rows"):
        Store("x.db", flush_rows=0)


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"busy_timeout": "5"}, TypeError, "busy_timeout must be a number of seconds, got str '5'"),
    ({"busy_timeout": None}, TypeError, "busy_timeout must be a number of seconds, got NoneType"),
    ({"busy_timeout": True}, TypeError, "busy_timeout must be a number of seconds, got bool"),
    ({"busy_timeout": -1}, ValueError, "busy_timeout must be a finite number of seconds > 0, "
                                       "got -1"),
    ({"busy_timeout": float("nan")}, ValueError, "busy_timeout must be .* got nan"),
    ({"busy_timeout": 10**400}, ValueError, "busy_timeout must be .* got 1000"),
    ({"flush_rows": 1.5}, TypeError, "flush_rows must be an int, got float 1.5"),
    ({"flush_rows": "100"}, TypeError, "flush_rows must be an int, got str '100'"),
    ({"flush_rows": False}, TypeError, "flush_rows must be an int, got bool False"),
    ({"flush_rows": -5}, ValueError, "flush_rows must be an int >= 1, got -5"),
])
def test_store_tells_a_wrong_type_from_a_bad_value(
        kwargs: dict[str, Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        Store("x.db", **kwargs)


def test_store_refuses_a_path_with_a_nul_when_made() -> None:
    with pytest.raises(ValueError, match=r"path must not contain a NUL character, got 'a\\x00b"):
        Store("a\0b.db")


# -- per-file rows ------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_stored_file_rows_equal_the_batch_rows_across_many_chunks(db: Path) -> None:
    store = Store(db, flush_rows=7)  # many small chunks, written while the batch runs
    async with BatchMetrics("job-rows", store=store, store_files=True) as m:
        await record_mixed(m, 300)
        await m.snapshot()
        # chunks are written behind the consumer: they land while the batch still runs
        with anyio.fail_after(5):
            while True:
                with History(db) as history:
                    run = history.get("job-rows")
                    assert run is not None
                    if run.files_stored >= 300 - 7:  # at most one chunk waits in memory
                        break
                await anyio.sleep(0.01)
        assert m.state.value == "running"
    with History(db) as history:
        run = history.get("job-rows")
        assert run is not None
        assert run.files_stored == 300
        stored = [FileMetrics.from_event(r).to_dict() for r in history.files("job-rows")]
    assert stored == m.get_file_metrics()


@pytest.mark.asyncio
async def test_the_wal_stays_small_while_a_long_run_writes_its_rows(db: Path) -> None:
    # SQLite checkpoints the WAL every 1,000 pages by default: 64 MiB of 64 KiB pages
    # stayed next to the history while a run wrote (and a half-size history of rows
    # kept it at that size); it is now checkpointed every 4 MiB and cut back to that
    wal = Path(f"{db}-wal")
    largest = 0
    async with BatchMetrics("long", store=db, store_files=True, keep_files=False) as m:
        for i in range(400_000):  # about 26 MB of packed rows
            await m.record_file(f"shard-{i % 64:02d}/capture_{i:07d}.wfm", duration=0.01)
            if i % 10_000 == 0:
                await m.snapshot()  # the rows so far are folded and on their way
                largest = max(largest, wal.stat().st_size if wal.exists() else 0)
    with History(db) as history:
        run = history.get("long")
        assert run is not None
        assert run.files_stored == 400_000
    assert db.stat().st_size > 20e6  # the rows did go through the WAL
    assert largest < 12 * 2**20, largest  # 4 MiB, plus the 2 MiB packs in flight


@pytest.mark.asyncio
async def test_file_rows_can_be_filtered_by_status_and_ranked_by_duration(db: Path) -> None:
    async with BatchMetrics("job-q", store=db, store_files=True) as m:
        await record_mixed(m, 100)
    with History(db) as history:
        errors = list(history.files("job-q", status="error"))
        slowest = history.slowest("job-q", 5)
        slowest_ok = history.slowest("job-q", 3, status="success")
        with pytest.raises(ValueError, match="status"):
            list(history.files("job-q", status="broken"))
        # a typo is not an empty run: the error comes at the call, with the id
        with pytest.raises(KeyError, match="no batch 'job-Q' in "):
            history.files("job-Q")
        with pytest.raises(KeyError, match="no batch 'job-Q' in "):
            history.slowest("job-Q", 3)
    assert [r.filename for r in errors] == [f"f{i}.wfm" for i in range(100) if i % 10 == 3]
    assert all(r.error_type == "ValueError" for r in errors)
    rows = m.get_file_metrics()
    durations = sorted((r["duration_seconds"] for r in rows), reverse=True)
    assert [r.duration for r in slowest] == durations[:5]
    assert all(r.status == "success" for r in slowest_ok)


@pytest.mark.asyncio
async def test_a_pack_or_chunk_written_twice_counts_once(db: Path) -> None:
    store = Store(db)
    m = BatchMetrics("job-twice")
    await store.begin(m)
    run = store._runs[id(m)]
    run.add([("a", 1.0, 0.5, 1, 1, 1, 0, None, None, None)] * 3)  # a pack
    run.add([("b", 1.0, 0.5, 2**70, 1, 1, 0, None, None, None)] * 2)  # a chunk
    run.seal()
    copies = list(run.unwritten)
    assert [statement.split()[4] for statement, _, _ in copies] == ["file_packs", "file_chunks"]
    await store._write(run, None, None, None)
    run.unwritten.extend(copies)  # as if their awaits had been cancelled after landing
    await store.finish(m, m.summary(), "finished")  # writes the queued copies again
    with History(db) as history:
        run_info = history.get("job-twice")
        assert run_info is not None
        assert run_info.files_stored == 5
        assert [r.filename for r in history.files("job-twice")] == ["a"] * 3 + ["b"] * 2


def test_packs_round_trip_and_refuse_what_msgpack_cannot_hold() -> None:
    events = [
        ("plain.wfm", 1.5, 0.25, 10, 2, 30, 0, None, None, None),
        ("ünïcødé/データ.wfm", 2.5, 0.5, 2**64 - 1, 0, 0, 0, None, None, 2**63),
        ("nul\0inside", 3.5, 0.0, 0, 0, 0, 2, None, "dup", None),
        ("", 5.5, 0.1, 0, 0, 0, 1, "OSError", "read failed", 7),
    ]
    builder = PackBuilder()
    for i in range(0, 40, 2):  # 40 rows: more than a one-byte array header holds
        assert builder.add([events[i % 4], events[(i + 1) % 4]])
    assert builder.n == 40
    assert [tuple(r) for r in decode_pack(40, builder.pack())] == events * 10
    assert not builder.add([("big", 1.0, 0.5, 2**64, 0, 0, 0, None, None, None)])
    assert not builder.add([("surrogate-\udcff", 1.0, 0.5, 1, 0, 0, 0, None, None, None)])
    assert builder.n == 40  # refused batches add nothing
    with pytest.raises(HistoryError, match="damaged"):
        decode_pack(41, builder.pack())
    with pytest.raises(HistoryError, match="damaged"):
        decode_pack(40, builder.pack()[:-3])


@pytest.mark.parametrize(("row", "where"), [
    (["a", 1.0, 0.5, 1, 1, 1, 7, None, None, None], "$[0][6]"),  # no such status
    (["a", 1.0, 0.5, 1, None, 1, 0, None, None, None], "$[0][4]"),  # a count gone
    (["a", 1.0, 0.5, -1, 1, 1, 0, None, None, None], "$[0][3]"),  # a negative count
    (["a", 1.0, -0.5, 1, 1, 1, 0, None, None, None], "$[0][2]"),  # a negative duration
    (["a", 1.0, 0.5, 1, 1, 1, 1, 3, None, None], "$[0][7]"),  # an error type not text
    ([5, 1.0, 0.5, 1, 1, 1, 0, None, None, None], "$[0][0]"),  # a name not text
    (["a", 1.0, 0.5, 1, 1, 1, 0, None, None], "$[0]"),  # a field short
])
def test_a_pack_row_no_record_call_could_write_is_reported_as_damage(
        row: list[object], where: str) -> None:
    # read as it was, it crashed `files` (a status 7 named no status) or printed
    # "measurements": None, which is not JSON
    with pytest.raises(HistoryError,
                       match=rf"a pack of file rows is damaged: .*{re.escape(where)}"):
        decode_pack(1, msgspec.msgpack.encode([row]))


def test_a_pack_with_text_that_is_not_utf8_is_reported_as_damage() -> None:
    builder = PackBuilder()
    assert builder.add([("name", 1.0, 0.5, 1, 1, 1, 0, None, None, None)])
    packed = builder.pack().replace(b"name", b"n\xffme")
    with pytest.raises(HistoryError, match="a pack of file rows is damaged"):
        decode_pack(1, packed)


@pytest.mark.parametrize(("column", "value"), [
    (8, b"\x07"),  # no such status
    (5, "[-3]"),  # a negative count, in the JSON form of a column
    (1, b"\xff"),  # a name that is not UTF-8
])
def test_a_chunk_row_no_record_call_could_write_is_reported_as_damage(
        column: int, value: object) -> None:
    columns = list(encode_chunk([("a", 1.0, 0.5, 1, 1, 1, 0, None, None, None)]))
    columns[column] = value
    with pytest.raises(HistoryError, match="a chunk of file rows is damaged"):
        decode_chunk(columns)


@pytest.mark.asyncio
async def test_rows_msgpack_cannot_hold_are_stored_in_order_in_chunks(db: Path) -> None:
    async with BatchMetrics("job-mixed", store=Store(db, flush_rows=5), store_files=True) as m:
        for i in range(40):
            if i % 7 == 3:
                await m.record_file(f"huge-{i}", duration=0.5, samples=2**70)
            elif i % 11 == 5:
                await m.record_file(f"bad-\udcff-{i}", duration=0.25)
            else:
                await m.record_file(f"f{i}", duration=0.01 * i, samples=i)
            if i % 3 == 0:
                await m.snapshot()  # small batches: packs and chunks interleave
    with History(db) as history:
        stored = [FileMetrics.from_event(r).to_dict() for r in history.files("job-mixed")]
    assert stored == m.get_file_metrics()


@pytest.mark.asyncio
async def test_a_version_1_file_is_migrated_and_its_chunks_still_read(db: Path) -> None:
    async with BatchMetrics("old-run", store=db, store_files=True) as old:
        for i in range(10):  # a lone surrogate in every name: all rows in column chunks
            await old.record_file(f"old-\udcff-{i}", duration=0.1 * (i + 1))
    # back to schema 1: no file_packs table
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("DROP TABLE file_packs")
        conn.execute("PRAGMA user_version = 1")
    reader = History(db)  # read as it is: a reader does not migrate the file
    assert len(list(reader.files("old-run"))) == 10
    async with BatchMetrics("new-run", store=db, store_files=True) as new:
        for i in range(10):
            await new.record_file(f"new-{i}", duration=0.1)
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    with reader:  # opened before the migration, it reads the packs written since
        assert len(list(reader.files("new-run"))) == 10
    with History(db) as history:
        assert [FileMetrics.from_event(r).to_dict() for r in history.files("old-run")] == \
            old.get_file_metrics()
        assert [FileMetrics.from_event(r).to_dict() for r in history.files("new-run")] == \
            new.get_file_metrics()


def test_chunks_round_trip_awkward_names_and_huge_numbers() -> None:
    events = [
        ("plain.wfm", 1.5, 0.25, 10, 2, 30, 0, None, None, None),
        ("ünïcødé/データ.wfm", 2.5, 0.5, 2**70, 0, 0, 0, None, None, 2**65),
        ("nul\0inside", 3.5, 0.0, 0, 0, 0, 2, None, "dup", None),
        ("surrogate-\udcff", 4.5, 0.1, 0, 0, 0, 1, "OSError", "read failed", None),
        ("", 5.5, 0.1, 0, 0, 0, 0, None, None, 7),
    ]
    builder = ChunkBuilder()
    builder.add(events[:2])
    builder.add([])
    builder.add(events[2:])
    assert builder.n == 5
    assert [tuple(r) for r in decode_chunk(builder.columns())] == events
    assert [tuple(r) for r in decode_chunk(encode_chunk(events[:1]))] == events[:1]


def test_a_damaged_chunk_is_reported() -> None:
    columns = list(encode_chunk([("a", 1.0, 0.5, 1, 1, 1, 0, None, None, None)]))
    columns[0] = 2  # claims two rows
    with pytest.raises(HistoryError, match="damaged"):
        decode_chunk(columns)


# -- schema and errors --------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_new_file_gets_the_current_schema_in_wal_mode(db: Path) -> None:
    async with BatchMetrics("job-s", store=db):
        pass
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


@pytest.mark.asyncio
async def test_a_file_from_a_newer_batchmetrics_is_refused_clearly(db: Path) -> None:
    async with BatchMetrics("job-v", store=db):
        pass
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(HistoryError, match="newer"):
        await Store(db).begin(BatchMetrics("job-v2"))
    with pytest.raises(HistoryError, match="newer"):
        History(db)


@pytest.mark.asyncio
async def test_a_file_that_is_not_a_database_is_refused_clearly(db: Path) -> None:
    db.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(HistoryError, match="cannot use"):
        await Store(db).begin(BatchMetrics("job-x"))
    with pytest.raises(HistoryError, match="not a batchmetrics history"):
        History(db)


@pytest.mark.asyncio
async def test_a_fifo_is_refused_as_a_history_before_it_is_opened(db: Path) -> None:
    os.mkfifo(db)  # History's read-only open of it waited for a writer, forever
    with pytest.raises(HistoryError, match="is not a regular file, so not a history database"):
        History(db)
    with pytest.raises(HistoryError, match=r"cannot use .* as a batchmetrics history: it is "
                                           "not a regular file"):
        await Store(db).begin(BatchMetrics("job-x"))
    assert db.is_fifo()


@pytest.mark.asyncio
async def test_history_reads_check_their_arguments_at_the_call(db: Path) -> None:
    async with BatchMetrics("job-args", store=db, store_files=True) as m:
        await record_mixed(m, 30)
    calls: list[tuple[Callable[[Any], object], type[Exception], str]] = [
        # files() is not a generator: a bad status is refused before any row is read
        (lambda h: h.files("job-args", status="bogus"), ValueError,
         "status must be one of success, error, skipped; got 'bogus'"),
        (lambda h: h.files("job-args", status=1), TypeError,
         "status must be a str or None, got int 1"),
        (lambda h: h.files(b"job-args"), TypeError,
         "batch_id must be a str, got bytes b'job-args'"),
        (lambda h: h.runs("x"), TypeError, "limit must be an int, got str 'x'"),
        (lambda h: h.runs(1.5), TypeError, "limit must be an int, got float 1.5"),
        (lambda h: h.runs(True), TypeError, "limit must be an int, got bool True"),
        (lambda h: h.runs(-1), ValueError, "limit must be from 0 to 2**63 - 1, got -1"),
        (lambda h: h.runs(2**63), ValueError,
         "limit must be from 0 to 2**63 - 1, got 9223372036854775808"),
        (lambda h: h.runs(damaged=()), TypeError, "damaged must be a list or None, got tuple"),
        (lambda h: h.runs(status="done"), ValueError, "status must be one of running, finished, "
                                                      "failed, cancelled, interrupted; got 'done'"),
        (lambda h: h.runs(status=1), TypeError, "status must be a str or None, got int 1"),
        (lambda h: h.runs(with_state="no"), TypeError, "with_state must be a bool, got str 'no'"),
        (lambda h: h.batch_ids("2"), TypeError, "limit must be an int, got str '2'"),
        (lambda h: h.batch_ids_around(b"job", 2), TypeError, "batch_id must be a str, got bytes"),
        (lambda h: h.batch_ids_around("job", -1), ValueError,
         "n must be from 0 to 2**63 - 1, got -1"),
        (lambda h: h.get(["x"]), TypeError, "batch_id must be a str, got list ['x']"),
        (lambda h: h.slowest("job-args", 1.5), TypeError, "n must be an int, got float 1.5"),
        (lambda h: h.slowest("job-args", "3"), TypeError, "n must be an int, got str '3'"),
        (lambda h: h.slowest("job-args", -1), ValueError, "n must be from 0 to 2**63 - 1, got -1"),
        (lambda h: h.slowest("job-args", 3, status="bogus"), ValueError, "status must be one of"),
    ]
    with History(db) as history:
        for call, error, message in calls:
            with pytest.raises(error, match=re.escape(message)):
                call(history)
        # the edges that are allowed
        assert history.runs(0) == []
        assert [r.batch_id for r in history.runs(2**63 - 1)] == ["job-args"]
        assert history.slowest("job-args", 0) == []
        numpy_n: Any = np.int64(3)  # an int to operator.index, as elsewhere
        assert len(history.slowest("job-args", numpy_n)) == 3
        assert len(history.runs(numpy_n)) == 1
        assert len(history.slowest("job-args", 2**63 - 1)) == 30


@pytest.mark.asyncio
async def test_runs_are_filtered_by_the_status_they_show_and_read_without_state_on_request(
        db: Path) -> None:
    for batch_id in ("a", "b", "c", "d"):
        async with BatchMetrics(batch_id, store=db) as m:
            await record_mixed(m, 5)
    conn = sqlite3.connect(db)
    with conn:  # b's process is gone (a pid above any pid_max), d still checkpoints elsewhere
        conn.execute("UPDATE runs SET status = 'running', pid = ? WHERE batch_id = 'b'",
                     (2**22 + 12345,))
        conn.execute("UPDATE runs SET status = 'running', host = 'far', updated_at = ? "
                     "WHERE batch_id = 'd'", (time.time(),))
    conn.close()
    with History(db) as history:
        def ids(**options: Any) -> list[tuple[str, str]]:
            return [(r.batch_id, r.status) for r in history.runs(**options)]

        assert ids(status="finished") == [("c", "finished"), ("a", "finished")]
        assert ids(status="finished", limit=1) == [("c", "finished")]
        assert ids(status="interrupted") == [("b", "interrupted")]
        assert ids(status="running") == [("d", "running")]
        assert ids(status="failed") == []
        full, light = history.runs(1), history.runs(1, with_state=False)
        assert full[0].state["total_files"] == 5
        assert light[0].state == {}
        assert light[0].summary == full[0].summary


@pytest.mark.asyncio
async def test_batch_ids_are_read_most_recent_first_or_around_an_id_in_sorted_order(
        db: Path) -> None:
    for batch_id in ("b-2", "a-1", "b-10", "b-1", "c-1", "b-1%_"):
        async with BatchMetrics(batch_id, store=db):
            pass
    with History(db) as history:
        assert history.batch_ids() == ["b-1%_", "c-1", "b-1", "b-10", "a-1", "b-2"]
        assert history.batch_ids(2) == ["b-1%_", "c-1"]
        # unknown "b-11": the ids sharing its longest prefix sort next to it
        assert history.batch_ids_around("b-11", 2) == ["b-1%_", "b-10", "b-2", "c-1"]
        assert history.batch_ids_around("b-1", 1) == ["a-1", "b-1"]
        assert history.batch_ids_around("zz", 2) == ["b-2", "c-1"]
        assert history.batch_ids_around("b-1", 0) == []


def test_history_path_is_checked_like_a_store_path(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"path must be a str or os\.PathLike of str, got int 5"):
        History(5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="path must not be empty, got ''"):
        History("")  # not the current folder ("is a directory")
    with pytest.raises(ValueError, match="path must not contain a NUL character"):
        History(str(tmp_path / "a\0b.db"))


@contextlib.contextmanager
def _read_only_folder(folder: Path) -> Iterator[Path]:
    """``folder`` seen read-only: a read-only bind mount as root (who may write anywhere
    else), a folder without write permission otherwise."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield folder
        finally:
            folder.chmod(0o755)
        return
    view = folder.with_name(folder.name + "-ro")
    view.mkdir(exist_ok=True)
    if subprocess.run(["mount", "--bind", "-o", "ro", str(folder), str(view)],
                      capture_output=True, check=False).returncode:
        pytest.skip("cannot make a read-only mount here")
    try:
        yield view
    finally:
        subprocess.run(["umount", str(view)], check=True)


@pytest.mark.skipif(not hasattr(os, "geteuid"), reason="POSIX permissions")
@pytest.mark.asyncio
async def test_a_history_on_read_only_media_is_read(tmp_path: Path) -> None:
    # SQLite cannot make the -shm file a WAL reader needs there: every command said
    # the file "is not a batchmetrics history database"
    folder = tmp_path / "media"
    folder.mkdir()
    async with BatchMetrics("burned", store=folder / "h.db", store_files=True) as m:
        await record_mixed(m, 30)
    assert sorted(p.name for p in folder.iterdir()) == ["h.db"]  # closed cleanly
    with _read_only_folder(folder) as ro, History(ro / "h.db") as history:
        run = history.get("burned")
        assert run is not None
        assert run.summary["total_files"] == 30
        assert len(list(history.files("burned"))) == 30
        # another process writes to the file through a view of its own (the read-only
        # view may be a container's): a History still open sees it
        folder.chmod(0o755)
        async with BatchMetrics("later", store=folder / "h.db") as m:
            await record_mixed(m, 5)
        folder.chmod(0o555 if os.geteuid() else 0o755)
        assert [r.batch_id for r in history.runs()] == ["later", "burned"]
    # a -wal file beside it may hold writes the file lacks: not read without them
    (folder / "h.db-wal").write_bytes(b"\0" * 100)
    with _read_only_folder(folder) as ro, \
            pytest.raises(HistoryError, match=r"cannot open .*h\.db: unable to open"):
        History(ro / "h.db")


@pytest.mark.asyncio
async def test_a_history_another_process_holds_locked_says_so(db: Path) -> None:
    async with BatchMetrics("held", store=db) as m:
        await record_mixed(m, 3)
    holder = sqlite3.connect(db)
    try:
        holder.execute("PRAGMA locking_mode = EXCLUSIVE")
        holder.execute("BEGIN EXCLUSIVE")
        holder.execute("UPDATE runs SET pid = pid")
        with pytest.raises(HistoryError, match=r"cannot read .*: another process holds it "
                                               r"locked \(database is locked\)"):
            History(db, busy_timeout=0.2)
        with pytest.raises(ValueError, match="busy_timeout must be a finite number of "
                                             "seconds > 0, got 0"):
            History(db, busy_timeout=0)
    finally:
        holder.close()
    with History(db) as history:  # once it lets go
        assert history.get("held") is not None


@pytest.mark.asyncio
async def test_waiting_for_a_locked_history_is_not_counted_as_run_time(db: Path) -> None:
    # a 5 s wait for another process's lock made a 2 ms batch last 4.2 s, at 237 files/s
    async with BatchMetrics("first", store=db) as m:
        await record_mixed(m, 1)
    now = [1_800_000_000.0]
    holder = sqlite3.connect(db, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")

    def let_go() -> None:
        time.sleep(0.3)
        now[0] += 500.0  # the wait, as the batch's clock sees it
        holder.rollback()

    thread = threading.Thread(target=let_go)
    thread.start()
    try:
        async with BatchMetrics("second", store=db, clock=lambda: now[0]) as m:
            await m.record_file("a.wfm", duration=0.5)
            now[0] += 1.0
    finally:
        thread.join()
        holder.close()
    summary = m.summary()
    assert summary.start_time == "2027-01-15T08:08:20+00:00"  # 1_800_000_500
    assert summary.timing.total_duration == 1.0
    with History(db) as history:
        run = history.get("second")
    assert run is not None
    assert run.started_at == 1_800_000_500.0


def test_history_explains_missing_files_folders_and_foreign_databases(tmp_path: Path) -> None:
    with pytest.raises(HistoryError, match="no history database"):
        History(tmp_path / "missing.db")
    with pytest.raises(HistoryError, match="directory"):
        History(tmp_path)
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE t (x)")
    conn.close()
    with pytest.raises(HistoryError, match="holds no batchmetrics history"):
        History(other)


# -- interrupted runs -----------------------------------------------------------------------------


def test_a_running_run_whose_process_is_gone_on_this_host_is_interrupted() -> None:
    dead_pid = 2**22 + 12345  # above any pid_max: no such process
    assert derive_status("running", "here", dead_pid, 1.0, 100.0, 100.5, "here") == "interrupted"
    assert derive_status("running", "here", os.getpid(), 1.0, 100.0, 100.5, "here") == "running"


def test_a_running_run_on_another_host_is_interrupted_once_its_checkpoints_stop() -> None:
    fresh = 100.0 + STALE_MIN_SECONDS - 1
    stale = 100.0 + STALE_MIN_SECONDS + 1
    assert derive_status("running", "far", 1, 1.0, 100.0, fresh, "here") == "running"
    assert derive_status("running", "far", 1, 1.0, 100.0, stale, "here") == "interrupted"
    assert derive_status("running", "far", 1, 10.0, 100.0, stale, "here") == "running"
    for ended in ("finished", "failed", "cancelled"):
        assert derive_status(ended, "far", 1, 1.0, 100.0, 1e9, "here") == ended


_HUNG_EXIT = """
import sys
import anyio
from batchmetrics import BatchMetrics

class HungSink:
    async def write(self, records): await anyio.sleep_forever()
    async def flush(self): pass
    async def aclose(self): pass

async def main(db, summary):
    try:
        async with BatchMetrics("hung", sinks=[HungSink()], store=db, summary_path=summary,
                                shutdown_timeout=0.5, interval=0.1) as m:
            await m.record_file("a.wfm", duration=0.1)
            await anyio.sleep(0.3)
    except TimeoutError as exc:
        print("TimeoutError:", exc)

anyio.run(main, *sys.argv[1:])
"""


def test_a_batch_that_times_out_at_exit_still_ends_its_run_and_lets_the_process_exit(
        tmp_path: Path) -> None:
    # The exit gives up on a hung sink: the store must still record the run's end
    # and close its connection, whose thread would otherwise keep the process alive.
    db, summary = tmp_path / "h.db", tmp_path / "summary.json"
    done = subprocess.run([sys.executable, "-c", _HUNG_EXIT, str(db), str(summary)],
                          capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.startswith("TimeoutError: batch 'hung' did not finish draining")
    with History(db) as history:
        run = history.get("hung")
    assert run is not None
    assert (run.status, run.summary["total_files"], run.summary["state"]) == ("failed", 1,
                                                                               "failed")
    assert json.loads(summary.read_text(encoding="utf-8"))["state"] == "failed"


def _store_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if "_connection_worker_thread" in t.name]


@pytest.mark.asyncio
async def test_the_exit_keeps_its_deadline_while_another_writer_holds_the_lock(db: Path) -> None:
    # Another connection (another process, as SQLite sees it) holds the write lock
    # past the batch's shutdown_timeout: the final write waits for the lock, and the
    # exit must not wait the busy timeout out, nor leave the store's thread waiting.
    other: sqlite3.Connection | None = None
    m = BatchMetrics("locked", store=Store(db, busy_timeout=10.0), shutdown_timeout=1.0,
                     interval=60)
    try:
        with pytest.raises(TimeoutError, match=r"writing its outputs within 1\.0 s"):  # noqa: PT012
            async with m:
                await m.record_file("a.wfm", duration=0.1)
                other = sqlite3.connect(db, isolation_level=None)
                other.execute("BEGIN IMMEDIATE")
                t0 = anyio.current_time()
        # the deadline, the 2 s grace that retries the final write, 0.5 s to let go
        assert anyio.current_time() - t0 < 4.5
        # the lock is still held: the store's thread has ended anyway
        with anyio.fail_after(1):
            while _store_threads():  # noqa: ASYNC110  (a thread ending sets no event)
                await anyio.sleep(0.02)
    finally:
        if other is not None:
            other.execute("ROLLBACK")
            other.close()


@pytest.mark.asyncio
async def test_a_write_waits_for_a_lock_up_to_the_busy_timeout_then_fails(
        db: Path, other_writer: sqlite3.Connection) -> None:
    # held for 0.6 s, several times SQLite's own short busy wait: still waited for
    other_writer.execute("BEGIN IMMEDIATE")
    with anyio.CancelScope() as scope:
        scope.deadline = anyio.current_time() + 5
        async with anyio.create_task_group() as tg:
            tg.start_soon(_commit_after, other_writer, 0.6)
            async with BatchMetrics("waited", store=Store(db, busy_timeout=5.0)) as m:
                await m.record_file("a.wfm", duration=0.1)
    assert not scope.cancelled_caught
    # held past busy_timeout: begin gives up after it, naming the lock
    other_writer.execute("BEGIN IMMEDIATE")
    t0 = anyio.current_time()
    with pytest.raises(HistoryError, match=r"locked \(another process held its write lock"):
        async with BatchMetrics("refused", store=Store(db, busy_timeout=0.8)):
            pass
    assert 0.8 <= anyio.current_time() - t0 < 3
    other_writer.execute("ROLLBACK")
    with History(db) as history:
        assert sorted(history.batch_ids()) == ["first", "waited"]
        run = history.get("waited")
        assert run is not None
        assert (run.status, run.summary["total_files"]) == ("finished", 1)


async def _commit_after(conn: sqlite3.Connection, seconds: float) -> None:
    await anyio.sleep(seconds)
    conn.execute("COMMIT")


@pytest.mark.asyncio
async def test_a_checkpoint_stores_its_summary_and_state_of_the_same_moment(db: Path) -> None:
    # Per-file packs are written behind the consumer while checkpoints run: the
    # summary (read by list, watch, stats --json) and the state (read by stats and
    # compare) of one checkpoint must agree, also for a run killed after it.
    seen: list[tuple[int, int]] = []
    m = BatchMetrics("same-moment", store=Store(db, flush_rows=2000), store_files=True,
                     interval=0.05)

    async def poll() -> None:
        while m.state.value == "running":
            with History(db) as history:
                run = history.get("same-moment")
            assert run is not None
            seen.append((run.summary["total_files"], run.state["total_files"]))
            await anyio.sleep(0.02)

    async with anyio.create_task_group() as tg, m:
        tg.start_soon(poll)
        for i in range(60_000):
            await m.record_file(f"f{i}", duration=0.001)
            if i % 200 == 0:
                await anyio.sleep(0.001)
    assert len({s for s, _ in seen}) > 3  # several checkpoints were read mid-run
    assert [(s, t) for s, t in seen if s != t] == []


@pytest.mark.asyncio
async def test_a_final_write_cut_off_by_the_deadline_is_retried_in_the_grace(db: Path) -> None:
    # Another writer holds the lock a little past the exit's deadline: the run's end
    # is still recorded, within the short grace that follows the deadline.
    other = sqlite3.connect(db, isolation_level=None)
    release = anyio.Event()

    async def hold_lock_for(seconds: float) -> None:
        other.execute("BEGIN IMMEDIATE")
        await anyio.sleep(seconds)
        other.execute("COMMIT")
        release.set()

    try:
        async with anyio.create_task_group() as tg:
            with pytest.raises(TimeoutError, match="finished draining but not writing its"):  # noqa: PT012
                async with BatchMetrics("late", store=db, shutdown_timeout=0.5,
                                        interval=60) as m:
                    await m.record_file("a.wfm", duration=0.1)
                    tg.start_soon(hold_lock_for, 0.9)
                    await anyio.lowlevel.checkpoint()
            await release.wait()
    finally:
        other.close()
    with History(db) as history:
        run = history.get("late")
    assert run is not None
    assert (run.status, run.summary["total_files"]) == ("failed", 1)


@pytest.mark.asyncio
async def test_readers_of_a_batch_whose_outputs_time_out_see_it_failed(
        db: Path, other_writer: sqlite3.Connection, tmp_path: Path) -> None:
    # The final store write waits past the deadline for another writer's lock, which
    # is let go within the grace: live() readers and wait_finished() must wake to the
    # final summary (failed, not an earlier finished one), with the summary file and
    # the store already saying so.
    summary_file = tmp_path / "summary.json"
    seen: list[BatchMetricsSummary] = []
    on_waking: list[tuple[str, str, str]] = []
    m = BatchMetrics("late", store=db, summary_path=summary_file, shutdown_timeout=0.5,
                     interval=60)

    async def watch() -> None:
        async for summary in m.live(0.05):
            seen.append(summary)

    async def wait() -> None:
        final = await m.wait_finished()
        with History(db) as history:
            run = history.get("late")
        assert run is not None
        written = json.loads(summary_file.read_text(encoding="utf-8"))
        on_waking.append((final.state, written["state"], run.status))

    async def hold_lock_for(seconds: float) -> None:
        other_writer.execute("BEGIN IMMEDIATE")
        await anyio.sleep(seconds)
        other_writer.execute("COMMIT")

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        tg.start_soon(wait)
        with pytest.raises(TimeoutError):  # noqa: PT012
            async with m:
                await m.record_file("a.wfm", duration=0.1)
                tg.start_soon(hold_lock_for, 1.0)
                await anyio.lowlevel.checkpoint()
    assert on_waking == [("failed", "failed", "failed")]
    assert seen[-1] == m.summary()
    assert seen[-1].state == "failed"


@pytest.mark.asyncio
async def test_a_store_that_fails_at_the_exit_makes_the_batch_failed_everywhere(
        db: Path, other_writer: sqlite3.Connection, tmp_path: Path) -> None:
    # The history stays locked past busy_timeout: the exit raises, so the summary,
    # the summary file (already written as finished) and wait_finished say failed.
    summary_file = tmp_path / "summary.json"
    m = BatchMetrics("unrecorded", store=Store(db, busy_timeout=0.3),
                     summary_path=summary_file, interval=60)
    with pytest.raises(HistoryError, match="cannot record the end of batch"):  # noqa: PT012
        async with m:
            await m.record_file("a.wfm", duration=0.1)
            other_writer.execute("BEGIN IMMEDIATE")
    other_writer.execute("ROLLBACK")
    assert (await m.wait_finished()).state == m.summary().state == "failed"
    assert json.loads(summary_file.read_text(encoding="utf-8"))["state"] == "failed"


@pytest.mark.asyncio
async def test_per_file_rows_wait_out_a_lock_longer_than_the_busy_timeout(
        db: Path, other_writer: sqlite3.Connection) -> None:
    # Another writer holds the file for 1.5 s, three busy timeouts: the chunks that
    # could not be written stay queued and go out later; the batch goes on.
    async with anyio.create_task_group() as tg, BatchMetrics(
            "locked-rows", store=Store(db, busy_timeout=0.5, flush_rows=100),
            store_files=True, interval=60) as m:
        for i in range(3000):
            await m.record_file(f"f{i:04d}.wfm", duration=0.01, samples=i)
            if i == 300:
                other_writer.execute("BEGIN IMMEDIATE")
                tg.start_soon(_commit_after, other_writer, 1.5)
            if i % 50 == 0:
                await anyio.sleep(0.02)
    with History(db) as history:
        run = history.get("locked-rows")
        assert run is not None
        assert (run.status, run.files_stored) == ("finished", 3000)
        assert [r.samples for r in history.files("locked-rows")] == list(range(3000))


@pytest.mark.asyncio
@pytest.mark.parametrize(("tables", "version"), [
    (["customers"], 7),
    (["runs"], 0),  # a table of the same name, but no schema version: not ours
    ([], 2),  # a version, but not one table
])
async def test_another_applications_sqlite_file_is_refused_and_left_as_it_was(
        tmp_path: Path, tables: list[str], version: int) -> None:
    app = tmp_path / "app.db"
    with contextlib.closing(sqlite3.connect(app)) as conn, conn:
        for table in tables:
            conn.execute(f"CREATE TABLE {table} (id INTEGER, name TEXT)")
        conn.execute(f"PRAGMA user_version = {version}")
    with pytest.raises(HistoryError, match=r"a SQLite database of something else \(tables "
                                           rf"{', '.join(tables) or 'none'}, version {version}"):
        async with BatchMetrics("x", store=app):
            pass
    with contextlib.closing(sqlite3.connect(app)) as conn, conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # not WAL
        assert conn.execute("PRAGMA user_version").fetchone()[0] == version
        assert conn.execute("SELECT name FROM sqlite_master").fetchall() == [
            (t,) for t in tables]


def test_a_batch_id_that_is_not_valid_text_is_refused_at_once() -> None:
    with pytest.raises(ValueError, match=r"batch_id must be valid text, got 'id\\ud800'"):
        BatchMetrics("id\ud800")


_BROKEN_CLOCK = """
import sys, time
import anyio
from batchmetrics import BatchMetrics

stopped = False

def clock():
    if stopped:
        raise RuntimeError("the clock broke")
    return time.time()

async def main():
    global stopped
    async with BatchMetrics("clock", store=sys.argv[1], clock=clock, interval=60) as m:
        await m.record_file("a.wfm", duration=0.1)
        await m.snapshot()
        stopped = True

anyio.run(main)
"""


def test_an_exit_that_fails_still_ends_the_stores_thread(db: Path) -> None:
    # The clock raises when the exit stamps the end: the exit fails, and the store's
    # thread (not a daemon) used to keep the process alive for ever.
    done = subprocess.run([sys.executable, "-c", _BROKEN_CLOCK, str(db)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert "RuntimeError: the clock broke" in done.stderr


_LOCKED_PAST_GRACE = """
import sqlite3, sys, threading, time
import anyio
from batchmetrics import BatchMetrics, Store

db = sys.argv[1]
other = sqlite3.connect(db, isolation_level=None, check_same_thread=False)

async def main():
    try:
        async with BatchMetrics("locked", store=db, shutdown_timeout=0.5,
                                interval=60) as m:  # the default busy timeout, 30 s
            await m.record_file("a.wfm", duration=0.1)
            other.execute("BEGIN IMMEDIATE")  # held for 40 s: past the deadline and grace
            holder = threading.Timer(40, lambda: other.execute("COMMIT"))
            holder.daemon = True  # the process may end before: that releases the lock too
            holder.start()
    except TimeoutError as exc:
        print("TimeoutError:", exc, flush=True)

anyio.run(main)
"""


def test_a_store_that_cannot_end_its_run_in_the_grace_still_lets_the_process_exit(
        db: Path) -> None:
    async def create() -> None:  # the history file, so the child's lock has a file
        async with BatchMetrics("first", store=db):
            pass

    anyio.run(create)
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-c", _LOCKED_PAST_GRACE, str(db)],
                          capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.startswith("TimeoutError:"), done.stdout + done.stderr
    # the deadline, the grace, letting go, and the interpreter's start and end: not the
    # 30 s busy timeout, nor the 40 s the other writer holds the lock
    assert time.monotonic() - t0 < 10
    # the store's thread ended with the loop still there to hear of it
    assert "Event loop is closed" not in done.stderr, done.stderr
