"""The history across processes: a killed writer shows as interrupted; writers share one file."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from batchmetrics import History, HistoryError

SCRIPT = Path(sys.executable).parent / "batchmetrics"
INTERVAL = 0.1

# Records 20 files every ~10 ms and prints how many it has recorded after each burst.
RECORDING_CHILD = f"""
import sys, anyio
from batchmetrics import BatchMetrics

async def main(db: str) -> None:
    async with BatchMetrics("doomed", store=db, interval={INTERVAL}, keep_files=False) as m:
        n = 0
        while True:
            for _ in range(20):
                await m.record_file(f"f{{n}}.wfm", duration=0.001)
                n += 1
            print(n, flush=True)
            await anyio.sleep(0.01)

anyio.run(main, sys.argv[1])
"""


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          timeout=60, check=False)


# How long the child keeps recording once its first checkpoint is in the file, and the
# lateness allowed to a checkpoint on a loaded machine on top of its interval
WATCHED = 10 * INTERVAL
SLACK = 0.25


def _open_history(db: Path) -> History | None:
    """The history once the child has created it, else ``None``."""
    if not db.exists():
        return None
    try:
        return History(db)
    except HistoryError:  # the file is there, its schema not yet
        return None


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_a_killed_run_is_listed_as_interrupted_at_most_one_checkpoint_behind(
        tmp_path: Path) -> None:
    db = tmp_path / "history.db"
    seen: list[tuple[float, int]] = []  # (when the parent read it, files recorded)
    polls: list[tuple[float, int]] = []  # (when the parent read the file, files stored)
    checkpoints: set[float] = set()  # the updated_at of every checkpoint the parent saw

    def recorded_by(t: float) -> int:
        """Files the child had surely recorded at ``t`` (it printed them before)."""
        return max((n for read, n in seen if read <= t), default=0)

    history: History | None = None
    with subprocess.Popen([sys.executable, "-c", RECORDING_CHILD, str(db)],
                          stdout=subprocess.PIPE, text=True) as child:
        assert child.stdout is not None
        try:
            first: float | None = None  # when the first checkpoint was seen
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                seen.append((time.monotonic(), int(child.stdout.readline())))
                history = history or _open_history(db)
                if history is None:
                    continue
                polled_at = time.monotonic()
                run = history.get("doomed")
                if run is None or run.summary["total_files"] == 0:
                    continue  # started, no checkpoint yet
                polls.append((polled_at, run.summary["total_files"]))
                checkpoints.add(run.updated_at)
                first = polled_at if first is None else first
                if polled_at - first >= WATCHED:  # keep it recording across checkpoints
                    break
            child.send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            seen += [(killed_at, int(line)) for line in child.stdout]  # printed before death
        finally:
            child.kill()
            if history is not None:
                history.close()
    assert child.returncode == -signal.SIGKILL
    # not vacuous: the child recorded across many checkpoints before it was killed
    assert polls
    assert polls[-1][0] - polls[0][0] >= WATCHED
    assert len(checkpoints) >= WATCHED / INTERVAL / 2, sorted(checkpoints)

    listing = cli("--db", db, "list")
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.splitlines()[2].split()[:2] == ["doomed", "interrupted"]
    stats = cli("--db", db, "stats", "doomed", "--json")
    stored = json.loads(stats.stdout)["total_files"]
    recorded = seen[-1][1]
    assert stored <= recorded
    # a checkpoint every INTERVAL: at any moment, and at the kill, the file holds what
    # was recorded one interval before (plus slack for a loaded machine), so at most
    # one checkpoint is lost
    for t, in_file in [*polls, (killed_at, stored)]:
        behind = recorded_by(t - INTERVAL - SLACK)
        assert in_file >= behind, (t - polls[0][0], in_file, behind, recorded)
    assert "interrupted" in cli("--db", db, "stats", "doomed").stdout


WRITER_CHILD = """
import sys, anyio, anyio.to_thread
from batchmetrics import BatchMetrics, Store

async def main(db: str, batch_id: str, n: int) -> None:
    store = Store(db, flush_rows=2000)  # many chunk writes, interleaved with the other writer
    async with BatchMetrics(batch_id, store=store, store_files=True, keep_files=False,
                            interval=0.05) as m:
        print("ready", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.readline)  # "go": both write at once
        for i in range(n):
            if i % 50 == 7:
                await m.record_error(f"{batch_id}/f{i}", "OSError", "read failed",
                                     duration=0.002)
            else:
                await m.record_file(f"{batch_id}/f{i}", duration=0.001 * (1 + i % 10),
                                    samples=i)

anyio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]))
"""


def span(history: History, batch_id: str) -> tuple[float, float]:
    run = history.get(batch_id)
    assert run is not None
    assert run.started_at is not None
    assert run.finished_at is not None
    return run.started_at, run.finished_at


def test_two_processes_write_50000_files_each_into_one_file_at_once(tmp_path: Path) -> None:
    db = tmp_path / "shared.db"  # does not exist yet: both also race to create the schema
    n = 50_000
    children = [subprocess.Popen([sys.executable, "-c", WRITER_CHILD, str(db), name, str(n)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
                for name in ("writer-a", "writer-b")]
    try:
        for child in children:
            assert child.stdout is not None
            assert child.stdout.readline() == "ready\n", child.stderr
        for child in children:
            _, err = child.communicate("go\n", timeout=120)
            assert child.returncode == 0, err
    finally:
        for child in children:
            child.kill()
            child.wait()
    errors = sum(1 for i in range(n) if i % 50 == 7)
    with History(db) as h:
        (a_start, a_end), (b_start, b_end) = span(h, "writer-a"), span(h, "writer-b")
        assert a_start < b_end  # both were recording at once
        assert b_start < a_end
        for name in ("writer-a", "writer-b"):
            run = h.get(name)
            assert run is not None
            assert run.status == "finished"
            assert run.summary["total_files"] == run.files_stored == n
            assert run.summary["error_count"] == errors
            rows = list(h.files(name))
            assert len(rows) == n
            assert [r.filename for r in rows[:3]] == [f"{name}/f{i}" for i in range(3)]
            assert sum(r.samples for r in rows) == sum(i for i in range(n) if i % 50 != 7)
