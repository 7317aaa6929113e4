"""Sink benchmark: what a JSONL sink adds per event, and memory over a million files.

    python bench/bench_sinks.py                 # N = 100,000 events, 25 rounds, then 1M files
    python bench/bench_sinks.py --n 20000 --rounds 3 --million 200000

Part 1 times, in one process and interleaved rounds, the reference's
``record_file``, our ``keep_files=False`` batch without a sink, and the same
batch with a ``JsonlSink``; it prints what the sink adds per event as a ratio of
the reference's per-event time, two ways: from the best round of each case, and
as the median over rounds of the ratio within a round (which cancels the slow
drifts of a shared machine's speed). The sink's cost is the difference of two
noisy times, so a single round's ratio moves by about ±0.1 here (the quartiles
of the rounds are printed): the default of 25 rounds keeps the median within a
few hundredths between runs (0.23-0.29x in 11 runs), where 9 rounds, the old
default, let it move by ±0.1 (0.16-0.35x).

Part 2 runs in a fresh child process: 1,000,000 files with ``keep_files=False``
and a ``JsonlSink``, events made on the fly; it prints how much the process's
peak RSS grew, then checks that the log has one valid JSON line per file.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import anyio

from batchmetrics import BatchMetrics, JsonlSink

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import make_events, reference_class, replay_ours  # noqa: E402
from bench_record import time_reference  # noqa: E402


def time_ours(events: list[tuple[int, str, float, int, int, int, str, str]],
              log: Path | None, full: bool = False) -> float:
    if log is not None:
        # a fresh file each run: truncating the last run's tens of MB costs the
        # file system 2-18 ms here, a cost of the benchmark, not of the sink
        log.unlink(missing_ok=True)

    async def main() -> float:
        sinks = [JsonlSink(log, full=full)] if log is not None else []
        t0 = time.perf_counter()
        async with BatchMetrics("bench", keep_files=False, sinks=sinks) as m:
            await replay_ours(m, events)
        return time.perf_counter() - t0

    return anyio.run(main)


def _status_kib(field: str) -> int:
    """A memory figure of this process from /proc/self/status, in KiB (Linux).

    ``VmHWM`` is the peak RSS of this process image; ``ru_maxrss`` is not used,
    as Linux carries it over from the parent across fork and exec.
    """
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def million(n: int) -> None:
    """Child process: ``n`` files, keep_files=False, a JSONL sink; print RSS growth."""
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "files.jsonl"

        async def main() -> None:
            async with BatchMetrics("million", keep_files=False, sinks=[JsonlSink(log)]) as m:
                record_file, record_error = m.record_file, m.record_error
                for i in range(n):
                    name = f"shard-{i % 64:02d}/capture_{i:07d}.wfm"
                    if i % 20 == 3:
                        await record_error(name, "ValueError", "bad header", duration=0.01)
                    else:
                        await record_file(name, duration=0.001 + (i % 97) * 1e-4,
                                          samples=i % 5000, bytes_processed=2 * (i % 5000))

        gc.collect()
        rss_before = _status_kib("VmRSS")
        peak_before = _status_kib("VmHWM")
        t0 = time.perf_counter()
        anyio.run(main)
        elapsed = time.perf_counter() - t0
        peak = _status_kib("VmHWM")
        rss_after = _status_kib("VmRSS")
        lines = 0
        with log.open(encoding="utf-8") as f:
            for line in f:
                json.loads(line)
                lines += 1
        size = log.stat().st_size
    grew = max(peak if peak > peak_before else 0, rss_after) - rss_before
    print(f"{n:,} files, keep_files=False, JSONL sink: {elapsed:.1f} s; RSS "
          f"{rss_before / 1024:.1f} MB before, {rss_after / 1024:.1f} MB after, peak "
          f"{peak / 1024:.1f} MB: the process grew by {grew / 1024:.1f} MB "
          "(target <= 20 MB); "
          f"log: {lines:,} valid JSON lines of {n:,}, {size / 1e6:.0f} MB")
    if lines != n:
        raise SystemExit(f"the log has {lines} lines, expected {n}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--million", type=int, default=1_000_000,
                        help="files in the memory run (0 to skip)")
    parser.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        million(args.child)
        return

    ref_cls = reference_class()
    events = make_events(args.n, seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "bench.jsonl"
        cases: dict[str, Callable[[], float]] = {}
        if ref_cls is not None:
            cases["reference"] = lambda: time_reference(ref_cls, events)
        cases["ours, no sink"] = lambda: time_ours(events, None)
        cases["ours, JSONL sink"] = lambda: time_ours(events, log)
        cases["ours, JSONL full=True"] = lambda: time_ours(events, log, full=True)
        rounds: list[dict[str, float]] = []
        for _ in range(args.rounds):
            times = {}
            for name, fn in cases.items():  # interleaved: every case once per round
                gc.collect()
                times[name] = fn() / args.n * 1e6
            rounds.append(times)
    per = {k: min(r[k] for r in rounds) for k in cases}
    print(f"N = {args.n:,} events, keep_files=False; {args.rounds} interleaved rounds")
    for name, us in per.items():
        print(f"  {name:<22} best {us:7.3f} us/event, median "
              f"{statistics.median(r[name] for r in rounds):7.3f}")
    for case, what in (("ours, JSONL sink", "JSONL sink (compact lines, the default)"),
                       ("ours, JSONL full=True", "JSONL sink with full=True (export rows)")):
        added = per[case] - per["ours, no sink"]
        if "reference" not in per:
            print(f"{what} adds {added:.3f} us/event (reference not found: no ratio)")
            continue
        ratios = [(r[case] - r["ours, no sink"]) / r["reference"] for r in rounds]
        paired = statistics.median(ratios)
        spread = ""
        if len(ratios) >= 4:  # how much one round's ratio moves: the noise
            q1, _, q3 = statistics.quantiles(ratios, n=4)
            spread = f" (rounds' quartiles {q1:.2f}-{q3:.2f}x)"
        target = " (target <= 0.3x)" if case == "ours, JSONL sink" else ""
        print(f"{what} adds {added:.3f} us/event = {added / per['reference']:.2f}x the "
              f"reference's record_file, best rounds; {paired:.2f}x, median of the "
              f"rounds' own ratios{spread}{target}")
    if args.million:
        subprocess.run([sys.executable, __file__, "--child", str(args.million)], check=True)


if __name__ == "__main__":
    main()
