"""Watch a long batch while it runs: terminal progress, a per-file log, a live summary file.

Processes real files (created in a temp folder) with async workers, decodes
them in worker threads that record with ``track_threadsafe``, shows a live
progress bar (``rich`` if installed, else a log line every interval), streams
every per-file row to ``out/files.jsonl`` with ``keep_files=False`` (constant
memory), rewrites ``out/summary.json`` every interval, and prints a one-line
``live()`` summary from a separate task.

    python examples/live_progress.py [--files 3000] [--workers 8] [--out out]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import tempfile
from pathlib import Path

import aiofiles
import anyio
import anyio.to_thread
from anyio.abc import ObjectReceiveStream

from batchmetrics import BatchMetrics, JsonlSink
from batchmetrics.demo import decode, make_files_in_thread


async def worker(metrics: BatchMetrics, jobs: ObjectReceiveStream[Path]) -> None:
    async with jobs:
        async for path in jobs:
            async with aiofiles.open(path, "rb") as f:
                data = await f.read()

            def work(data: bytes = data, name: str = path.name) -> None:
                # runs in a worker thread: records without touching the event loop
                with metrics.track_threadsafe(name) as item:
                    item.samples, item.measurements = decode(data)
                    item.bytes_processed = len(data)

            with contextlib.suppress(ValueError):  # recorded as an error by the tracker
                await anyio.to_thread.run_sync(work)


async def report(metrics: BatchMetrics) -> None:
    async for s in metrics.live(interval=1.0):
        t = s.throughput
        print(f"[live] {s.total_files} files, {t.recent_files_per_second:.0f} files/s, "
              f"p99 {s.timing.p99_per_file * 1e3:.1f} ms, {s.error_count} errors, "
              f"state {s.state}")


async def run(files: int, workers: int, out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        paths = await make_files_in_thread(Path(tmp), files)
        metrics = BatchMetrics(
            "live-example",
            keep_files=False,
            total_files=len(paths),
            sinks=[JsonlSink(out / "files.jsonl")],
            summary_path=out / "summary.json",
            display=True,
            interval=0.5,
        )
        send, receive = anyio.create_memory_object_stream[Path](workers * 2)
        async with anyio.create_task_group() as outer:
            outer.start_soon(report, metrics)  # outside the batch: it ends when the batch does
            async with metrics, anyio.create_task_group() as tg:
                for _ in range(workers):
                    tg.start_soon(worker, metrics, receive.clone())
                receive.close()
                async with send:
                    for path in paths:
                        await send.send(path)
    s = metrics.summary()
    print(f"done: {s.processed_count} ok, {s.error_count} errors of {s.total_files}; "
          f"per-file log in {out / 'files.jsonl'}, summary in {out / 'summary.json'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=3000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("out"))
    args = parser.parse_args()
    if args.workers < 1 or args.files < 0:
        parser.error(f"--workers must be >= 1 and --files >= 0, got {args.workers} "
                     f"and {args.files}")
    args.out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    anyio.run(run, args.files, args.workers, args.out)


if __name__ == "__main__":
    main()
