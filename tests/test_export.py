"""JSON and CSV exports: their content, atomic replacement, and failures that leave no trace."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

from batchmetrics import BatchMetrics, ExportError, JsonlSink
from batchmetrics._render import FILE_COLUMNS

from .sinks import FailingSink


async def _mixed(m: BatchMetrics, n: int = 40, prefix: str = "") -> None:
    for i in range(n):
        name = f"{prefix}dir/file {i}, \"q\".wfm"
        if i % 10 == 3:
            await m.record_error(name, "OSError", f"read failed\nat {i}", duration=0.01)
        elif i % 10 == 7:
            await m.record_skip(name, reason="duplicate")
        else:
            await m.record_file(name, duration=0.001 * (i + 1), samples=100 * i,
                                measurements=i % 4, bytes_processed=512 * i,
                                memory_peak=(1 << 20) if i % 5 == 0 else None)


#: Tests that hold for both exports.
both_kinds = pytest.mark.parametrize("kind", ["json", "csv"])


def _export_of(m: BatchMetrics, kind: str) -> Callable[[Path], Coroutine[Any, Any, None]]:
    """``m.export_json`` or ``m.export_csv``, for tests run on both kinds."""
    return m.export_json if kind == "json" else m.export_csv


def _temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".")
                  and p.name.endswith(".tmp"))


@pytest.mark.asyncio
async def test_json_export_holds_summary_files_and_state(tmp_path: Path) -> None:
    async with BatchMetrics(batch_id="export-json") as m:
        await _mixed(m)
    path = tmp_path / "metrics.json"
    await m.export_json(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert set(data) == {"summary", "files", "state"}
    assert data["summary"] == m.summary().to_dict()
    assert data["files"] == m.get_file_metrics()
    assert data["state"] == m.state_dict()
    assert len(data["files"]) == data["summary"]["total_files"] == 40
    assert _temp_files(tmp_path) == []


@pytest.mark.asyncio
async def test_json_export_accepts_str_paths_and_replaces_the_previous_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "metrics.json"
    path.write_text("old content", encoding="utf-8")
    async with BatchMetrics() as m:
        await _mixed(m, 5)
    await m.export_json(str(path))
    assert json.loads(path.read_text(encoding="utf-8"))["summary"]["total_files"] == 5


@pytest.mark.asyncio
async def test_csv_export_parses_with_one_row_per_file(tmp_path: Path) -> None:
    async with BatchMetrics() as m:
        await _mixed(m)
    path = tmp_path / "metrics.csv"
    await m.export_csv(path)
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        assert tuple(reader.fieldnames or ()) == FILE_COLUMNS
    expected = m.get_file_metrics()
    assert len(rows) == len(expected) == 40
    for row, want in zip(rows, expected, strict=True):
        # csv has no types: compare as DictWriter writes them (None as "")
        assert row == {k: "" if v is None else str(v) for k, v in want.items()}
    assert _temp_files(tmp_path) == []


@pytest.mark.asyncio
async def test_csv_export_of_no_files_writes_the_header_only(tmp_path: Path) -> None:
    async with BatchMetrics() as m:
        pass
    path = tmp_path / "empty.csv"
    await m.export_csv(path)
    with path.open(newline="", encoding="utf-8") as f:
        assert list(csv.reader(f)) == [list(FILE_COLUMNS)]


@pytest.mark.asyncio
async def test_export_while_running_reflects_what_was_folded(tmp_path: Path) -> None:
    path = tmp_path / "live.json"
    async with BatchMetrics() as m:
        await _mixed(m, 20)
        await m.snapshot()
        await m.export_json(path)
        data = json.loads(path.read_text(encoding="utf-8"))
        assert data["summary"]["state"] == "running"
        assert data["summary"]["total_files"] == len(data["files"]) == 20
        await _mixed(m, 5, prefix="more/")
    await m.export_json(path)
    assert len(json.loads(path.read_text(encoding="utf-8"))["files"]) == 25


@pytest.mark.asyncio
async def test_keep_files_false_exports_json_without_rows_and_refuses_csv(
    tmp_path: Path,
) -> None:
    async with BatchMetrics(keep_files=False) as m:
        await _mixed(m)
    path = tmp_path / "agg.json"
    await m.export_json(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["files"] == []
    assert data["state"] == m.state_dict()
    assert data["summary"] == m.summary().to_dict()
    with pytest.raises(RuntimeError, match="keep_files"):
        await m.export_csv(tmp_path / "agg.csv")
    assert not (tmp_path / "agg.csv").exists()
    assert _temp_files(tmp_path) == []


@pytest.mark.asyncio
async def test_readers_see_the_old_or_the_new_json_never_a_partial_one(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    stop = threading.Event()
    seen: list[int] = []
    problems: list[str] = []
    exported: set[int] = set()

    def reader() -> None:
        while True:  # at least one read, then until the exports are done
            text = path.read_text(encoding="utf-8")
            try:
                data = json.loads(text)
            except ValueError as exc:
                problems.append(f"{len(text)} bytes: {exc}")
            else:
                if len(data["files"]) != data["summary"]["total_files"]:
                    problems.append("files and summary disagree")
                seen.append(len(data["files"]))
            if stop.is_set():
                return
            time.sleep(0.02)  # let the exporting thread have the GIL now and then

    async with BatchMetrics(buffer_size=4096) as m:
        for i in range(20_000):
            await m.record_file(f"batch/{i:05d}.wfm", duration=0.001 + i * 1e-8, samples=i)
        await m.snapshot()
        await m.export_json(path)
        exported.add(20_000)
        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.to_thread.run_sync, reader)
            for round_ in range(4):
                for i in range(500):
                    await m.record_file(f"more/{round_}/{i}.wfm", duration=0.002)
                await m.snapshot()
                exported.add(20_000 + 500 * (round_ + 1))
                await m.export_json(path)
            stop.set()
    assert problems == []
    assert seen
    assert set(seen) <= exported
    assert _temp_files(tmp_path) == []


@pytest.mark.asyncio
@both_kinds
async def test_export_onto_a_directory_raises_export_error_and_leaves_it_intact(
    tmp_path: Path, kind: str
) -> None:
    target = tmp_path / f"metrics.{kind}"
    target.mkdir()
    (target / "keep.txt").write_text("mine", encoding="utf-8")
    async with BatchMetrics() as m:
        await _mixed(m, 5)
    export = _export_of(m, kind)
    with pytest.raises(ExportError) as info:
        await export(target)
    assert str(target) in str(info.value)
    assert isinstance(info.value, OSError)
    assert target.is_dir()
    assert (target / "keep.txt").read_text(encoding="utf-8") == "mine"
    assert _temp_files(tmp_path) == []


@pytest.mark.asyncio
@both_kinds
@pytest.mark.parametrize("link", [False, True])
async def test_export_onto_a_fifo_is_refused_and_leaves_it_a_fifo(
        tmp_path: Path, kind: str, link: bool) -> None:
    # it was replaced by a regular file: a reader waiting on the FIFO never got a byte
    # (and, as root, an export to /dev/null replaced the system's /dev/null)
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    target = fifo
    if link:
        target = tmp_path / "link"
        target.symlink_to(fifo)
    async with BatchMetrics("b") as m:
        await _mixed(m, 5)
    with pytest.raises(ExportError, match=r"could not write .*: it is not a regular file"):
        await (m.export_json(target) if kind == "json" else m.export_csv(target))
    assert fifo.is_fifo()
    assert target.is_symlink() == link
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({"out.fifo", target.name})


@pytest.mark.asyncio
@both_kinds
async def test_an_export_keeps_the_permissions_of_the_file_it_replaces(
        tmp_path: Path, kind: str) -> None:
    # a private export came back readable by everyone (0o644 under umask 022)
    out = tmp_path / f"private.{kind}"
    out.write_text("old")
    out.chmod(0o600)
    async with BatchMetrics("b") as m:
        await m.record_error("a.wfm", "PermissionError", "token=s3cret rejected")
    await (m.export_json(out) if kind == "json" else m.export_csv(out))
    assert "s3cret" in out.read_text()
    assert out.stat().st_mode & 0o777 == 0o600
    fresh = tmp_path / f"fresh.{kind}"
    await (m.export_json(fresh) if kind == "json" else m.export_csv(fresh))
    umask = os.umask(0)
    os.umask(umask)
    assert fresh.stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.asyncio
@both_kinds
async def test_export_into_a_missing_folder_raises_export_error(
    tmp_path: Path, kind: str
) -> None:
    target = tmp_path / "no-such-folder" / f"metrics.{kind}"
    async with BatchMetrics() as m:
        await _mixed(m, 5)
    export = _export_of(m, kind)
    with pytest.raises(ExportError, match="no-such-folder"):
        await export(target)
    assert not target.parent.exists()
    assert _temp_files(tmp_path) == []


_FILL_THEN_FAIL = """
import resource, signal, sys
import anyio
from batchmetrics import BatchMetrics, ExportError

