"""Record-path benchmark: batchmetrics against the reference design, same process, same run.

    python bench/bench_record.py            # N = 100,000 events, 5 interleaved rounds
    python bench/bench_record.py --n 20000 --rounds 3

Times the reference's synchronous ``record_file`` loop (imported from
``../shared/reference`` when present) and our awaited ``record_file`` end to end,
from entering ``async with BatchMetrics`` until the block has exited (so the
final drain is included). Rounds are interleaved and each side's best round is
kept, since this machine is noisy. Also measures ``summary()`` at 1,000,000
files and the memory the aggregate holds while 200,000 more files are recorded
with ``keep_files=False``.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio

from batchmetrics import BatchMetrics

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import (  # noqa: E402
    Row,
    make_events,
    print_table,
    reference_class,
    replay_ours,
    replay_reference,
)


def time_reference(ref_cls: Any, events: list[Row]) -> float:
    ref = ref_cls("bench")
    ref.start()
    t0 = time.perf_counter()
    replay_reference(ref, events)
    return time.perf_counter() - t0


def time_ours(events: list[Row], *, producers: int, keep_files: bool, **kw: Any) -> float:
    # each producer works through its own share of the files, as a worker pool does
    size = -(-len(events) // producers)
    shares = [events[i * size:(i + 1) * size] for i in range(producers)]

    async def main() -> float:
        t0 = time.perf_counter()
        async with BatchMetrics("bench", keep_files=keep_files, **kw) as m:
            if producers == 1:
                await replay_ours(m, events)
            else:
                async with anyio.create_task_group() as tg:
                    for i in range(producers):
                        tg.start_soon(replay_ours, m, shares[i])
        elapsed = time.perf_counter() - t0
        assert m.summary().total_files == len(events)
        return elapsed

    return anyio.run(main)


def best_of(rounds: int, cases: dict[str, Callable[[], float]]) -> dict[str, float]:
    best = {name: float("inf") for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():  # interleaved: every case once per round
            gc.collect()
            best[name] = min(best[name], fn())
    return best


def summary_time(n_files: int) -> float:
    """Seconds for one summary() of a batch holding ``n_files`` files (best of 20)."""
    events = make_events(50_000, seed=7)

    async def main() -> float:
        async with BatchMetrics("summary", keep_files=False, buffer_size=65536) as m:
            for _ in range(n_files // len(events)):
                await replay_ours(m, events)
            await m.snapshot()
            best = float("inf")
            for _ in range(20):
                t0 = time.perf_counter()
                m.summary()
                best = min(best, time.perf_counter() - t0)
        assert m.summary().total_files == n_files
        return best

    return anyio.run(main)


def aggregate_growth(more: int) -> int:
    """Bytes still allocated after recording ``more`` files beyond a warmed-up batch."""
    warm = make_events(50_000, seed=3)
    extra = make_events(more, seed=4)

    async def main() -> int:
        async with BatchMetrics("memory", keep_files=False) as m:
            await replay_ours(m, warm)
            await m.snapshot()
            gc.collect()
            tracemalloc.start()
            before = tracemalloc.take_snapshot()
            await replay_ours(m, extra)
            await m.snapshot()
            gc.collect()
            after = tracemalloc.take_snapshot()
            tracemalloc.stop()
            stats = after.compare_to(before, "filename")
            ours = [s for s in stats if "batchmetrics" in s.traceback[0].filename]
            return sum(s.size_diff for s in ours)

    return anyio.run(main)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="events per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--summary-files", type=int, default=1_000_000)
    args = parser.parse_args()

    ref_cls = reference_class()
    events = make_events(args.n, seed=1)
    cases: dict[str, Callable[[], float]] = {}
    if ref_cls is not None:
        cases["reference record_file (sync)"] = lambda: time_reference(ref_cls, events)
    cases["ours keep_files=False, 1 producer"] = lambda: time_ours(
        events, producers=1, keep_files=False)
    cases["ours keep_files=False, 16 producers"] = lambda: time_ours(
        events, producers=16, keep_files=False)
    cases["ours keep_files=True, 1 producer"] = lambda: time_ours(
        events, producers=1, keep_files=True)
    best = best_of(args.rounds, cases)
    targets = {
        "ours keep_files=False, 1 producer": 0.7,
        "ours keep_files=False, 16 producers": 0.8,
        "ours keep_files=True, 1 producer": 1.0,
    }
    print_table(best, args.n, targets)

    s = summary_time(args.summary_files)
    print(f"\nsummary() at {args.summary_files:,} files: {s * 1e3:.3f} ms (target <= 1 ms)")
    grow = aggregate_growth(200_000)
    print(f"aggregate memory growth over 200,000 more files (keep_files=False): "
          f"{grow / 1024:.1f} KiB (target <= 64 KiB)")


if __name__ == "__main__":
    main()
