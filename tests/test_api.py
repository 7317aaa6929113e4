"""The public namespace and the layering of the package."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import batchmetrics

PURE_CORE = [
    "batchmetrics._stats",
    "batchmetrics._sketch",
    "batchmetrics._events",
    "batchmetrics._files",
    "batchmetrics._render",
    "batchmetrics._summary",
    "batchmetrics._aggregate",
    "batchmetrics._window",
]


def test_all_is_sorted_and_complete() -> None:
    assert batchmetrics.__all__ == sorted(batchmetrics.__all__)
    public = {name for name in vars(batchmetrics) if not name.startswith("_")}
    public -= {"testing", "demo"}  # public submodules, imported on purpose by users
    assert public == set(batchmetrics.__all__)
    for name in batchmetrics.__all__:
        assert getattr(batchmetrics, name).__module__.startswith("batchmetrics")


def test_stats_core_imports_no_io_or_async_library() -> None:
    package_dir = Path(batchmetrics.__file__).parent
    code = textwrap.dedent(f"""
        import importlib, sys, types
        # the package's __init__ imports the collector: load the core modules without it
        package = types.ModuleType("batchmetrics")
        package.__path__ = [{str(package_dir)!r}]
        sys.modules["batchmetrics"] = package
        for blocked in ("anyio", "aiofiles", "aiosqlite", "sqlite3", "asyncio"):
            sys.modules[blocked] = None  # any import of them now raises ImportError
        for name in {PURE_CORE!r}:
            importlib.import_module(name)
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