async def main(path: str) -> None:
    async with BatchMetrics() as m:
        for i in range(10):
            await m.record_file(f"f{i}.wfm", duration=0.1)
        await m.snapshot()
        await m.export_csv(path)  # small: it fits under the limit below
        for i in range(20_000):
            await m.record_file(f"more-{i}.wfm", duration=0.1)
    # files may not grow past 64 KiB from now on: a write past it fails (EFBIG)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, 1 << 16))
    try:
        await m.export_csv(path)
    except ExportError as exc:
        print("ExportError:", exc)

anyio.run(main, sys.argv[1])
"""


@pytest.mark.skipif(os.name != "posix", reason="needs RLIMIT_FSIZE")
def test_export_failing_midway_leaves_the_previous_file_intact(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    done = subprocess.run([sys.executable, "-c", _FILL_THEN_FAIL, str(path)],
                          capture_output=True, text=True, timeout=120, check=True)
    # the second export got past 64 KiB of its temp file, then failed
    assert done.stdout.startswith("ExportError:"), done.stdout + done.stderr
    assert "File too large" in done.stdout
    assert str(path) in done.stdout
    with path.open(newline="", encoding="utf-8") as f:  # the first export, whole
        assert [r["filename"] for r in csv.DictReader(f)] == [f"f{i}.wfm" for i in range(10)]
    assert _temp_files(tmp_path) == []


@pytest.mark.asyncio
@both_kinds
async def test_cancelled_export_leaves_the_previous_file_and_no_temp_file(
    tmp_path: Path, kind: str
) -> None:
    # the temp file's removal used to be cancelled along with the export
    path = tmp_path / f"metrics.{kind}"
    path.write_text("previous export", encoding="utf-8")
    async with BatchMetrics() as m:
        for i in range(50_000):
            await m.record_file(f"batch/{i:05d}.wfm", duration=0.001, samples=i)
    export = _export_of(m, kind)
    for _ in range(5):  # where the cancellation lands varies: try a few places
        scope = anyio.CancelScope()

        async def run_export(scope: anyio.CancelScope = scope) -> None:
            with scope:
                await export(path)

        async with anyio.create_task_group() as tg:
            tg.start_soon(run_export)
            with anyio.fail_after(30):  # the export is midway once its temp file exists
                while not _temp_files(tmp_path):  # noqa: ASYNC110 (polls the folder)
                    await anyio.sleep(0.001)
            scope.cancel()
        assert scope.cancelled_caught
        assert _temp_files(tmp_path) == []
        assert path.read_text(encoding="utf-8") == "previous export"
    await export(path)  # a later export still works
    assert path.read_text(encoding="utf-8") != "previous export"
    assert _temp_files(tmp_path) == []


@pytest.mark.asyncio
async def test_atomic_writes_take_the_longest_file_names(tmp_path: Path) -> None:
    # A name of 250 bytes is valid; its temp file (".name.<token>.tmp") used to be too
    # long for the file system, so every export and summary-file write failed.
    long = "é" * 100 + "x" * 41 + ".json"  # 246 bytes in UTF-8
    summary = tmp_path / ("s" * 245 + ".json")
    async with BatchMetrics("long", summary_path=summary, interval=0.01) as m:
        await m.record_file("a.wfm", duration=0.1)
        await anyio.sleep(0.05)  # a periodic write or two
    await m.export_json(tmp_path / long)
    await m.export_csv(tmp_path / (long[:-5] + ".csv"))
    assert json.loads((tmp_path / long).read_text(encoding="utf-8"))["summary"]["total_files"] == 1
    assert json.loads(summary.read_text(encoding="utf-8")) == m.summary().to_dict()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [long, long[:-5] + ".csv", summary.name])  # no temp file left behind


@both_kinds
def test_an_export_cancelled_just_before_its_loop_ends_leaves_no_temp_file(
        tmp_path: Path, kind: str) -> None:
    # The open of the temp file was still in its thread when the caller was cancelled
    # and the loop then closed: the file came after, and nobody removed it.
    async def once(delay: float) -> None:
        async with BatchMetrics("x") as m:
            await m.record_file("a.wfm", duration=0.1)
        export = _export_of(m, kind)
        async with anyio.create_task_group() as tg:
            tg.start_soon(export, tmp_path / f"out.{kind}")
            await anyio.sleep(delay)
            tg.cancel_scope.cancel()

    for i in range(100):
        anyio.run(once, i % 10 * 0.0001)
    assert _temp_files(tmp_path) == []


@pytest.mark.asyncio
async def test_json_outputs_write_null_where_a_rate_is_not_finite(tmp_path: Path) -> None:
    # samples over a subnormal duration is inf: json.dumps wrote Infinity, not JSON
    log = tmp_path / "files.jsonl"
    async with BatchMetrics("tiny", sinks=[JsonlSink(log, full=True)]) as m:
        await m.record_file("a.wfm", duration=5e-324, samples=1)
        await m.record_file("b.wfm", duration=0.5, samples=10)
    await m.export_json(tmp_path / "out.json")

    def strict(text: str) -> Any:
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))

    rows = strict((tmp_path / "out.json").read_text(encoding="utf-8"))["files"]
    logged = [strict(line) for line in log.read_text(encoding="utf-8").splitlines()]
    assert [r["samples_per_second"] for r in rows] == [None, 20.0]
    assert logged == rows


@pytest.mark.asyncio
async def test_exports_while_running_hold_every_call_that_returned(tmp_path: Path) -> None:
    # the JSON export took the summary before the consumer had run: 0 files, while the
    # CSV written right after it had every row
    async with BatchMetrics("mid-run") as m:
        for i in range(1000):
            await m.record_file(f"f{i}.wfm", duration=0.01, samples=2)
        await m.export_json(tmp_path / "m.json")
        await m.export_csv(tmp_path / "m.csv")
        data = json.loads((tmp_path / "m.json").read_text(encoding="utf-8"))
        assert data["summary"]["total_files"] == len(data["files"]) == 1000
        assert data["summary"]["state"] == "running"
        assert data["state"]["samples"] == 2000
        with (tmp_path / "m.csv").open(newline="", encoding="utf-8") as f:
            assert len(list(csv.DictReader(f))) == 1000


@pytest.mark.asyncio
async def test_exports_after_the_consumer_failed_hold_what_it_counted(tmp_path: Path) -> None:
    # the exports' snapshot raised "cannot record" once the consumer had failed
    with pytest.raises(RuntimeError, match="consumer of batch 'failed' failed"):  # noqa: PT012
        async with BatchMetrics("failed", sinks=[FailingSink()]) as m:
            await m.record_file("a.wfm", duration=0.1)
            with pytest.raises(RuntimeError, match="consumer failed"):
                await m.snapshot()
            await m.export_json(tmp_path / "m.json")
            await m.export_csv(tmp_path / "m.csv")
    data = json.loads((tmp_path / "m.json").read_text(encoding="utf-8"))
    assert data["summary"]["total_files"] == len(data["files"]) == 1
    assert (tmp_path / "m.csv").read_text(encoding="utf-8").count("\n") == 2
