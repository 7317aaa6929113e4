"""The live display shows what the user named the batch, as written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from batchmetrics import BatchMetrics


@pytest.mark.asyncio
@pytest.mark.parametrize("batch_id", ["ingest[/data/2024]", "[bold]run[/] [link=x]", "a\\"])
async def test_markup_like_batch_id_is_displayed_as_written_and_the_batch_completes(
    batch_id: str, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("rich")
    # rich used to parse the batch id as markup: MarkupError killed the ticker and the batch
    async with BatchMetrics(batch_id, display=True, interval=0.02) as m:
        for i in range(10):
            await anyio.sleep(0.01)  # the work; the ticker redraws meanwhile
            await m.record_file(f"f{i}.wfm", duration=0.01)
    assert m.summary().total_files == 10
    shown = capsys.readouterr()
    assert batch_id in shown.err
    assert batch_id not in shown.out  # the job's own output stays clean


_SHOWN = """
import logging, sys
import anyio
from batchmetrics import BatchMetrics

logging.basicConfig(stream=sys.stdout, level=logging.WARNING)  # stderr: the terminal

async def main():
    async with BatchMetrics("shown", display=True, interval=0.02,
                            summary_path=sys.argv[1]) as m:
        for i in range(40):
            await m.record_file(f"f{i}.wfm", duration=0.01)
            await anyio.sleep(0.02)  # the work; the display redraws meanwhile
    print("recorded", m.summary().total_files)

anyio.run(main)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_a_terminal_that_goes_away_mid_batch_does_not_fail_the_batch(tmp_path: Path) -> None:
    pytest.importorskip("rich")
    import pty  # POSIX only

    # The display draws on a real terminal (a pty), which is closed mid-run, as when
    # an ssh session drops: drawing fails, and the batch must still complete.
    summary = tmp_path / "summary.json"
    master, slave = pty.openpty()
    try:
        child = subprocess.Popen([sys.executable, "-c", _SHOWN, str(summary)],
                                 stdin=slave, stdout=subprocess.PIPE, stderr=slave)
    finally:
        os.close(slave)
    try:
        drawn = b""
        while b"shown" not in drawn:  # the bar is on the terminal
            drawn += os.read(master, 4096)
    finally:
        os.close(master)  # the terminal goes away
    out, _ = child.communicate(timeout=60)
    said = out.decode()
    assert child.returncode == 0, said
    assert "recorded 40" in said
    assert "display of batch 'shown' failed" in said  # said, not raised
    written = json.loads(summary.read_text(encoding="utf-8"))
    assert (written["state"], written["total_files"]) == ("finished", 40)


def test_without_rich_or_logging_set_up_the_status_line_goes_to_stderr() -> None:
    # display=True asked to see progress: with rich missing and logging not set up,
    # the INFO lines were dropped and nothing showed
    code = """
import sys
sys.modules["rich"] = None  # not installed
import anyio
from batchmetrics import BatchMetrics

async def main():
    async with BatchMetrics("plain", display=True, interval=0.05, total_files=10) as m:
        for i in range(10):
            await m.record_file(f"f{i}.wfm", duration=0.01)
            await anyio.sleep(0.03)

anyio.run(main)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    lines = done.stderr.splitlines()
    assert any(line.startswith("batch plain: ") and "files/s now" in line for line in lines)
    assert lines[-1].startswith("finished: batch plain: 10/10 files (100.0%)"), lines[-1]


def test_the_status_line_names_the_most_frequent_error_types_and_counts_the_rest() -> None:
    from batchmetrics import Aggregate
    from batchmetrics._display import status_line
    from batchmetrics._events import ERROR

    agg = Aggregate(max_error_types=5)
    types = ["KeyError"] + ["OSError"] * 3 + ["ValueError"] * 2 + ["A", "B", "C", "D"]
    agg.add_batch([(f"f{i}", 1.8e9, 0.1, 0, 0, 0, ERROR, t, "m", None)
                   for i, t in enumerate(types)])
    line = status_line(agg.to_summary("b"))
    # 5 types counted (max_error_types), 3 named; errors of types past the cap counted
    assert "10 errors (OSError 3, ValueError 2, A 1, 2 more types, 2 of other types)" in line

    one = Aggregate()
    one.add_batch([("f", 1.8e9, 0.1, 0, 0, 0, ERROR, "OSError", "m", None)])
    assert "| 1 error (OSError 1) |" in status_line(one.to_summary("b"))
    assert ": 1 file |" in status_line(one.to_summary("b"))
