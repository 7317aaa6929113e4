"""A seeded, realistic mix of record calls, replayable on the reference and on ours."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from batchmetrics import BatchMetrics

ERROR_TYPES = ("ValueError", "OSError", "KeyError", "TimeoutError", "UnicodeDecodeError")


@dataclass(frozen=True)
class Call:
    """One record call: ``method`` of both APIs, its arguments, and ours-only keywords."""

    method: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # keywords the reference lacks


def mixed_calls(n: int, seed: int) -> list[Call]:
    """Successes (lognormal durations, a few 0-duration), errors of several types (both
    ``record_error`` and ``record_file(status="error")``) and skips."""
    rng = random.Random(seed)
    calls: list[Call] = []
    for i in range(n):
        name = f"run-{seed}/file_{i:05d}.wfm"
        roll = rng.random()
        if roll < 0.72:
            samples = rng.randint(1_000, 2_000_000)
            kwargs: dict[str, Any] = {
                "duration": rng.lognormvariate(-3.0, 1.1),
                "samples": samples,
                "measurements": rng.randint(0, 40),
            }
            if rng.random() < 0.2:
                kwargs["memory_peak"] = rng.randint(1 << 20, 1 << 30)
            calls.append(Call("record_file", (name,), kwargs,
                              {"bytes_processed": samples * 8 + rng.randint(0, 4096)}))
        elif roll < 0.76:  # instant successes (cache hits): not timed, still counted
            calls.append(Call("record_file", (name,), {"duration": 0.0, "samples": 10},
                              {"bytes_processed": 80}))
        elif roll < 0.83:
            etype = rng.choice(ERROR_TYPES)
            calls.append(Call("record_error", (name, etype, f"{etype} in {name}",
                                               rng.uniform(0.0, 0.2))))
        elif roll < 0.88:
            etype = rng.choice(ERROR_TYPES[:3])
            calls.append(Call("record_file", (name,), {
                "duration": rng.uniform(0.001, 0.5), "samples": rng.randint(0, 100),
                "status": "error", "error_type": etype, "error_message": "partial read"}))
        else:
            calls.append(Call("record_skip", (name,),
                              {"reason": rng.choice(["duplicate", "empty", ""])}))
    return calls


def apply_reference(ref: Any, calls: list[Call]) -> None:
    for call in calls:
        getattr(ref, call.method)(*call.args, **call.kwargs)


async def apply_ours(metrics: BatchMetrics, calls: list[Call]) -> None:
    for call in calls:
        await getattr(metrics, call.method)(*call.args, **call.kwargs, **call.extra)


def timed_durations(calls: list[Call]) -> list[float]:
    """Durations of successful calls with duration > 0, in call order."""
    return [c.kwargs["duration"] for c in calls
            if c.method == "record_file" and c.kwargs.get("status", "success") == "success"
            and c.kwargs["duration"] > 0]


def success_bytes(calls: list[Call]) -> int:
    return sum(c.extra.get("bytes_processed", 0) for c in calls
               if c.method == "record_file" and c.kwargs.get("status", "success") == "success")
