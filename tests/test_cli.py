"""The ``batchmetrics`` console script, run in subprocesses on real SQLite files."""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import io
import json
import os
import random
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from batchmetrics import BatchMetrics, History, _cli

SCRIPT = Path(sys.executable).parent / "batchmetrics"
COMMANDS = ["stats", "list", "files", "compare", "watch", "merge", "demo"]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "BATCHMETRICS_DB"}
    env.update(extra)
    return env


def cli(*args: str | Path, db: Path | None = None, cwd: Path | None = None,
        env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the installed console script; ``--db`` first when ``db`` is given."""
    cmd = [str(SCRIPT), *(["--db", str(db)] if db is not None else []), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env=env if env is not None else clean_env(), check=False)


async def record_run(m: BatchMetrics, n: int, *, slow: float = 1.0, seed: int = 0) -> None:
    rng = random.Random(seed)
    for i in range(n):
        duration = rng.lognormvariate(-4.0, 0.5) * slow
        if i % 10 == 3:
            await m.record_error(f"f{i:04d}.wfm", "ValueError" if i % 20 == 3 else "OSError",
                                 f"bad {i}", duration=duration)
        elif i % 25 == 7:
            await m.record_skip(f"f{i:04d}.wfm", reason="duplicate")
        else:
            await m.record_file(f"f{i:04d}.wfm", duration=duration, samples=1000 + i,
                                measurements=i % 4, bytes_processed=4096)


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, Any]]]:
    """A history with three runs; returns its path and each run's final summary dict."""
    db = tmp_path_factory.mktemp("cli") / "history.db"
    summaries: dict[str, dict[str, Any]] = {}

    async def build() -> None:
        async with BatchMetrics("nightly-001", store=db, store_files=True, total_files=200) as m:
            await record_run(m, 200)
        summaries["nightly-001"] = m.summary().to_dict()
        async with BatchMetrics("nightly-002", store=db, store_files=True) as m:
            await record_run(m, 200, slow=1.5, seed=1)
        summaries["nightly-002"] = m.summary().to_dict()
        try:
            async with BatchMetrics("adhoc-failed", store=db) as m:
                await record_run(m, 20)
                raise RuntimeError("the job broke")
        except RuntimeError:
            summaries["adhoc-failed"] = m.summary().to_dict()

    anyio.run(build)
    return db, summaries


# -- help and entry points --------------------------------------------------------------------


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_every_command_has_help(command: str) -> None:
    result = cli(*([command] if command else []), "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: batchmetrics")


def test_python_dash_m_runs_the_same_command_line(
        history: tuple[Path, dict[str, dict[str, Any]]]) -> None:
    db, _ = history
    result = subprocess.run([sys.executable, "-m", "batchmetrics", "--db", str(db), "list"],
                            capture_output=True, text=True, env=clean_env(), check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout == cli("list", db=db).stdout


# -- stats ----------------------------------------------------------------------------------------


def test_stats_json_equals_the_library_summary(
        history: tuple[Path, dict[str, dict[str, Any]]]) -> None:
    db, summaries = history
    for batch_id, summary in summaries.items():
        result = cli("stats", batch_id, "--json", db=db)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == summary


def test_stats_prints_a_readable_summary(
        history: tuple[Path, dict[str, dict[str, Any]]]) -> None:
    db, summaries = history
    result = cli("stats", "nightly-001", db=db)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    s = summaries["nightly-001"]
    assert out.startswith("Batch nightly-001\n")
    assert "status       finished" in out
    assert f"total        {s['total_files']}" in out
    assert f"errors       {s['error_count']}  ({s['errors']['rate_percent']:.2f}%)" in out
    for label in ("median", "p90", "p99", "files/s", "ValueError", "OSError", "Slowest files"):
        assert label in out


def test_stats_counts_errors_of_types_past_the_cap_on_a_line_of_their_own(
        tmp_path: Path) -> None:
    db = tmp_path / "h.db"

    async def run() -> None:
        async with BatchMetrics("capped", store=db, max_error_types=1) as m:
            await m.record_error("a", "OSError", "gone")
            for i in range(3):
                await m.record_error(f"u{i}", f"HTTP 404 /item/{i}", "not found")

    anyio.run(run)
    result = cli("stats", "capped", db=db)
    assert result.returncode == 0, result.stderr
    assert re.search(r"\n  OSError +1  e\.g\. gone\n  \(other types\) +3  of types after "
                     r"the first 1\n", result.stdout), result.stdout


def test_stats_shows_progress_of_a_run_that_ended_short_of_its_total(tmp_path: Path) -> None:
    # shown only while running: a job that stopped at 42 of 50 files did not say so
    db = tmp_path / "h.db"

    async def run() -> None:
        async with BatchMetrics("short", store=db, total_files=50) as m:
            for i in range(42):
                await m.record_file(f"f{i}.wfm", duration=0.01)
        async with BatchMetrics("whole", store=db, total_files=3) as m:
            for i in range(3):
                await m.record_file(f"f{i}.wfm", duration=0.01)

    anyio.run(run)
    short = cli("stats", "short", db=db)
    assert short.returncode == 0, short.stderr
    assert re.search(r"\n  progress +42 of 50 \(84\.0%\)\n", short.stdout), short.stdout
    assert "progress" not in cli("stats", "whole", db=db).stdout  # all done: nothing to add


def test_stats_of_a_failed_run_says_failed(
        history: tuple[Path, dict[str, dict[str, Any]]]) -> None:
    db, _ = history
    result = cli("stats", "adhoc-failed", db=db)
    assert result.returncode == 0, result.stderr
    assert "status       failed" in result.stdout


# -- list -----------------------------------------------------------------------------------------


def test_list_shows_recent_runs_newest_first(
        history: tuple[Path, dict[str, dict[str, Any]]]) -> None:
    db, summaries = history
    result = cli("list", db=db)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["BATCH", "STATUS", "STARTED", "FILES", "ERRORS", "DURATION",
                                "FILES/S"]
    rows = [line.split() for line in lines[2:]]
    assert [r[0] for r in rows] == ["adhoc-failed", "nightly-002", "nightly-001"]
    assert [r[1] for r in rows] == ["failed", "finished", "finished"]
    first = summaries["nightly-001"]
    assert rows[2][4] == str(first["total_files"])
    assert rows[2][5] == f"{first['errors']['rate_percent']:.2f}%"


def test_list_filters_limits_and_prints_json(
        history: tuple[Path, dict[str, dict[str, Any]]]) -> None:
    db, summaries = history
    failed = cli("list", "--status", "failed", db=db)
    assert [line.split()[0] for line in failed.stdout.splitlines()[2:]] == ["adhoc-failed"]
    one = cli("list", "-n", "1", "--json", db=db)
    assert one.returncode == 0, one.stderr
    (row,) = json.loads(one.stdout)
    s = summaries["adhoc-failed"]
    assert row["batch_id"] == "adhoc-failed"
    assert row["status"] == "failed"
    assert row["total_files"] == s["total_files"]
    assert row["files_per_second"] == s["throughput"]["files_per_second"]


def test_list_status_reads_only_the_runs_it_lists(tmp_path: Path) -> None:
    # --status loaded and parsed every run (summary and state) to filter in Python: a
    # damaged run it would not list failed the listing, and a large history took seconds
    db = tmp_path / "h.db"
    ids = ["old-finished", "failed", "cancelled", "live", "dead", "stale", "new-finished"]

    async def build() -> None:
        for batch_id in ids:
            async with BatchMetrics(batch_id, store=db) as m:
                await record_run(m, 5)

    anyio.run(build)
    now = time.time()
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        for batch_id, status, host, pid, updated in (
                ("failed", "failed", None, None, None),
                ("cancelled", "cancelled", None, None, None),
                ("live", "running", "elsewhere", None, now),  # checkpoints still coming
                ("dead", "running", socket.gethostname(), 2**22 + 12345, now),  # no process
                ("stale", "running", "elsewhere", None, now - 3600)):  # checkpoints stopped
            conn.execute("UPDATE runs SET status = ?, host = coalesce(?, host), "
                         "pid = coalesce(?, pid), updated_at = coalesce(?, updated_at) "
                         "WHERE batch_id = ?", (status, host, pid, updated, batch_id))
        conn.execute("UPDATE runs SET state_json = '[' WHERE batch_id = 'failed'")
        conn.execute("UPDATE runs SET summary_json = '{' WHERE batch_id = 'old-finished'")
    conn.close()

    def listed(*options: str) -> tuple[int, list[tuple[str, str]], str]:
        result = cli("list", "--json", *options, db=db)
        rows = json.loads(result.stdout)
        return result.returncode, [(r["batch_id"], r["status"]) for r in rows], result.stderr

    assert listed("--status", "running") == (0, [("live", "running")], "")
    assert listed("--status", "interrupted") == (
        0, [("stale", "interrupted"), ("dead", "interrupted")], "")
    assert listed("--status", "interrupted", "-n", "1") == (0, [("stale", "interrupted")], "")
    assert listed("--status", "cancelled") == (0, [("cancelled", "cancelled")], "")
    # the listing does not use the state: a damaged one does not hide its run
    assert listed("--status", "failed") == (0, [("failed", "failed")], "")
    # the damaged old run is not read when the newest finished one is all that is asked
    assert listed("--status", "finished", "-n", "1") == (0, [("new-finished", "finished")], "")
    code, rows, err = listed("--status", "finished")
    assert (code, rows) == (2, [("new-finished", "finished")])
    assert err.startswith(f"batchmetrics: run 'old-finished' in {db} is damaged: ")


def test_list_watch_and_stats_show_the_same_unrounded_wall_time(tmp_path: Path) -> None:
    # list (and watch's line) showed the summary's duration, rounded to the millisecond
    # (32.0 ms), while stats showed the run's own 32.4 ms
    from .clock import FakeClock

    db = tmp_path / "h.db"
    clock = FakeClock(1.5e9)

    async def build() -> None:
        async with BatchMetrics("r", store=db, clock=clock) as m:
            await m.record_file("a.wfm", duration=0.01)
            clock.advance(0.0324)

    anyio.run(build)
    listed = cli("list", db=db).stdout.splitlines()
    assert listed[2].split()[6:8] == ["32.4", "ms"], listed
    (row,) = json.loads(cli("list", "--json", db=db).stdout)
    assert row["duration_seconds"] == pytest.approx(0.0324, abs=1e-6)  # stamps near 1.5e9
    assert re.search(r"wall time\s+32\.4 ms\n", cli("stats", "r", db=db).stdout)
    assert cli("watch", "r", db=db).stdout.splitlines()[0].endswith("| 32.4 ms")


def test_db_option_is_accepted_after_the_command_too(
        history: tuple[Path, dict[str, dict[str, Any]]]) -> None:
    db, _ = history
    assert cli("list", "--db", db).stdout == cli("list", db=db).stdout


def test_the_db_comes_from_the_environment_else_the_current_folder(
        history: tuple[Path, dict[str, dict[str, Any]]], tmp_path: Path) -> None:
    db, _ = history
    from_env = cli("list", env=clean_env(BATCHMETRICS_DB=str(db)), cwd=tmp_path)
    assert from_env.returncode == 0, from_env.stderr
    assert "nightly-001" in from_env.stdout
    default = cli("list", cwd=tmp_path)
    assert default.returncode == 2
    assert "batchmetrics.db" in default.stderr
    (tmp_path / "batchmetrics.db").write_bytes(db.read_bytes())
    here = cli("list", cwd=tmp_path)
    assert here.returncode == 0, here.stderr
    assert "nightly-001" in here.stdout


# -- files ----------------------------------------------------------------------------------------


def test_files_lists_a_runs_errors(history: tuple[Path, dict[str, dict[str, Any]]]) -> None:
    db, summaries = history
    result = cli("files", "nightly-001", "--status", "error", db=db)
    assert result.returncode == 0, result.stderr
    rows = result.stdout.splitlines()[2:]
    assert len(rows) == summaries["nightly-001"]["error_count"]
    assert rows[0].split()[:2] == ["f0003.wfm", "error"]
    assert rows[0].endswith("ValueError: bad 3")


def test_files_ranks_the_slowest_and_prints_json_lines(
        history: tuple[Path, dict[str, dict[str, Any]]]) -> None:
    db, _ = history
    result = cli("files", "nightly-002", "--slowest", "3", "--json", db=db)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 3
    with History(db) as h:
        every = sorted(h.files("nightly-002"), key=lambda r: r.duration, reverse=True)
    assert [r["filename"] for r in rows] == [r.filename for r in every[:3]]
    limited = cli("files", "nightly-002", "-n", "5", db=db)
    assert len(limited.stdout.splitlines()) == 2 + 5


def test_files_of_a_run_without_stored_rows_is_an_error_saying_how_to_keep_them(
        history: tuple[Path, dict[str, dict[str, Any]]]) -> None:
    # it exited 0 with nothing on stdout: a script took it for "no such files"
    db, _ = history
    for options in ([], ["--status", "error"], ["--json"], ["--slowest", "3"]):
        result = cli("files", "adhoc-failed", *options, db=db)
        assert result.returncode == 2, options
        assert result.stdout == "", options
        (line,) = result.stderr.splitlines()
        assert line.startswith("batchmetrics: batch 'adhoc-failed' kept no per-file rows"), line
        assert "store_files=True" in line


def test_files_matching_none_of_the_stored_rows_is_an_empty_answer(tmp_path: Path) -> None:
    db = tmp_path / "h.db"

    async def build() -> None:
        async with BatchMetrics("clean", store=db, store_files=True) as m:
            for i in range(5):
                await m.record_file(f"f{i}.wfm", duration=0.01)
        async with BatchMetrics("no-files", store=db, store_files=True):
            pass

    anyio.run(build)
    for args in (["clean", "--status", "error"], ["clean", "--status", "error", "--json"],
                 ["no-files"], ["no-files", "--json"]):
        result = cli("files", *args, db=db)
        assert result.returncode == 0, (args, result.stderr)
        assert result.stderr == "", args
        if "--json" in args:
            assert result.stdout == ""
        else:
            assert result.stdout.splitlines()[0].split() == ["FILE", "STATUS", "DURATION",
                                                             "SAMPLES", "BYTES",
                                                             "ERROR/REASON"]
            assert len(result.stdout.splitlines()) == 2  # the header and its rule


# -- compare --------------------------------------------------------------------------------------


def test_compare_shows_the_change_of_each_measure(
        history: tuple[Path, dict[str, dict[str, Any]]]) -> None:
    db, _ = history
    result = cli("compare", "nightly-001", "nightly-002", db=db)
    assert result.returncode == 0, result.stderr
    lines = {line.split("  ")[0]: line for line in result.stdout.splitlines()[2:]}
    for measure in ("files/s", "p50 per file", "p90 per file", "p99 per file", "error rate"):
        assert measure in lines
    assert "%" in lines["p90 per file"]
    assert "REGRESSION" not in result.stdout  # no threshold given


def test_compare_fails_on_a_regression_beyond_the_threshold(
        history: tuple[Path, dict[str, dict[str, Any]]]) -> None:
    db, _ = history
    # nightly-002's files take 1.5x as long: p50/p90/p99 are ~50% worse
    worse = cli("compare", "nightly-001", "nightly-002", "--fail-on-regression", "10", db=db)
    assert worse.returncode == 1
    assert "REGRESSION" in worse.stdout
    assert "regression beyond 10%" in worse.stderr
    assert "p50 per file" in worse.stderr
    better = cli("compare", "nightly-002", "nightly-001", "--fail-on-regression", "10", db=db)
    assert "p50 per file" not in better.stderr
    same = cli("compare", "nightly-001", "nightly-001", "--fail-on-regression", "0", db=db)
    assert same.returncode == 0, same.stderr


def test_compare_json_reports_every_measure(
        history: tuple[Path, dict[str, dict[str, Any]]]) -> None:
    db, summaries = history
    result = cli("compare", "nightly-001", "nightly-002", "--json", db=db)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    measures = {m["measure"]: m for m in report["measures"]}
    p50 = measures["p50 per file"]
    assert p50["change_percent"] == pytest.approx((p50["b"] - p50["a"]) / p50["a"] * 100)
    assert p50["change_percent"] == pytest.approx(50, abs=15)
    assert measures["files"]["a"] == summaries["nightly-001"]["total_files"]


def _reject_constant(token: str) -> Any:
    raise ValueError(f"not JSON: {token}")


def test_compare_json_is_strict_json_when_errors_appear_from_none(tmp_path: Path) -> None:
    db = tmp_path / "h.db"

    async def build() -> None:
        for batch_id, errors in (("clean", 0), ("broken", 3)):
            async with BatchMetrics(batch_id, store=db) as m:
                for i in range(40):
                    await m.record_file(f"f{i}", duration=0.01 * (1 + i % 4), samples=10)
                for i in range(errors):
                    await m.record_error(f"e{i}", "OSError", "read failed", duration=0.01)

    anyio.run(build)
    result = cli("compare", "clean", "broken", "--json", "--fail-on-regression", "10", db=db)
    assert result.returncode == 1  # errors from none: infinitely worse
    report = json.loads(result.stdout, parse_constant=_reject_constant)
    rate = {m["measure"]: m for m in report["measures"]}["error rate"]
    assert rate["a"] == 0.0
    assert rate["b"] == pytest.approx(100 * 3 / 43)
    assert rate["change_percent"] is None
    assert rate["worse_percent"] is None
    assert rate["regression"] is True
    # (files/s, from wall time, may differ too on a busy machine)
    assert "error rate +inf%" in report["regressions"]
    text = cli("compare", "clean", "broken", db=db)
    assert "+inf%" in {line.split("  ")[0]: line for line in text.stdout.splitlines()}[
        "error rate"]
    back = cli("compare", "broken", "clean", "--json", db=db)  # errors gone: -100%, a number
    assert back.returncode == 0, back.stderr
    measures = json.loads(back.stdout, parse_constant=_reject_constant)["measures"]
    assert {m["measure"]: m for m in measures}["error rate"]["change_percent"] == -100.0


# -- watch ----------------------------------------------------------------------------------------


def test_watch_of_an_ended_run_prints_it_once_and_exits_with_its_outcome(
        history: tuple[Path, dict[str, dict[str, Any]]]) -> None:
    db, _ = history
    done = cli("watch", "nightly-001", db=db)
    assert done.returncode == 0, done.stderr
    first = done.stdout.splitlines()[0]
    assert first.startswith("nightly-001: finished | 200/200 files (100.0%)")
    assert "Batch nightly-001" in done.stdout
    failed = cli("watch", "adhoc-failed", db=db)
    assert failed.returncode == 1
    assert failed.stdout.startswith("adhoc-failed: failed")


RUNNING_CHILD = """
import sys, anyio
from batchmetrics import BatchMetrics

async def main(db: str) -> None:
    async with BatchMetrics("live-run", store=db, interval=0.1, total_files=300) as m:
        print("started", flush=True)
        for i in range(300):
            await m.record_file(f"f{i}", duration=0.004)
            await anyio.sleep(0.004)

anyio.run(main, sys.argv[1])
"""


@contextlib.contextmanager
def _running_child(db: Path) -> Iterator[subprocess.Popen[str]]:
    """A process recording batch 'live-run' into ``db``, once it has started; killed at
    the end if it is still running."""
    with subprocess.Popen([sys.executable, "-c", RUNNING_CHILD, str(db)],
                          stdout=subprocess.PIPE, text=True, env=clean_env()) as child:
        try:
            assert child.stdout is not None
            assert child.stdout.readline() == "started\n"
            yield child
        finally:
            child.kill()


def test_watch_follows_a_running_batch_until_it_ends(tmp_path: Path) -> None:
    db = tmp_path / "live.db"
    with _running_child(db) as child:
        result = cli("watch", "live-run", "--interval", "0.1", db=db, timeout=60)
        assert child.wait(timeout=60) == 0
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    running = [line for line in lines if line.startswith("live-run: running")]
    assert len(running) >= 2
    assert any(line.startswith("live-run: finished | 300/300 files") for line in lines)
    assert "Batch live-run" in result.stdout


# -- merge ----------------------------------------------------------------------------------------


def test_merge_refuses_to_write_over_one_of_its_inputs(tmp_path: Path) -> None:
    # `merge part-1.json -o part-1.json` replaced the export (summary, files, state) with
    # the merge (summary, state), exit 0
    async def export() -> None:
        for k in range(2):
            async with BatchMetrics(f"part-{k}", store_files=True) as m:
                await record_run(m, 30, seed=k)
            await m.export_json(tmp_path / f"part-{k}.json")

    anyio.run(export)
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.json").symlink_to(tmp_path / "part-1.json")
    before = {p.name: p.read_bytes() for p in tmp_path.glob("part-*.json")}
    for inputs, output in ((["part-1.json"], "part-1.json"),
                           (["part-0.json", "part-1.json"], "part-1.json"),
                           ([str(tmp_path / "part-1.json")], "sub/../part-1.json"),
                           (["part-0.json", "part-1.json"], "link.json"),
                           (["link.json"], str(tmp_path / "part-1.json"))):
        result = cli("merge", *inputs, "-o", output, cwd=tmp_path)
        assert result.returncode == 2, (inputs, output, result.stderr)
        assert result.stdout == ""
        assert result.stderr == (f"batchmetrics: cannot write {output}: it is the input "
                                 f"{inputs[-1]}; choose another -o\n"), result.stderr
        assert {p.name: p.read_bytes() for p in tmp_path.glob("part-*.json")} == before
        assert (tmp_path / "link.json").is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.json", "part-0.json",
                                                          "part-1.json", "sub"]  # no temp
    fine = cli("merge", "part-0.json", "part-1.json", "-o", "total.json", cwd=tmp_path)
    assert fine.returncode == 0, fine.stderr


def test_watch_wait_follows_a_batch_that_starts_after_it(tmp_path: Path) -> None:
    # a watcher could not be started before its batch: "no batch", exit 2 at once
    db = tmp_path / "later.db"  # not made yet either

    async def build() -> None:
        async with BatchMetrics("later", store=db) as m:
            await record_run(m, 20)

    with subprocess.Popen([str(SCRIPT), "--db", str(db), "watch", "later", "--wait", "60",
                           "--interval", "0.1"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=clean_env()) as watcher:
        try:
            assert watcher.stderr is not None
            assert watcher.stderr.readline() == (f"batchmetrics: no batch 'later' in {db} "
                                                 "yet; waiting up to 60 s\n")
            anyio.run(build)
            out, err = watcher.communicate(timeout=60)
        finally:
            watcher.kill()
    assert watcher.returncode == 0, err
    assert "later: finished | 20 files" in out, out
    assert "Batch later" in out


def test_watch_wait_gives_up_with_the_usual_answer(
        history: tuple[Path, dict[str, dict[str, Any]]], tmp_path: Path) -> None:
    db, _ = history
    late = cli("watch", "nightly-01", "--wait", "0.2", db=db)
    assert late.returncode == 2
    assert late.stdout == ""
    assert late.stderr.splitlines() == [
        f"batchmetrics: no batch 'nightly-01' in {db} yet; waiting up to 0.2 s",
        f"batchmetrics: no batch 'nightly-01' in {db}; did you mean 'nightly-001', "
        "'nightly-002'?"]
    # a file that is there but no history is not waited for (else the timeout ends this)
    (tmp_path / "garbage.db").write_bytes(b"not sqlite" * 500)
    garbage = cli("watch", "x", "--wait", "600", db=tmp_path / "garbage.db", timeout=60)
    assert garbage.returncode == 2
    assert "is not a batchmetrics history" in garbage.stderr


# -- demo -----------------------------------------------------------------------------------------


def test_demo_processes_sample_files_and_stores_the_run(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    result = cli("demo", "--files", "120", "--workers", "4", "--latency", "0.001",
                 "--batch-id", "demo-test", db=db, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Batch demo-test" in result.stdout
    assert f"batchmetrics --db {db} list" in result.stdout
    with History(db) as h:
        run = h.get("demo-test")
        assert run is not None
        rows = list(h.files("demo-test"))
    assert run.status == "finished"
    s = run.summary
    assert s["total_files"] == len(rows) == run.files_stored == 120  # duplicates included
    assert s["error_count"] > 0
    assert s["skip_count"] > 0
    assert s["processed_count"] > 100
    assert s["totals"]["bytes_processed"] > 0
    again = cli("demo", "--files", "5", "--batch-id", "demo-test", "--no-display", db=db)
    assert again.returncode == 2
    assert "already in" in again.stderr


def test_two_demos_started_at_once_get_their_own_batch_ids(tmp_path: Path) -> None:
    # the default id was the second of the start: one of two demos failed, "already in"
    db = tmp_path / "demo.db"
    cmd = [str(SCRIPT), "--db", str(db), "demo", "--files", "5", "--latency", "0.001",
           "--no-display"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=clean_env()) for _ in range(2)]
    # both, on a new file: one found it while the other was making it ("holds no history")
    ended = [(proc.returncode, err) for proc in procs
             for _, err in [proc.communicate(timeout=120)]]
    assert [code for code, _ in ended] == [0, 0], ended
    with History(db) as h:
        assert len(h.runs()) == 2


@pytest.mark.skipif(os.name != "posix", reason="sends SIGINT")
def test_ctrl_c_while_the_demo_makes_its_files_exits_130_and_leaves_no_files(
        tmp_path: Path) -> None:
    # the wait for the thread making the files was given up while it still wrote:
    # removing the folder failed (OSError: Directory not empty), a traceback and exit 1,
    # and thousands of files were left in /tmp
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = clean_env(TMPDIR=str(tmp))
    demo = subprocess.Popen([str(SCRIPT), "--db", str(tmp_path / "h.db"), "demo",
                             "--files", "100000", "--no-display"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 60
        while not any(len(list(d.iterdir())) > 50 for d in tmp.glob("batchmetrics-demo-*")):
            assert demo.poll() is None, demo.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        demo.send_signal(signal.SIGINT)
        _, err = demo.communicate(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.communicate()
    assert demo.returncode == 130, err
    assert "Traceback" not in err
    assert list(tmp.iterdir()) == []


def test_demo_without_rich_shows_progress_as_log_lines(tmp_path: Path) -> None:
    code = ("import sys; sys.modules['rich'] = None; from batchmetrics._cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    result = subprocess.run(
        [sys.executable, "-c", code, "--db", str(tmp_path / "d.db"), "demo", "--files", "30",
         "--latency", "0.001", "--batch-id", "plain"],
        capture_output=True, text=True, timeout=120, env=clean_env(), check=False)
    assert result.returncode == 0, result.stderr
    assert "finished: batch plain: 30/30 files (100.0%)" in result.stderr  # a duplicate among them
    assert "Batch plain" in result.stdout


# -- wording and alignment ----------------------------------------------------------------------


def test_counts_of_one_are_singular(tmp_path: Path) -> None:
    # "1 errors" in watch's line, "merged 1 states (1 files)"
    db = tmp_path / "h.db"

    async def build() -> None:
        async with BatchMetrics("one", store=db) as m:
            await m.record_error("a.wfm", "OSError", "gone", duration=0.01)
        await m.export_json(tmp_path / "one.json")

    anyio.run(build)
    line = cli("watch", "one", db=db).stdout.splitlines()[0]
    assert line.startswith("one: finished | 1 file | "), line
    assert " | 1 error, 0 skipped | " in line, line
    merged = cli("merge", tmp_path / "one.json", "-o", tmp_path / "out.json")
    assert merged.stderr == f"merged 1 state (1 file) into {tmp_path / 'out.json'}\n"


def test_files_heads_its_last_column_for_errors_and_skip_reasons_alike(
        history: tuple[Path, dict[str, dict[str, Any]]]) -> None:
    # a skip's reason was shown under ERROR
    db, _ = history
    lines = cli("files", "nightly-001", db=db).stdout.splitlines()
    assert lines[0].split()[-1] == "ERROR/REASON"
    assert lines[0].index("ERROR/REASON") == lines[2 + 7].index("duplicate")  # f0007, a skip
    assert lines[2 + 7].split()[:2] == ["f0007.wfm", "skipped"]


def test_stats_right_aligns_the_slowest_files_durations(tmp_path: Path) -> None:
    # left-aligned, a shorter duration shifted the status after it
    db = tmp_path / "h.db"

    async def build() -> None:
        async with BatchMetrics("r", store=db) as m:
            for name, duration in (("a.wfm", 1.5), ("b.wfm", 0.25), ("c.wfm", 0.009)):
                await m.record_file(name, duration=duration)
            await m.record_error("d.wfm", "OSError", "gone", duration=0.0005)

    anyio.run(build)
    out = cli("stats", "r", db=db).stdout.splitlines()
    slowest = out[out.index("Slowest files") + 1:]
    assert [line.split()[0] for line in slowest] == ["a.wfm", "b.wfm", "c.wfm", "d.wfm"]
    assert len({line.index("s  ") for line in slowest}) == 1, slowest  # the unit's end
    assert len({line.rindex("  ") for line in slowest}) == 1, slowest  # the status's start


def test_compare_prints_no_empty_column_and_no_negative_zero(
        history: tuple[Path, dict[str, dict[str, Any]]]) -> None:
    # without a regression the table ended in an empty column (a trailing rule of
    # spaces); the same runs' files/s was worse by -0.0 percent in the JSON
    db, _ = history
    for gate in ([], ["--fail-on-regression", "1000"]):
        text = cli("compare", "nightly-001", "nightly-002", *gate, db=db).stdout.splitlines()
        assert [line for line in text if line != line.rstrip()] == [], text
        assert text[0].split()[-1] == "CHANGE"
    report = json.loads(cli("compare", "nightly-001", "nightly-001", "--json", db=db).stdout)
    worse = [str(m["worse_percent"]) for m in report["measures"]]
    assert worse == ["0.0"] * len(worse), worse  # str: -0.0 == 0.0
    # a change of float noise (a mean summed in another order) is no change on screen
    assert [_cli.fmt_change(x) for x in (-1.7e-14, -0.04, -0.06, 3.0)] == \
        ["+0.0%", "+0.0%", "-0.1%", "+3.0%"]


# -- errors for people ---------------------------------------------------------------------------


def test_an_unknown_batch_id_exits_2_naming_the_closest(
        history: tuple[Path, dict[str, dict[str, Any]]]) -> None:
    db, _ = history
    for command in (["stats"], ["files"], ["watch"], ["compare", "nightly-001"]):
        result = cli(*command, "nightly-01", db=db)
        assert result.returncode == 2
        assert result.stdout == ""
        assert result.stderr.startswith("batchmetrics: no batch 'nightly-01'")
        assert "did you mean 'nightly-001', 'nightly-002'?" in result.stderr
    far = cli("stats", "zzz", db=db)
    assert far.returncode == 2
    assert "the most recent are 'adhoc-failed'" in far.stderr


def test_an_unknown_batch_id_in_a_large_history_still_names_the_closest(
        history: tuple[Path, dict[str, dict[str, Any]]], tmp_path: Path) -> None:
    # the suggestions compared the id with every batch id in the history (seconds for
    # tens of thousands); in a large one they come from the most recent ids and those
    # sorting next to the unknown one
    db = tmp_path / "h.db"
    db.write_bytes(history[0].read_bytes())
    # copies of a real run, the close one far back
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        columns = [c for _, c, *_ in conn.execute("PRAGMA table_info(runs)") if c != "id"]
        copy = ", ".join(c if c != "batch_id" else "?" for c in columns)
        conn.executemany(f"INSERT INTO runs ({', '.join(columns)}) SELECT {copy} FROM runs "
                         "WHERE batch_id = 'adhoc-failed'",
                         [(f"daily-{i:05d}",) for i in range(1200)])
    conn.close()
    result = cli("stats", "daily-00123x", db=db)
    assert result.returncode == 2
    assert "did you mean 'daily-00123', " in result.stderr, result.stderr
    assert "did you mean 'nightly-001', 'nightly-002'" in cli("stats", "nightly-01", db=db).stderr


@pytest.mark.parametrize("kind", ["missing", "folder", "garbage", "empty-sqlite", "fifo"])
def test_a_missing_or_damaged_history_is_one_clear_line(kind: str, tmp_path: Path) -> None:
    db = tmp_path / "history.db"
    if kind == "folder":
        db.mkdir()
    elif kind == "fifo":  # opening it to read waited for a writer: the command hung
        os.mkfifo(db)
    elif kind == "garbage":
        db.write_bytes(os.urandom(4096))
    elif kind == "empty-sqlite":
        import sqlite3

        sqlite3.connect(db).close()
        db.write_bytes(b"")
    for command in (["list"], ["stats", "x"], ["watch", "x"]):
        result = cli(*command, db=db, timeout=20)
        assert result.returncode == 2
        assert result.stdout == ""
        assert len(result.stderr.splitlines()) == 1, result.stderr
        assert result.stderr.startswith("batchmetrics: ")
        assert str(db) in result.stderr
        assert "Traceback" not in result.stderr


def test_bad_arguments_are_usage_errors(
        history: tuple[Path, dict[str, dict[str, Any]]]) -> None:
    db, _ = history
    for args in (["files", "nightly-001", "--status", "bogus"], ["list", "-n", "0"],
                 ["compare", "a"], ["nope"], []):
        result = cli(*args, db=db)
        assert result.returncode == 2, args
        assert "usage: batchmetrics" in result.stderr
        assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("args", "error"), [
    # past what SQLite's LIMIT and islice take (an OverflowError or ValueError traceback)
    (["list", "--limit", "99999999999999999999999"],
     "argument -n/--limit: must be at most 2**63 - 1, got 99999999999999999999999"),
    (["files", "nightly-001", "--limit", "9223372036854775808"],
     "argument -n/--limit: must be at most 2**63 - 1, got 9223372036854775808"),
    (["files", "nightly-001", "--slowest", "99999999999999999999999"],
     "argument --slowest: must be at most 2**63 - 1, got 99999999999999999999999"),
    # empty: it meant ./batchmetrics.db, or the default batch id, without a word
    (["--db=", "list"], "argument --db: must not be empty, got ''"),
    (["list", "--db="], "argument --db: must not be empty, got ''"),
    (["merge", "x.json", "--batch-id="], "argument --batch-id: must not be empty, got ''"),
    (["merge", "x.json", "-o", ""], "argument -o/--output: must not be empty, got ''"),
    (["demo", "--batch-id="], "argument --batch-id: must not be empty, got ''"),
])
def test_out_of_range_or_empty_options_are_usage_errors(
        history: tuple[Path, dict[str, dict[str, Any]]], tmp_path: Path,
        args: list[str], error: str) -> None:
    db, _ = history
    copy = tmp_path / "copy.db"  # $BATCHMETRICS_DB, which an empty --db fell back to
    copy.write_bytes(db.read_bytes())
    before = copy.read_bytes()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    result = cli(*args, cwd=cwd, env=clean_env(BATCHMETRICS_DB=str(copy)))
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("usage: batchmetrics")
    assert result.stderr.splitlines()[-1].endswith(f": error: {error}")
    assert list(cwd.iterdir()) == []  # no ./batchmetrics.db made
    assert copy.read_bytes() == before  # no demo run stored


def test_the_largest_limit_is_taken(history: tuple[Path, dict[str, dict[str, Any]]]) -> None:
    db, _ = history
    listed = cli("list", "--json", "--limit", str(2**63 - 1), db=db)
    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)) == 3
    rows = cli("files", "nightly-001", "--json", "--limit", str(2**63 - 1), "--slowest",
               str(2**63 - 1), db=db)
    assert rows.returncode == 0, rows.stderr
    assert len(rows.stdout.splitlines()) == 200


def test_list_of_an_empty_history_says_so(tmp_path: Path) -> None:
    db = tmp_path / "h.db"

    async def empty() -> None:
        from batchmetrics import Store

        store = Store(db)
        m = BatchMetrics("tmp")
        await store.begin(m)
        await store.finish(m, m.summary(), "finished")

    anyio.run(empty)
    import sqlite3

    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("DELETE FROM runs")
    conn.close()
    result = cli("list", db=db)
    assert result.returncode == 0
    assert result.stderr == "no runs\n"
    assert cli("stats", "x", db=db).stderr.endswith("the history is empty\n")


def test_the_cli_never_writes_to_the_history(
        history: tuple[Path, dict[str, dict[str, Any]]]) -> None:
    db, _ = history
    before = db.stat().st_mtime_ns, db.read_bytes()
    for args in (["list"], ["stats", "nightly-001"], ["files", "nightly-001"],
                 ["compare", "nightly-001", "nightly-002"]):
        assert cli(*args, db=db).returncode == 0
    time.sleep(0.01)
    assert (db.stat().st_mtime_ns, db.read_bytes()) == before


@pytest.mark.parametrize(("column", "value", "problem"), [
    ("summary_json", "{}", "its summary has no total_files"),
    ("summary_json", "[]", "its summary is list, not an object"),
    ("summary_json", '{"total_files": 1, "error_count": 0, "skip_count": 0, "state": "running",'
                     ' "errors": {"rate_percent": 0}, "timing": {}, "throughput": {}}',
     "its summary has no timing.total_duration_seconds"),
    ("state_json", "[]", "its state is list"),
])
def test_a_run_with_a_damaged_summary_or_state_is_one_clear_line(
        tmp_path: Path, column: str, value: str, problem: str) -> None:
    db = tmp_path / "history.db"

    async def build() -> None:
        for batch_id in ("r", "healthy"):
            async with BatchMetrics(batch_id, store=db) as m:
                await record_run(m, 20)

    anyio.run(build)
    conn = sqlite3.connect(db)
    with conn:
        conn.execute(f"UPDATE runs SET {column} = ? WHERE batch_id = 'r'", (value,))
    conn.close()
    for command in (["list"], ["list", "--json"], ["stats", "r"], ["stats", "--json", "r"],
                    ["watch", "r"]):
        result = cli(*command, db=db)
        if command[0] == "list" and column == "state_json":  # a listing does not read it
            assert (result.returncode, result.stderr) == (0, ""), command
            assert re.search(r'^r  |"batch_id": "r"', result.stdout, re.M), result.stdout
            continue
        assert result.returncode == 2, (command, result.stderr)
        assert result.stderr == f"batchmetrics: run 'r' in {db} is damaged: {problem}\n"
        # one damaged run does not hide the others
        assert ("healthy" in result.stdout) == (command[0] == "list"), command


@pytest.mark.parametrize(("old", "new"), [
    (b"\x00\xc0\xc0\xc0\x9a", b"\x07\xc0\xc0\xc0\x9a"),  # a status no record has
    (b"f100.wfm", b"f100.\xfffm"),  # a name that is not UTF-8
])
def test_a_damaged_file_row_is_one_clear_line(tmp_path: Path, old: bytes, new: bytes) -> None:
    # `files` crashed with a traceback (IndexError, UnicodeDecodeError) on such a row
    db = tmp_path / "history.db"

    async def build() -> None:
        async with BatchMetrics("r", store=db, store_files=True) as m:
            for i in range(200):
                await m.record_file(f"f{i}.wfm", duration=0.5, samples=i)

    anyio.run(build)
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        (packed,) = conn.execute("SELECT rows FROM file_packs").fetchone()
        at = packed.index(b"f100.wfm")
        # the row's status code (0) is followed by its three empty fields (nil nil nil)
        # and the next row's array header
        damaged = packed[:at] + packed[at:].replace(old, new, 1)
        assert damaged != packed
        conn.execute("UPDATE file_packs SET rows = ?", (damaged,))
    for command in (["files", "r"], ["files", "--json", "r"], ["files", "r", "--slowest", "3"]):
        result = cli(*command, db=db)
        assert result.returncode == 2, (command, result.stderr)
        (line,) = result.stderr.splitlines()
        assert line.startswith(f"batchmetrics: run 'r' in {db}: a pack of file rows is "
                               "damaged: "), line
        assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("field", "value"), [("start_ts", 1e300), ("end_ts", -1e300)])
def test_a_stored_state_with_a_stamp_no_date_can_show_is_one_clear_line(
        tmp_path: Path, field: str, value: float) -> None:
    db = tmp_path / "history.db"

    async def build() -> None:
        async with BatchMetrics("r", store=db) as m:
            await record_run(m, 20)

    anyio.run(build)
    conn = sqlite3.connect(db)
    with conn:
        (state_json,) = conn.execute("SELECT state_json FROM runs").fetchone()
        state = {**json.loads(state_json), field: value}
        conn.execute("UPDATE runs SET state_json = ?", (json.dumps(state),))
    conn.close()
    for command in (["stats", "r"], ["compare", "r", "r"], ["watch", "r"]):
        result = cli(*command, db=db)
        assert result.returncode == 2, (command, result.stderr)
        assert "Traceback" not in result.stderr
        (line,) = result.stderr.splitlines()
        assert line.startswith("batchmetrics: batch 'r' has a state this batchmetrics cannot "
                               f"read: bad aggregate state: {field} must be a Unix time")
        assert line.endswith(f"got {value!r}")


_KILLED = """
import os, signal, sys
import anyio
from batchmetrics import BatchMetrics

async def main(db):
    async with BatchMetrics("killed", store=db, interval=0.05) as m:
        for i in range(50):
            await m.record_file(f"f{i}", duration=0.01)
        await anyio.sleep(0.3)  # a checkpoint or more
        os.kill(os.getpid(), signal.SIGKILL)

anyio.run(main, sys.argv[1])
"""


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL")
def test_stats_json_of_a_killed_run_says_interrupted(tmp_path: Path) -> None:
    db = tmp_path / "history.db"
    done = subprocess.run([sys.executable, "-c", _KILLED, str(db)], timeout=60, check=False)
    assert done.returncode == -signal.SIGKILL
    stats = json.loads(cli("stats", "--json", "killed", db=db).stdout)
    listed = json.loads(cli("list", "--json", db=db).stdout)
    assert stats["state"] == listed[0]["status"] == "interrupted"
    assert stats["total_files"] == 50


_KILLED_WITH_ROWS = """
import os, signal, sys
import anyio
from batchmetrics import BatchMetrics, Store

async def main(db):
    async with BatchMetrics("rows", store=Store(db, flush_rows=100), store_files=True,
                            interval=3600) as m:  # no checkpoint after the first
        for i in range(500):
            await m.record_file(f"f{i}", duration=0.01)
        await m.snapshot()
        await anyio.sleep(0.5)  # the packs are written behind the consumer
        os.kill(os.getpid(), signal.SIGKILL)

anyio.run(main, sys.argv[1])
"""


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL")
def test_stats_of_a_killed_run_says_how_many_rows_it_stored(tmp_path: Path) -> None:
    # its counts are the last checkpoint's, its rows were written since: say both
    db = tmp_path / "history.db"
    done = subprocess.run([sys.executable, "-c", _KILLED_WITH_ROWS, str(db)], timeout=60,
                          check=False)
    assert done.returncode == -signal.SIGKILL
    stored = len(cli("files", "--json", "rows", db=db).stdout.splitlines())
    assert stored == 500
    stats = cli("stats", "rows", db=db).stdout
    assert re.search(r"total\s+0\n", stats), stats
    assert re.search(r"rows stored\s+500 \(see `files`\)", stats), stats


def test_names_from_undecodable_bytes_are_shown_escaped(tmp_path: Path) -> None:
    # os.listdir gives lone surrogates for bytes that are not UTF-8; they are stored as
    # they are, and printing them used to end stats and files with a traceback
    db = tmp_path / "history.db"

    async def build() -> None:
        async with BatchMetrics("odd", store=db, store_files=True) as m:
            await m.record_error("bad-\udcff.wfm", "Err\udcfe", "boom", duration=0.5)
            await m.record_file("good.wfm", duration=0.1)

    anyio.run(build)
    for command in (["stats", "odd"], ["files", "odd"]):
        result = cli(*command, db=db)
        assert result.returncode == 0, result.stderr
        assert "bad-\\udcff.wfm" in result.stdout, command
        assert "Traceback" not in result.stderr


def test_a_batch_id_argument_that_is_not_valid_text_is_no_such_batch(tmp_path: Path) -> None:
    db = tmp_path / "history.db"

    async def build() -> None:
        async with BatchMetrics("real", store=db) as m:
            await m.record_file("a.wfm", duration=0.1)

    anyio.run(build)
    cmd = [str(SCRIPT), "--db", str(db), "stats", os.fsdecode(b"\xff")]
    result = subprocess.run(cmd, capture_output=True, timeout=60, env=clean_env(), check=False)
    assert result.returncode == 2
    assert result.stderr.startswith(b"batchmetrics: no batch"), result.stderr
    assert b"Traceback" not in result.stderr


def test_a_long_table_is_printed_as_its_rows_come() -> None:
    # `files` of a million-file run used to hold every row before printing the first
    out = io.StringIO()
    printed_early: list[bool] = []

    def rows() -> Iterator[list[str]]:
        for i in range(5000):
            if i == 4000:
                printed_early.append("row-00001" in out.getvalue())
            yield [f"row-{i:05d}", str(i)]

    _cli.print_table(["NAME", "N"], rows(), right=(1,), out=out)
    lines = out.getvalue().splitlines()
    assert printed_early == [True]
    assert len(lines) == 2 + 5000
    assert lines[2].split() == ["row-00000", "0"]
    assert lines[-1].split() == ["row-04999", "4999"]


def _commands_with_a_closed_reader(db: Path, *commands: list[str]) -> list[tuple[int, str]]:
    """Each command's exit code and stderr when its output's reader is gone at once."""
    env = {k: v for k, v in clean_env().items() if k != "PYTHONUNBUFFERED"}  # buffered
    results = []
    for command in commands:
        child = subprocess.Popen([str(SCRIPT), "--db", str(db), *command], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert child.stdout is not None
        child.stdout.close()  # as `| head -0` does
        _, err = child.communicate(timeout=60)
        results.append((child.returncode, err.decode()))
    return results


def test_a_reader_gone_away_stops_the_output_quietly_keeping_the_exit_code(
        tmp_path: Path) -> None:
    db = tmp_path / "h.db"

    async def build() -> None:
        for batch_id, errors in (("clean", 0), ("broken", 3)):
            async with BatchMetrics(batch_id, store=db) as m:
                for i in range(40):
                    await m.record_file(f"f{i}", duration=0.01, samples=10)
                for i in range(errors):
                    await m.record_error(f"e{i}", "OSError", "read failed", duration=0.01)

    anyio.run(build)
    results = _commands_with_a_closed_reader(
        db, ["list", "--json"], ["stats", "clean"],
        ["compare", "clean", "broken", "--fail-on-regression", "10"])
    # the output used to be flushed at exit, outside the handler: a traceback and code
    # 120; and the regression gate's 1 used to become 0
    assert [code for code, _ in results] == [0, 0, 1]
    assert all(err == "" or err.startswith("regression beyond") for _, err in results), results


def test_watch_with_a_reader_gone_away_exits_with_the_runs_outcome_else_141(
        history: tuple[Path, dict[str, dict[str, Any]]], tmp_path: Path) -> None:
    # `watch failed1 | head -1` exited 0 or 1 by how fast head left: the code was decided
    # only after the summary was printed
    db = tmp_path / "h.db"
    db.write_bytes(history[0].read_bytes())
    # a run still going on another host: outcome unknown
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("UPDATE runs SET status = 'running', host = 'elsewhere', updated_at = ? "
                     "WHERE batch_id = 'nightly-002'", (time.time(),))
    conn.close()
    results = _commands_with_a_closed_reader(
        db, ["watch", "adhoc-failed"], ["watch", "nightly-001"], ["watch", "nightly-002"])
    assert results == [(1, ""), (0, ""), (141, "")]


def test_damaged_start_times_are_shown_not_tripped_over(tmp_path: Path) -> None:
    db = tmp_path / "h.db"

    async def build() -> None:
        for batch_id in ("text", "infinite"):
            async with BatchMetrics(batch_id, store=db) as m:
                await m.record_file("a.wfm", duration=0.1)

    anyio.run(build)
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("UPDATE runs SET started_at = 'abc' WHERE batch_id = 'text'")
        conn.execute("UPDATE runs SET started_at = 1e999 WHERE batch_id = 'infinite'")
    listed = cli("list", db=db)
    assert listed.returncode == 0, listed.stderr
    stats = cli("stats", "text", db=db)
    assert stats.returncode == 0, stats.stderr
    assert re.search(r"started\s+'abc'", stats.stdout), stats.stdout
    rows = json.loads(cli("list", "--json", db=db).stdout, parse_constant=_reject_constant)
    assert {r["batch_id"]: r["started_at"] for r in rows} == {"text": None, "infinite": None}


def test_multi_line_error_messages_stay_on_their_row(tmp_path: Path) -> None:
    # a validation error of several lines spilled over rows and widened the columns
    db = tmp_path / "h.db"
    message = "3 validation errors\n  header.rate\n    field required\r\n\tend"

    async def run() -> None:
        async with BatchMetrics("multi", store=db, store_files=True) as m:
            await m.record_error("a.wfm", "ValidationError", message, duration=0.1)
            await m.record_file("b\nc.wfm", duration=0.1)
            await m.record_file("b\\nc.wfm", duration=0.1)  # a backslash, then "n"

    anyio.run(run)
    files = cli("files", "multi", db=db)
    assert files.returncode == 0, files.stderr
    rows = files.stdout.splitlines()
    assert len(rows) == 2 + 3  # header, rule, one line per file
    assert rows[2].endswith(r"3 validation errors\n  header.rate\n    field required\r\n\tend")
    assert rows[3].startswith(r"b\nc.wfm ")
    assert rows[4].startswith(r"b\\nc.wfm ")  # told apart from the line break
    stats = cli("stats", "multi", db=db)
    assert stats.returncode == 0, stats.stderr
    assert r"3 validation errors\n  header.rate" in stats.stdout
    assert "field required\n" not in stats.stdout


def _on_a_terminal(*args: str | Path) -> str:
    """What the command shows on a real terminal (a pty, 200 columns), where tables go
    through rich."""
    code, shown, err = _tty(*args, cols=200)
    assert code == 0, err.decode()
    return shown.decode("utf-8", "replace")


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_on_a_terminal_names_and_ids_are_text_not_markup_and_stay_on_their_row(
        tmp_path: Path) -> None:
    # through rich: "[/]" in a name or batch id raised MarkupError, "[red]" coloured the
    # text, and a NEL (\x85) or a bidi override (U+202E) changed what was shown
    pytest.importorskip("rich")
    db = tmp_path / "h.db"
    names = ["a[/]b.wfm", "[bold]c.wfm", "d\x85e.wfm", "f\u202eg.wfm"]

    async def run(batch_id: str) -> None:
        async with BatchMetrics(batch_id, store=db, store_files=True) as m:
            for name in names:
                await m.record_file(name, duration=0.1)

    for batch_id in ("tty[/]", "[red]r2[/]"):
        anyio.run(run, batch_id)
    text = _on_a_terminal("--db", db, "files", "tty[/]")
    for name in ("a[/]b.wfm", "[bold]c.wfm", r"d\x85e.wfm", r"f\u202eg.wfm"):
        assert name in text
    assert len([line for line in text.splitlines() if ".wfm" in line]) == 4
    compared = _on_a_terminal("--db", db, "compare", "tty[/]", "[red]r2[/]")
    assert "tty[/]" in compared
    assert "[red]r2[/]" in compared


def test_batch_ids_are_shown_on_one_line(tmp_path: Path) -> None:
    # a batch id with a line break and an escape sequence printed a fake status line
    db = tmp_path / "h.db"
    batch_id = "x\nstatus     finished\x1b[2J"

    async def run() -> None:
        async with BatchMetrics(batch_id, store=db) as m:
            await m.record_file("a.wfm", duration=0.1)

    anyio.run(run)
    for args in (["stats", batch_id], ["watch", batch_id]):
        result = cli(*args, db=db)
        assert result.returncode == 0, result.stderr
        assert r"x\nstatus     finished\x1b[2J" in result.stdout
        assert "\x1b" not in result.stdout


#: Names as the plain table prints them, and the terminal columns each takes (by hand:
#: a CJK or fullwidth character takes 2, a combining accent 0; an escape its length).
_WIDE_NAMES = {
    "plain.wfm": ("plain.wfm", 9),
    "データ.wfm": ("データ.wfm", 10),
    "\uff46\uff55\uff4c\uff4c.wfm": ("\uff46\uff55\uff4c\uff4c.wfm", 12),  # fullwidth "full"
    "cafe\u0301.wfm": ("cafe\u0301.wfm", 8),
    "\U0001f600.wfm": ("\U0001f600.wfm", 6),
    "a\u200bb.wfm": (r"a\u200bb.wfm", 12),  # escaped: its width is the escape's
    "\u1112\u1161\u11ab.wfm": ("\u1112\u1161\u11ab.wfm", 6),  # Korean, decomposed (macOS)
    "\u2764\ufe0f.wfm": ("\u2764\ufe0f.wfm", 6),  # emoji presentation selector
    "\U0001f44d\U0001f3fd.wfm": ("\U0001f44d\U0001f3fd.wfm", 6),  # skin tone modifier
}


def _as_shown(text: str, shown: dict[str, int]) -> list[str]:
    """``text``'s lines with each of ``shown`` replaced by as many ``#`` as the columns it
    takes: a string index is then a column on the terminal."""
    lines = []
    for line in text.splitlines():
        for s, width in sorted(shown.items(), key=lambda kv: -len(kv[0])):
            line = line.replace(s, "#" * width)
        line = line.replace("\u00b5s", "us")  # a time under 1 ms: one column, as u
        assert line.isascii(), line
        lines.append(line)
    return lines


def test_plain_tables_align_wide_and_combining_characters_by_their_columns(
        tmp_path: Path) -> None:
    # columns were padded by len(): a CJK name pushed the rest of its row to the right
    db = tmp_path / "h.db"

    async def build() -> None:
        async with BatchMetrics("wide", store=db, store_files=True) as m:
            for name in _WIDE_NAMES:
                await m.record_file(name, duration=0.25, samples=7)

    anyio.run(build)
    result = cli("files", "wide", db=db)  # a pipe: plain text, not rich
    assert result.returncode == 0, result.stderr
    lines = _as_shown(result.stdout, dict(_WIDE_NAMES.values()))
    assert lines[0].startswith("FILE" + " " * 8 + "  STATUS")  # widest name: 12 columns
    status_at = lines[0].index("STATUS")
    duration_ends = lines[0].index("DURATION") + len("DURATION")
    assert len(lines) == 2 + len(_WIDE_NAMES)
    for line in lines[2:]:
        assert line[status_at:].startswith("success  "), line
        assert line[:duration_ends].endswith("250.0 ms"), line


def test_plain_tables_right_align_under_a_wide_header(tmp_path: Path) -> None:
    # compare's batch ids head right-aligned columns
    db = tmp_path / "h.db"
    ids = {"夜間-001": 8, "\uff4e\uff49\uff47\uff48\uff54\uff4c\uff59": 14}  # "nightly", fullwidth

    async def build() -> None:
        for batch_id in ids:
            async with BatchMetrics(batch_id, store=db) as m:
                for i in range(10):
                    await m.record_file(f"f{i}", duration=0.01 * (i + 1))

    anyio.run(build)
    result = cli("compare", *ids, db=db)
    assert result.returncode == 0, result.stderr
    lines = _as_shown(result.stdout, ids)
    a_ends = lines[0].index("#" * 8) + 8
    b_ends = lines[0].index("#" * 14) + 14
    for line in lines[2:]:
        cells = [m.end() for m in re.finditer(r"\S+(?: \S+)*", line)]
        assert cells[1:3] == [a_ends, b_ends], line


def test_stats_sections_align_wide_names_by_their_columns(tmp_path: Path) -> None:
    # the slowest files' names were padded by len() too
    db = tmp_path / "h.db"

    async def build() -> None:
        async with BatchMetrics("wide", store=db) as m:
            for i, name in enumerate(_WIDE_NAMES):
                await m.record_file(name, duration=0.5 - 0.01 * i)

    anyio.run(build)
    result = cli("stats", "wide", db=db)
    assert result.returncode == 0, result.stderr
    lines = _as_shown(result.stdout, dict(_WIDE_NAMES.values()))
    slowest = lines[lines.index("Slowest files") + 1:]
    assert len(slowest) == 5
    # the widest name shown takes 12 columns
    assert [line.index(" ms ") for line in slowest] == [2 + 12 + 2 + len("500.0")] * 5, slowest


@pytest.mark.asyncio
async def test_stats_of_a_running_batch_measures_time_on_the_batchs_own_clock(
        tmp_path: Path) -> None:
    # the run's time used the system time of its last checkpoint, and the batch's
    # stamps do not follow a step of the system clock: the wall time and rates were
    # off by the step (here the clock is a test's, 10 years behind the system's)
    from .clock import FakeClock

    db = tmp_path / "history.db"
    clock = FakeClock(1.5e9)
    async with BatchMetrics("running", store=db, clock=clock, interval=0.05) as m:
        for i in range(20):
            clock.advance(0.5)
            await m.record_file(f"f{i}.wfm", duration=0.4)
        await m.snapshot()
        await anyio.sleep(0.3)  # checkpoints taken
        result = await anyio.to_thread.run_sync(lambda: cli("stats", "running", db=db))
    assert result.returncode == 0, result.stderr
    assert re.search(r"status\s+running \(last checkpoint 2017-07-1[34] \d\d:\d\d:\d\d\)",
                     result.stdout), result.stdout
    assert re.search(r"wall time\s+10(\.0+)? s\n", result.stdout), result.stdout
    assert re.search(r"files/s\s+2\.0+\n", result.stdout), result.stdout


_KILLED_ON_ITS_CLOCK = """
import os, signal, sys
import anyio
from batchmetrics import BatchMetrics
t = [1.5e9]

async def main(db):
    async with BatchMetrics("killed", store=db, interval=0.05, clock=lambda: t[0]) as m:
        for i in range(50):
            t[0] += 0.1
            await m.record_file(f"f{i}", duration=0.01)
        await anyio.sleep(0.3)
        os.kill(os.getpid(), signal.SIGKILL)

anyio.run(main, sys.argv[1])
"""


def test_stats_of_a_killed_run_says_when_it_stopped_on_its_own_clock(tmp_path: Path) -> None:
    db = tmp_path / "history.db"
    done = subprocess.run([sys.executable, "-c", _KILLED_ON_ITS_CLOCK, str(db)], timeout=60,
                          check=False)
    assert done.returncode == -signal.SIGKILL
    result = cli("stats", "killed", db=db)
    assert result.returncode == 0, result.stderr
    assert re.search(r"stopped writing at 2017-07-1[34] ", result.stdout), result.stdout


# -- narrow terminals, other encodings, closed outputs -----------------------------------------

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _tty(*args: str | Path, cols: int = 80, stderr_too: bool = False, timeout: float = 120,
         **env: str) -> tuple[int, bytes, bytes]:
    """Run the command on a pseudo-terminal ``cols`` columns wide (its real size, not
    $COLUMNS); its exit code, the bytes it showed there, and its stderr (when not on
    the terminal too)."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, cols, 0, 0))
    environment = {k: v for k, v in clean_env().items() if k not in ("COLUMNS", "LINES")}
    environment.update({"TERM": "xterm-256color", **env})
    try:
        child = subprocess.Popen([str(SCRIPT), *map(str, args)], stdin=slave, stdout=slave,
                                 stderr=slave if stderr_too else subprocess.PIPE,
                                 env=environment)
    finally:
        os.close(slave)
    shown = b""
    with contextlib.suppress(OSError):  # EIO once the child has closed the terminal
        while chunk := os.read(master, 4096):
            shown += chunk
    os.close(master)
    _, err = child.communicate(timeout=timeout)
    return child.returncode, shown, err or b""


def _screen_lines(shown: bytes) -> list[str]:
    """The lines written, colours and cursor moves taken out."""
    return _ANSI.sub("", shown.decode("utf-8", "replace")).replace("\r\n", "\n").split("\n")


def _first_column(lines: list[str]) -> str:
    """The first column's pieces joined: a name folded onto more lines is whole again."""
    return "".join(line.split(" ")[0] for line in lines)


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_on_a_narrow_terminal_tables_fold_ids_and_paths_and_keep_numbers_whole(
        tmp_path: Path) -> None:
    # rich cut every path to "/data/2026/11/28/…", the demo's ids in list and compare's
    # headers, and at 40 columns numbers ("16…")
    pytest.importorskip("rich")
    from batchmetrics._cli import display_width

    db = tmp_path / "h.db"
    paths = [f"/data/2026/11/28/sensor-{i:03d}/capture_000123.wfm" for i in range(3)]
    ids = ["demo-20261128-172903-21383", "demo-20261128-172911-21407"]

    async def build() -> None:
        async with BatchMetrics("paths", store=db, store_files=True) as m:
            for path in paths:
                await m.record_file(path, duration=0.02, samples=35380, bytes_processed=70768)
            await m.record_error(paths[0] + ".bak", "ValueError",
                                 "truncated: expected 35380 bytes of samples, got 17690",
                                 duration=0.01)
        for k, batch_id in enumerate(ids):
            async with BatchMetrics(batch_id, store=db) as m:
                for i in range(1600):
                    await m.record_file(f"f{i}", duration=0.002 * (k + 1) * (1 + i % 7),
                                        bytes_processed=4096)

    anyio.run(build)
    for cols in (80, 40):
        for args in (["files", "paths"], ["list"], ["compare", *ids]):
            code, shown, err = _tty("--db", db, *args, cols=cols)
            assert code == 0, err
            lines = _screen_lines(shown)
            text = "\n".join(lines)
            assert "…" not in text, (cols, args, text)
            assert "..." not in text, (cols, args, text)
            if cols == 80:  # fits: the terminal does not wrap a line
                assert max(map(display_width, lines)) <= cols, (args, text)
            if args[0] == "files":
                assert all(p in _first_column(lines) for p in [*paths, paths[0] + ".bak"]), text
                assert re.findall(r"(?<![\d,])35,380(?![\d,])", text) == ["35,380"] * 3, text
                assert re.findall(r"(?<![\d,])70,768(?![\d,])", text) == ["70,768"] * 3, text
            elif args[0] == "list":
                assert all(i in _first_column(lines) for i in ids), text
                assert len(re.findall(r"(?<![\d,])1,600(?![\d,])", text)) == 2, text
            else:  # the headers: folded (or not) by the width the numbers leave them
                rule = re.compile(r"^[ \u2500-]+$")  # rich's rule, or the plain table's
                head = lines[:next(n for n, line in enumerate(lines) if rule.match(line))]
                tokens = [line.split() for line in head]
                assert ["".join(t[k] for t in tokens if len(t) > k) for k in (0, 1)] == ids, \
                    text
                report = json.loads(cli("--db", db, "compare", *ids, "--json").stdout)
                files_per_s = {m["measure"]: m for m in report["measures"]}["files/s"]
                assert _cli.fmt_rate(files_per_s["a"]) in text.split(), text
                assert "1,600" in text.split(), text


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_watch_on_a_terminal_rewrites_one_line_no_wider_than_the_terminal(
        tmp_path: Path) -> None:
    # the line (~120 columns) wrapped on an 80-column terminal, and each rewrite
    # ("\r\x1b[K" goes back to the start of the last row only) left a row behind
    from batchmetrics._cli import display_width

    db = tmp_path / "live.db"
    with _running_child(db) as child:
        code, shown, err = _tty("--db", db, "watch", "live-run", "--interval", "0.1", cols=80)
        assert child.wait(timeout=60) == 0
    assert code == 0, err
    text = shown.decode()
    status, summary = text.split("\r\n", 1)
    updates = status.split("\r\x1b[K")
    assert updates[0] == ""
    assert len(updates) >= 2, text  # (on a loaded machine the run may end before a tick)
    for line in updates[1:]:
        assert line.startswith("live-run: "), line
        assert display_width(line) < 80, line
    assert updates[-1].startswith("live-run: finished | 300/300 files (100.0%) | ")
    assert "Batch live-run" in summary


def test_watch_on_a_dumb_terminal_writes_no_escape_codes(
        history: tuple[Path, dict[str, dict[str, Any]]]) -> None:
    # TERM=dumb (an editor's shell) showed "\x1b[K" as garbage
    db, _ = history
    code, shown, err = _tty("--db", db, "watch", "nightly-001", cols=80, TERM="dumb")
    assert code == 0, err
    assert b"\x1b" not in shown
    assert shown.startswith(b"nightly-001: finished | 200/200 files (100.0%) | ")
    assert shown.split(b"\r\n")[0].endswith(b" ms")  # in full: one line per update


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
@pytest.mark.parametrize(("cols", "batch_id"), [(80, "demo-20261128-172903-21383"),
                                                (40, "demo-20261128-172903-21383"),
                                                (80, "id-" + "x" * 117)])
def test_the_demos_progress_bar_keeps_its_count_whole_and_shortens_the_id(
        tmp_path: Path, cols: int, batch_id: str) -> None:
    # the bar showed "81/2…" and "2000/…" at 80 columns; at 40 the count and the bar were
    # gone; a 120-character id left nothing readable
    pytest.importorskip("rich")
    from batchmetrics._cli import display_width

    code, shown, _ = _tty("--db", tmp_path / "d.db", "demo", "--files", "300", "--latency",
                          "0.001", "--batch-id", batch_id, cols=cols, stderr_too=True)
    assert code == 0, shown.decode()
    text = _ANSI.sub("", shown.decode())
    frames = [line for line in re.split(r"[\r\n]+", text) if re.search(r"\d+/300\b", line)]
    assert frames, text
    for frame in frames:
        assert display_width(frame) <= cols, frame
        assert re.search(r"(^|\s)\d+/300( |$)", frame), frame  # whole, at its place
        shown_id = frame.split(" ")[0]
        assert len(shown_id) >= 10, frame  # the id, shortened to fit
        assert shown_id == batch_id or (shown_id.endswith("…")
                                        and batch_id.startswith(shown_id[:-1])), frame
    assert "300/300" in frames[-1]


@pytest.mark.parametrize("encoding_env", [{"LC_ALL": "C", "PYTHONUTF8": "0"},
                                          {"PYTHONIOENCODING": "ascii"}])
def test_an_ascii_output_gets_us_and_aligned_columns(
        tmp_path: Path, encoding_env: dict[str, str]) -> None:
    # "µs" and non-ASCII names were escaped by the stream (\xb5s) after the columns were
    # measured: every row with one was pushed right
    db = tmp_path / "h.db"

    async def build() -> None:
        async with BatchMetrics("enc", store=db, store_files=True) as m:
            await m.record_file("ñandú.wfm", duration=0.0005, samples=10)
            await m.record_file("数据.wfm", duration=0.02, samples=10)
            await m.record_file("plain.wfm", duration=0.00007, samples=10)
            await m.record_error("错误.wfm", "ValueError", "bad — header", duration=0.0009)

    anyio.run(build)
    env = {k: v for k, v in clean_env().items()
           if k not in ("PYTHONIOENCODING", "PYTHONUTF8", "LANG") and not k.startswith("LC_")}
    env.update(encoding_env)
    files = subprocess.run([str(SCRIPT), "--db", str(db), "files", "enc"], capture_output=True,
                           timeout=60, env=env, check=False)
    assert files.returncode == 0, files.stderr
    lines = files.stdout.decode("ascii").splitlines()
    assert "\\xb5" not in files.stdout.decode()
    status_at = lines[0].index("STATUS")
    duration_ends = lines[0].index("DURATION") + len("DURATION")
    assert len(lines) == 2 + 4
    for line in lines[2:]:
        assert line[status_at:].split()[0] in ("success", "error"), line
        assert line[:duration_ends].endswith((" us", " ms")), line
    assert lines[2].startswith("\\xf1and\\xfa.wfm ")
    assert re.search(r" 500 us +10 ", lines[2]), lines[2]
    stats = subprocess.run([str(SCRIPT), "--db", str(db), "stats", "enc"], capture_output=True,
                           timeout=60, env=env, check=False)
    assert stats.returncode == 0, stats.stderr
    out = stats.stdout.decode("ascii").splitlines()
    assert re.search(r"^  min +70 us$", "\n".join(out), re.M), out
    slowest = out[out.index("Slowest files") + 1:]
    assert len(slowest) == 4
    assert len({line.index("s  ") for line in slowest}) == 1, slowest  # the unit's end
    assert len({line.rindex("  ") for line in slowest}) == 1, slowest  # the status's start


def test_a_non_ascii_batch_id_is_found_under_a_locale_that_is_not_utf8(tmp_path: Path) -> None:
    # under LC_ALL=C argv's UTF-8 bytes arrive as lone surrogates: "no batch" for a
    # batch id the history holds
    db = tmp_path / "h.db"
    batch_id = "unicode-数据-ñ"

    async def build() -> None:
        async with BatchMetrics(batch_id, store=db, store_files=True) as m:
            await m.record_file("a.wfm", duration=0.1)

    anyio.run(build)
    env = {k: v for k, v in clean_env().items()
           if k not in ("PYTHONIOENCODING", "PYTHONUTF8", "LANG") and not k.startswith("LC_")}
    env.update(LC_ALL="C", PYTHONUTF8="0")
    for args in (["stats", batch_id, "--json"], ["files", batch_id, "--json"],
                 ["compare", batch_id, batch_id, "--json"], ["watch", batch_id]):
        result = subprocess.run([str(SCRIPT), "--db", str(db), *args], capture_output=True,
                                timeout=60, env=env, check=False)
        assert result.returncode == 0, (args, result.stderr)
        assert result.stderr == b"", args
    stats = subprocess.run([str(SCRIPT), "--db", str(db), "stats", batch_id, "--json"],
                           capture_output=True, timeout=60, env=env, check=False)
    assert json.loads(stats.stdout)["batch_id"] == batch_id


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_an_output_that_cannot_be_written_is_one_line_and_exit_2(
        history: tuple[Path, dict[str, dict[str, Any]]], tmp_path: Path) -> None:
    # > /dev/full ended in a traceback (OSError ENOSPC) and exit 1; with stdout closed
    # (>&-) in AttributeError: 'NoneType' object has no attribute 'isatty'
    db, _ = history
    for args in (["list"], ["stats", "nightly-001"], ["files", "nightly-001", "--json"],
                 ["compare", "nightly-001", "nightly-002"], ["watch", "nightly-001"]):
        with open("/dev/full", "w") as full:
            result = subprocess.run([str(SCRIPT), "--db", str(db), *args], stdout=full,
                                    stderr=subprocess.PIPE, text=True, timeout=60,
                                    env=clean_env(), check=False)
        assert (result.returncode, result.stderr) == (
            2, f"batchmetrics: cannot write output: {os.strerror(errno.ENOSPC)}\n"), args
        closed = subprocess.run(["sh", "-c", '"$0" "$@" >&-', str(SCRIPT), "--db", str(db),
                                 *args], capture_output=True, text=True, timeout=60,
                                env=clean_env(), check=False)
        assert (closed.returncode, closed.stderr) == (
            2, f"batchmetrics: cannot write output: {os.strerror(errno.EBADF)}\n"), args

    async def export() -> None:
        async with BatchMetrics("part") as m:
            await m.record_file("a.wfm", duration=0.1)
        await m.export_json(tmp_path / "part.json")

    anyio.run(export)
    # a command that writes nothing there does not need it
    merged = subprocess.run(["sh", "-c", '"$0" "$@" >&-', str(SCRIPT), "merge",
                             str(tmp_path / "part.json"), "-o", str(tmp_path / "out.json")],
                            capture_output=True, text=True, timeout=60, env=clean_env(),
                            check=False)
    assert merged.returncode == 0, merged.stderr
    assert json.loads((tmp_path / "out.json").read_text())["summary"]["total_files"] == 1


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal and a shell")
def test_the_demo_shows_batch_ids_escaped_and_its_hints_work_when_pasted(
        tmp_path: Path) -> None:
    # a batch id's control characters reached the terminal raw (the hints, the rich bar,
    # the status line without rich), and the hints did not quote it for a shell
    db = tmp_path / "my runs.db"
    evil = "evil\x1b[2J\x07"
    plain = cli("demo", "--files", "20", "--latency", "0.001", "--no-display",
                "--batch-id", evil, db=db)
    assert plain.returncode == 0, plain.stderr
    assert "\x1b" not in plain.stdout
    assert "\x07" not in plain.stdout
    assert r"evil\x1b[2J\x07" in plain.stdout.split("Try:")[1]
    if importlib.util.find_spec("rich") is not None:
        code, shown, _ = _tty("--db", db, "demo", "--files", "20", "--latency", "0.001",
                              "--batch-id", evil + "-bar", stderr_too=True)
        assert code == 0, shown.decode()
        assert b"\x1b[2J" not in shown
        assert b"\x07" not in shown
        assert rb"evil\x1b[2J\x07-bar" in shown
    no_rich = ("import sys; sys.modules['rich'] = None; from batchmetrics._cli import main; "
               "sys.exit(main(sys.argv[1:]))")
    result = subprocess.run(
        [sys.executable, "-c", no_rich, "--db", str(db), "demo", "--files", "20", "--latency",
         "0.001", "--batch-id", evil + "-log"],
        capture_output=True, text=True, timeout=120, env=clean_env(), check=False)
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stderr
    assert "finished: batch evil\\x1b[2J\\x07-log: 20/20 files" in result.stderr
    # an id with a space and a quote: each hint, pasted into a shell, works
    odd = "it's a run"
    demo = cli("demo", "--files", "20", "--latency", "0.001", "--no-display",
               "--batch-id", odd, db=db)
    assert demo.returncode == 0, demo.stderr
    hints = [line.strip() for line in demo.stdout.split("Try:\n")[1].splitlines()]
    assert hints[0] == f"batchmetrics --db '{db}' list"
    shell_env = clean_env(PATH=f"{SCRIPT.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    pasted = [subprocess.run(["sh", "-c", hint], capture_output=True, text=True, timeout=60,
                             env=shell_env, check=False) for hint in hints[:3]]
    assert [p.returncode for p in pasted] == [0, 0, 0], [p.stderr for p in pasted]
    assert "it's a run" in pasted[0].stdout  # list
    assert json.loads(pasted[2].stdout)["batch_id"] == odd  # stats --json


def test_a_run_without_a_timed_file_has_no_time_per_file_and_no_regression(
        tmp_path: Path) -> None:
    # stats printed "mean 0 s", "p99 0 s"; compare of such a run with another printed
    # "p50 per file  0 s  200.0 ms  +inf%  REGRESSION" and exited 1
    db = tmp_path / "h.db"

    async def build() -> None:
        async with BatchMetrics("zero", store=db):
            pass
        async with BatchMetrics("skips", store=db) as m:
            for i in range(5):
                await m.record_skip(f"s{i}.wfm", reason="duplicate")
        async with BatchMetrics("single", store=db) as m:
            await m.record_file("one.wfm", duration=0.2)
        async with BatchMetrics("broken", store=db) as m:
            await m.record_file("one.wfm", duration=0.2)
            await m.record_error("two.wfm", "OSError", "gone", duration=0.1)

    anyio.run(build)
    for batch_id in ("zero", "skips"):
        stats = cli("stats", batch_id, db=db)
        assert stats.returncode == 0, stats.stderr
        section = stats.stdout.split("Time per successful file\n")[1].split("Throughput")[0]
        assert [line.split() for line in section.splitlines()] == [
            [name, "-"] for name in ("mean", "median", "p90", "p95", "p99", "min", "max",
                                     "stddev")], stats.stdout
    assert re.search(r"\n  p99 +200\.0 ms\n", cli("stats", "single", db=db).stdout)
    for a in ("zero", "skips"):
        compared = cli("compare", a, "single", "--fail-on-regression", "0", db=db)
        assert compared.returncode == 0, compared.stdout
        assert "REGRESSION" not in compared.stdout
        rows = {line.split("  ")[0]: line.split() for line in compared.stdout.splitlines()[2:]}
        assert rows["p50 per file"][3:] == ["-", "200.0", "ms", "n/a"], rows
        report = json.loads(cli("compare", a, "single", "--json", "--fail-on-regression", "0",
                                db=db).stdout, parse_constant=_reject_constant)
        p50 = {m["measure"]: m for m in report["measures"]}["p50 per file"]
        assert (p50["a"], p50["b"], p50["change_percent"], p50["worse_percent"],
                p50["regression"]) == (None, 0.2, None, None, False)
        assert report["regressions"] == []
    # errors appearing where A had none are still infinitely worse
    worse = cli("compare", "single", "broken", "--fail-on-regression", "0", db=db)
    assert worse.returncode == 1
    assert "error rate +inf%" in worse.stderr


def test_stats_lists_the_most_frequent_error_types_and_counts_the_rest(tmp_path: Path) -> None:
    # a run with thousands of error types (an id in each) printed every one of them
    db = tmp_path / "h.db"

    async def build() -> None:
        async with BatchMetrics("many", store=db, max_error_types=1000) as m:
            for i in range(3):
                await m.record_error(f"o{i}.wfm", "OSError", "gone", duration=0.01)
            for i in range(500):
                await m.record_error(f"f{i}.wfm", f"Err{i}", f"msg {i}", duration=0.001)

    anyio.run(build)
    out = cli("stats", "many", db=db).stdout
    section = out.split("Errors by type\n")[1].split("Slowest files")[0].splitlines()
    assert len(section) == 21, section
    assert section[0].split()[:2] == ["OSError", "3"]  # the most frequent first
    assert section[-1].split() == ["(more", "types)", "481", "of", "481", "more", "types",
                                   "(--json", "lists", "every", "type)"]
    assert len(json.loads(cli("stats", "many", "--json", db=db).stdout)["errors"]["by_type"]) \
        == 501
    assert "--json" in cli("stats", "--help").stdout


def test_compare_writes_large_changes_with_thousands_separators() -> None:
    # +499999999900.0% could not be read at a glance
    assert _cli.fmt_change(499999999900.0) == "+499,999,999,900.0%"
    assert _cli.fmt_change(-12345.67) == "-12,345.7%"
    assert _cli.fmt_change(3.0) == "+3.0%"
