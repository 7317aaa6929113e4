"""A realistic async pipeline measured by batchmetrics.

Creates a folder of sample "waveform" files (some corrupt, some duplicates),
processes them with a pool of coroutine workers that read each file with
aiofiles and decode it, and records every file with ``metrics.track()``.
Prints the summary and writes JSON and CSV reports to ``out/``.

The pipeline itself (``make_files``, ``decode``, and ``process``, the worker
step that calls ``metrics.track()``) is the one ``batchmetrics demo`` runs; it
lives in ``batchmetrics.demo``.

    python examples/pipeline.py [--files 2000] [--workers 16] [--out out]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import anyio

from batchmetrics import BatchMetrics
from batchmetrics.demo import make_files_in_thread, run_pipeline


async def run(files: int, workers: int, out: Path) -> None:
    """Process ``files`` sample files with ``workers`` coroutines; reports go to ``out``."""
    with tempfile.TemporaryDirectory() as tmp:
        paths = await make_files_in_thread(Path(tmp), files)
        async with BatchMetrics("example-pipeline", total_files=len(paths)) as metrics:
            await run_pipeline(metrics, paths, workers)
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
    if args.workers < 1 or args.files < 0:
        parser.error(f"--workers must be >= 1 and --files >= 0, got {args.workers} "
                     f"and {args.files}")
    args.out.mkdir(parents=True, exist_ok=True)
    anyio.run(run, args.files, args.workers, args.out)


if __name__ == "__main__":
    main()
