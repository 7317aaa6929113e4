"""Shared pieces of the benchmarks: realistic events, the reference, replays, the table."""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

from batchmetrics import BatchMetrics

#: (kind, filename, duration, samples, measurements, bytes, error_type, error_message);
#: kind 0 = success, 1 = error, 2 = skip.
Row = tuple[int, str, float, int, int, int, str, str]

REFERENCE_DIR = Path(__file__).resolve().parents[2] / "shared" / "reference"
_ERRORS = [("ValueError", "bad header"), ("OSError", "read failed"),
           ("TimeoutError", "decoder timed out")]


def make_events(n: int, seed: int = 0) -> list[Row]:
    """``n`` realistic events: lognormal durations, 5% errors, 2% skips."""
    rng = random.Random(seed)
    rows: list[Row] = []
    for i in range(n):
        name = f"shard-{i % 64:02d}/capture_{i:07d}.wfm"
        u = rng.random()
        duration = rng.lognormvariate(-3.0, 0.8)
        if u < 0.05:
            etype, emsg = _ERRORS[i % len(_ERRORS)]
            rows.append((1, name, duration, 0, 0, 0, etype, emsg))
        elif u < 0.07:
            rows.append((2, name, 0.0, 0, 0, 0, "", "duplicate"))
        else:
            samples = rng.randrange(10_000, 1_000_000)
            rows.append((0, name, duration, samples, rng.randrange(1, 20), samples * 2, "", ""))
    return rows


def reference_class() -> Any | None:
    """The reference ``BatchMetrics`` from ``../shared/reference``, or ``None`` if absent."""
    if not REFERENCE_DIR.is_dir():
        return None
    if str(REFERENCE_DIR) not in sys.path:
        sys.path.insert(0, str(REFERENCE_DIR))
    from tracekit.batch.metrics import BatchMetrics as Reference

    return Reference


def replay_reference(ref: Any, rows: list[Row]) -> None:
    record_file, record_error, record_skip = ref.record_file, ref.record_error, ref.record_skip
    for kind, name, duration, samples, measurements, _nbytes, etype, emsg in rows:
        if kind == 0:
            record_file(name, duration=duration, samples=samples, measurements=measurements)
        elif kind == 1:
            record_error(name, etype, emsg, duration=duration)
        else:
            record_skip(name, reason=emsg)


async def replay_ours(m: BatchMetrics, rows: list[Row]) -> None:
    record_file, record_error, record_skip = m.record_file, m.record_error, m.record_skip
    for kind, name, duration, samples, measurements, nbytes, etype, emsg in rows:
        if kind == 0:
            await record_file(name, duration=duration, samples=samples,
                              measurements=measurements, bytes_processed=nbytes)
        elif kind == 1:
            await record_error(name, etype, emsg, duration=duration)
        else:
            await record_skip(name, reason=emsg)


def print_table(best: dict[str, float], n: int, targets: dict[str, float]) -> None:
    ref_key = next((k for k in best if k.startswith("reference")), None)
    ref = best[ref_key] if ref_key else None
    print(f"N = {n:,} events; best round per case")
    print(f"{'case':<44} {'us/event':>9} {'vs ref':>8} {'target':>8}")
    for name, secs in best.items():
        per = secs / n * 1e6
        ratio = f"{secs / ref:.2f}x" if ref else "n/a"
        target = f"<={targets[name]}x" if name in targets else ""
        print(f"{name:<44} {per:>9.3f} {ratio:>8} {target:>8}")
    if ref is None:
        print("(reference not found at ../shared/reference: ratios unavailable)")
