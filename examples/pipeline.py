"""A realistic async pipeline measured by batchmetrics.

Creates a folder of sample "waveform" files (some corrupt, some duplicates),
processes them with a pool of coroutine workers that read each file with
aiofiles and decode it, and records every file with ``metrics.track()``.
Prints the summary and writes JSON and CSV reports to ``out/``.

    python examples/pipeline.py [--files 2000] [--workers 16] [--out out]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import random
import struct
import tempfile
from itertools import pairwise
from pathlib import Path

import aiofiles
import anyio
from anyio.abc import ObjectReceiveStream

from batchmetrics import BatchMetrics

MAGIC = b"WFM1"


def make_files(folder: Path, count: int, seed: int = 42) -> list[Path]:
    """Write ``count`` files: a header (magic, sample count) then int16 samples."""
    rng = random.Random(seed)
    paths = []
    for i in range(count):
        n = rng.randrange(2_000, 40_000)
        header = MAGIC + struct.pack("<I", n)
        if i % 37 == 5:
            header = b"JUNK" + header[4:]  # a corrupt header
        body = rng.randbytes(2 * n)
        if i % 53 == 7:
            body = body[: n]  # truncated
        path = folder / f"capture_{i:05d}.wfm"
        path.write_bytes(header + body)
        paths.append(path)
    # a few exact duplicates of earlier files, which the pipeline skips
    for j in range(0, count, 97):
        dup = folder / f"capture_{j:05d}_copy.wfm"
        dup.write_bytes(paths[j].read_bytes())
        paths.append(dup)
    return paths


def decode(data: bytes) -> tuple[int, int]:
    """(samples, measurements) of a file's bytes; ValueError when it is bad."""
    if data[:4] != MAGIC:
        raise ValueError(f"bad magic {data[:4]!r}")
    (n,) = struct.unpack("<I", data[4:8])
    if len(data) - 8 != 2 * n:
        raise ValueError(f"truncated: expected {2 * n} bytes of samples, got {len(data) - 8}")
    samples = struct.unpack(f"<{n}h", data[8:])
    peaks = sum(1 for a, b in pairwise(samples) if a > 30_000 >= b)
    return n, peaks


async def process(metrics: BatchMetrics, path: Path, seen: set[str]) -> None:
    """One file: read, de-duplicate, decode. ``track()`` times it and records the outcome."""
    async with metrics.track(path.name) as item:
        async with aiofiles.open(path, "rb") as f:
            data = await f.read()
        digest = hashlib.sha256(data).hexdigest()
        if digest in seen:
            item.skip("duplicate content")
            return
        seen.add(digest)
        samples, peaks = await anyio.to_thread.run_sync(decode, data)
        item.samples = samples
        item.measurements = peaks
        item.bytes_processed = len(data)


async def worker(metrics: BatchMetrics, jobs: ObjectReceiveStream[Path], seen: set[str]) -> None:
    async with jobs:
        async for path in jobs:
            # track() has recorded a ValueError (type and message): go on with the next file
            with contextlib.suppress(ValueError):
                await process(metrics, path, seen)


async def run(files: int, workers: int, out: Path) -> None:
    """Process ``files`` sample files with ``workers`` coroutines; reports go to ``out``."""
    with tempfile.TemporaryDirectory() as tmp:
        paths = await anyio.to_thread.run_sync(make_files, Path(tmp), files)
        send, receive = anyio.create_memory_object_stream[Path](workers * 2)
        seen: set[str] = set()
        async with (
            BatchMetrics("example-pipeline", total_files=len(paths)) as metrics,
            anyio.create_task_group() as tg,
        ):
            for _ in range(workers):
                tg.start_soon(worker, metrics, receive.clone(), seen)
            receive.close()
            async with send:
                for path in paths:
                    await send.send(path)
    summary = metrics.summary()
    print(json.dumps(summary.to_dict(), indent=2))
    await metrics.export_json(out / "metrics.json")
    await metrics.export_csv(out / "metrics.csv")
    print(f"\n{summary.processed_count} ok, {summary.error_count} errors, "
          f"{summary.skip_count} skipped of {summary.total_files} files in "
          f"{summary.timing.total_duration:.2f}s; reports in {out}/")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("out"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    anyio.run(run, args.files, args.workers, args.out)


if __name__ == "__main__":
    main()
