"""The sample job behind ``batchmetrics demo``, reusable by examples and your own trials.

A folder of sample "waveform" files (a header with a sample count, then int16
samples; some corrupt, some truncated, some exact duplicates) is processed by
coroutine workers: each reads its file with aiofiles, skips duplicates by
content hash and decodes the samples in a worker thread. ``metrics.track()``
times every file and records its outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import struct
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from pathlib import Path

import aiofiles
import anyio
import anyio.to_thread
from anyio.abc import ObjectReceiveStream

from ._collector import BatchMetrics

MAGIC = b"WFM1"


def make_files(folder: Path, count: int, seed: int = 42, *,
               stop: threading.Event | None = None) -> list[Path]:
    """Write ``count`` files: every 37th corrupt, every 53rd truncated, and 1 in 100
    (at least one) an exact copy of an earlier one, which the pipeline skips.

    ``stop``: once set, no more files are written (the files so far are returned)."""
    rng = random.Random(seed)
    copies = max(count // 100, 1) if count > 1 else 0
    originals = count - copies
    paths: list[Path] = []
    for i in range(originals):
        if stop is not None and stop.is_set():
            return paths
        n = rng.randrange(2_000, 40_000)
        header = MAGIC + struct.pack("<I", n)
        if i % 37 == 5:
            header = b"JUNK" + header[4:]  # a corrupt header
        body = rng.randbytes(2 * n)
        if i % 53 == 7:
            body = body[:n]  # truncated
        path = folder / f"capture_{i:05d}.wfm"
        path.write_bytes(header + body)
        paths.append(path)
    for k in range(copies):
        if stop is not None and stop.is_set():
            return paths
        j = k * originals // copies  # spread over the originals
        dup = folder / f"capture_{j:05d}_copy.wfm"
        dup.write_bytes(paths[j].read_bytes())
        paths.append(dup)
    return paths


async def make_files_in_thread(folder: Path, count: int, seed: int = 42) -> list[Path]:
    """``make_files`` in a worker thread. Cancelled (Ctrl-C), it stops the thread and
    waits for it, so that the folder can be removed at once: a thread still writing
    into it made the removal fail ("Directory not empty") and left the files behind."""
    stop = threading.Event()
    with ThreadPoolExecutor(1, thread_name_prefix="batchmetrics-demo-files") as pool:
        made = pool.submit(make_files, folder, count, seed, stop=stop)
        try:
            return await asyncio.wrap_future(made)
        except BaseException:
            stop.set()  # the pool's exit waits for the file being written, then the thread
            raise


def decode(data: bytes) -> tuple[int, int]:
    """(samples, measurements) of a file's bytes; ``ValueError`` when it is bad."""
    if data[:4] != MAGIC:
        raise ValueError(f"bad magic {data[:4]!r}")
    (n,) = struct.unpack("<I", data[4:8])
    if len(data) - 8 != 2 * n:
        raise ValueError(f"truncated: expected {2 * n} bytes of samples, got {len(data) - 8}")
    samples = struct.unpack(f"<{n}h", data[8:])
    peaks = sum(1 for a, b in pairwise(samples) if a > 30_000 >= b)
    return n, peaks


async def process(metrics: BatchMetrics, path: Path, seen: set[str], latency: float = 0.0
                  ) -> None:
    """One file: read, de-duplicate, decode. ``track()`` times it and records the outcome."""
    async with metrics.track(path.name) as item:
        if latency:  # what a network file system or object store would add
            await anyio.sleep(random.uniform(0.5, 1.5) * latency)
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


async def worker(metrics: BatchMetrics, jobs: ObjectReceiveStream[Path], seen: set[str],
                 latency: float = 0.0) -> None:
    async with jobs:
        async for path in jobs:
            # track() has recorded a ValueError (type and message): go on with the next file
            with contextlib.suppress(ValueError):
                await process(metrics, path, seen, latency)


async def run_pipeline(metrics: BatchMetrics, paths: list[Path], workers: int,
                       latency: float = 0.0) -> None:
    """Process ``paths`` with ``workers`` coroutines, recording into ``metrics``."""
    send, receive = anyio.create_memory_object_stream[Path](workers * 2)
    seen: set[str] = set()
    async with anyio.create_task_group() as tg:
        for _ in range(workers):
            tg.start_soon(worker, metrics, receive.clone(), seen, latency)
        receive.close()
        async with send:
            for path in paths:
                await send.send(path)


async def run_demo(db: str | os.PathLike[str], *, files: int, workers: int, batch_id: str,
                   latency: float, display: bool) -> BatchMetrics:
    """The demo: sample files in a temp folder, processed and stored in the history ``db``."""
    with tempfile.TemporaryDirectory(prefix="batchmetrics-demo-") as tmp:
        paths = await make_files_in_thread(Path(tmp), files)
        async with BatchMetrics(batch_id, total_files=len(paths), store=db, store_files=True,
                                display=display, interval=0.25) as metrics:
            await run_pipeline(metrics, paths, workers, latency)
    return metrics
