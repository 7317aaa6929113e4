"""History-store benchmark: the same batch without a store, with one, and with per-file rows.

    python bench/bench_store.py            # N = 200,000 events, 9 interleaved rounds
    python bench/bench_store.py --n 50000 --rounds 3

Each case replays the same realistic events (bench/_common.py) through
``BatchMetrics(keep_files=False)`` end to end, from entering the block until it
has exited (so opening the file, recording the run, the checkpoints, the last
per-file chunk and the final write are all included). Every run goes into the
same SQLite file in a temporary folder, as runs of a job do. Rounds are
interleaved (order rotated) and each case's best round is kept, since this
machine is noisy; the ratios are against the batch without a store, same run.
The median of the per-round ratios is printed too, as a check on the best-of ratio.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio

from batchmetrics import BatchMetrics

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import Row, make_events, replay_ours  # noqa: E402


def time_batch(events: list[Row], **kw: Any) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the whole process, database thread included)."""

    async def main() -> tuple[float, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        async with BatchMetrics(f"bench-{uuid.uuid4().hex[:12]}", keep_files=False, **kw) as m:
            await replay_ours(m, events)
        elapsed = time.perf_counter() - t0, time.process_time() - c0
        assert m.summary().total_files == len(events)
        return elapsed

    return anyio.run(main)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000, help="events per round")
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()

    events = make_events(args.n, seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        db = os.path.join(tmp, "history.db")
        cases: dict[str, Callable[[], tuple[float, float]]] = {
            "no store": lambda: time_batch(events),
            "store, no per-file rows": lambda: time_batch(events, store=db),
            "store, per-file rows (store_files=True)": lambda: time_batch(
                events, store=db, store_files=True),
        }
        targets = {"store, no per-file rows": 1.1, "store, per-file rows (store_files=True)": 2.0}
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
        names = list(cases)
        for r in range(args.rounds):
            # interleaved: every case once per round, the order rotated from round to round
            for name in names[r % len(names):] + names[:r % len(names)]:
                gc.collect()
                times[name].append(cases[name]())
        size = sum(os.path.getsize(os.path.join(tmp, f)) for f in os.listdir(tmp))
    wall = {name: min(w for w, _ in t) for name, t in times.items()}
    cpu = {name: min(c for _, c in t) for name, t in times.items()}
    print(f"N = {args.n:,} events, keep_files=False; best of {args.rounds} interleaved rounds")
    print(f"{'case':<40} {'us/event':>9} {'vs none':>8} {'target':>7} {'median':>7} "
          f"{'CPU':>6}")
    for name in cases:
        target = f"<={targets[name]}x" if name in targets else ""
        paired = statistics.median(t[0] / b[0] for t, b in zip(times[name], times["no store"],
                                                                strict=True))
        print(f"{name:<40} {wall[name] / args.n * 1e6:>9.3f} "
              f"{wall[name] / wall['no store']:>7.2f}x {target:>7} {paired:>6.2f}x "
              f"{cpu[name] / cpu['no store']:>5.2f}x")
    print("vs none: best wall time against the best without a store; median: the median of "
          "the\nper-round wall ratios; CPU: best process CPU time (database thread included) "
          "against\nthe best without a store.")
    stored_rows = args.n * args.rounds
    print(f"\nhistory file after {args.rounds} runs with per-file rows: {size / 1e6:.1f} MB "
          f"(~{size / stored_rows:.0f} bytes per stored file)")


if __name__ == "__main__":
    main()
