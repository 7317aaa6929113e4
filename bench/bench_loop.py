"""Loop benchmark: how long the outputs hold the event loop while a batch runs.

    python bench/bench_loop.py                  # 300,000 events, 4 producers, 3 rounds
    python bench/bench_loop.py --n 100000 --rounds 1

A heartbeat task sleeps 10 ms in a loop and records how late each wake-up is,
while 4 coroutine producers record events as fast as they can into a batch with
the outputs of each case. It prints the worst and the 99th-percentile lateness
per case, the worst over rounds. "no outputs" is the floor: producers that never
wait hold the loop between the consumer's turns whatever the outputs. The last
case times the exports of a ``keep_files=True`` batch after it ended.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from batchmetrics import BatchMetrics, CsvSink, JsonlSink


async def _heartbeat(stop: asyncio.Event, late: list[float]) -> None:
    while not stop.is_set():
        t = time.perf_counter()
        await asyncio.sleep(0.01)
        late.append(time.perf_counter() - t - 0.01)


async def _during(work: Callable[[], Awaitable[None]]) -> list[float]:
    stop, late = asyncio.Event(), list[float]()
    beat = asyncio.create_task(_heartbeat(stop, late))
    await asyncio.sleep(0.02)
    try:
        await work()
    finally:
        stop.set()
        await beat
    return late


def run_case(case: str, n: int, folder: Path) -> list[float]:
    async def main() -> list[float]:
        everything = case == "every output"
        sinks: list[JsonlSink | CsvSink] = []
        if case == "JSONL sink" or everything:
            sinks.append(JsonlSink(folder / "files.jsonl"))
        if case == "CSV sink" or everything:
            sinks.append(CsvSink(folder / "files.csv"))
        store = case in ("store with per-file rows", "every output")
        m = BatchMetrics(f"loop-{time.monotonic_ns()}", keep_files=case == "exports",
                         sinks=sinks, interval=0.5,
                         summary_path=folder / "summary.json" if everything else None,
                         store=folder / "history.db" if store else None, store_files=store)

        async def producer(j: int) -> None:
            for i in range(n // 4):
                await m.record_file(f"p{j}/f{i:07d}.wfm", duration=0.001 * (i % 13 + 1),
                                    samples=1000, bytes_processed=4096)

        async def body() -> None:
            async with m:
                readers = [asyncio.create_task(_drain_live(m)) for _ in range(2 * everything)]
                await asyncio.gather(*(producer(j) for j in range(4)))
            await asyncio.gather(*readers)

        if case != "exports":
            return await _during(body)
        await body()

        async def exports() -> None:
            await m.export_json(folder / "m.json")
            await m.export_csv(folder / "m.csv")

        return await _during(exports)

    return asyncio.run(main())


async def _drain_live(m: BatchMetrics) -> None:
    async for _ in m.live(interval=0.3):
        pass


CASES = ("no outputs", "JSONL sink", "CSV sink", "store with per-file rows", "every output",
         "exports")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    worst: dict[str, float] = dict.fromkeys(CASES, 0.0)
    p99: dict[str, float] = dict.fromkeys(CASES, 0.0)
    for _ in range(args.rounds):
        for case in CASES:
            with tempfile.TemporaryDirectory() as tmp:
                late = run_case(case, args.n, Path(tmp))
            worst[case] = max(worst[case], max(late))
            p99[case] = max(p99[case], statistics.quantiles(late, n=100, method="inclusive")[98])
    print(f"N = {args.n:,} events from 4 producers, {args.rounds} rounds; heartbeat every "
          "10 ms: how late it woke (worst over rounds)")
    for case in CASES:
        what = f"exports of {args.n:,} kept rows" if case == "exports" else case
        print(f"  {what:<30} worst {worst[case] * 1e3:6.1f} ms, p99 {p99[case] * 1e3:6.1f} ms")


if __name__ == "__main__":
    main()
