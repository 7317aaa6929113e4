"""Shared fixtures: the reference design, realistic events."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_DIR = ROOT.parent / "shared" / "reference"


@pytest.fixture(scope="session")
def reference_cls() -> Any:
    """The reference design's ``BatchMetrics`` (skips when ../shared/reference is absent)."""
    if not REFERENCE_DIR.is_dir():
        pytest.skip("reference design not found at ../shared/reference")
    if str(REFERENCE_DIR) not in sys.path:
        sys.path.insert(0, str(REFERENCE_DIR))
    from tracekit.batch.metrics import BatchMetrics as Reference

    return Reference
