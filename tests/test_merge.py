"""Merging exported states equals one batch over all their events (in process and via the CLI)."""

from __future__ import annotations

import json
import math
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchmetrics import Aggregate, BatchMetrics, merge_states
from batchmetrics._events import Event

SCRIPT = Path(sys.executable).parent / "batchmetrics"
_ERROR_TYPES = ("ValueError", "OSError", "TimeoutError")

# (duration, status code, samples, error type index)
event_strategy = st.tuples(
    st.one_of(st.just(0.0), st.floats(1e-6, 1e3, allow_nan=False, allow_infinity=False)),
    st.sampled_from([0, 0, 0, 1, 2]),
    st.integers(0, 10**9),
    st.integers(0, len(_ERROR_TYPES) - 1),
)


def to_events(raw: list[tuple[float, int, int, int]]) -> list[Event]:
    events: list[Event] = []
    for i, (duration, status, samples, etype) in enumerate(raw):
        if status == 0:
            events.append((f"f{i}", 1000.0 + i, duration, samples, samples % 7, samples * 2, 0,
                           None, None, None))
        elif status == 1:
            events.append((f"f{i}", 1000.0 + i, duration, 0, 0, 0, 1, _ERROR_TYPES[etype],
                           f"message {i}", None))
        else:
            events.append((f"f{i}", 1000.0 + i, 0.0, 0, 0, 0, 2, None, "skip", None))
    return events


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


@settings(max_examples=150, deadline=None)
@given(raw=st.lists(event_strategy, max_size=300), cuts=st.lists(st.integers(0, 300), max_size=6))
def test_merging_exported_states_equals_one_batch_over_all_events(
        raw: list[tuple[float, int, int, int]], cuts: list[int]) -> None:
    events = to_events(raw)
    bounds = sorted({0, len(events), *(min(c, len(events)) for c in cuts)})
    parts = [events[a:b] for a, b in pairwise(bounds)] or [[]]
    states = []
    for part in parts:
        agg = Aggregate()
        agg.add_batch(part)
        states.append(json.loads(json.dumps(agg.to_state())))  # as exported and read back
    merged = merge_states(states)
    whole = Aggregate()
    whole.add_batch(events)

    for key in ("total_files", "processed_count", "error_count", "skip_count", "samples",
                "measurements", "total_bytes", "by_type"):
        assert getattr(merged, key) == getattr(whole, key), key
    assert merged.timing.count == whole.timing.count
    assert close(merged.timing.mean, whole.timing.mean)
    assert close(merged.timing.m2, whole.timing.m2)
    assert close(merged.busy_seconds, whole.busy_seconds)
    if whole.timing.count:
        assert merged.timing.min == whole.timing.min
        assert merged.timing.max == whole.timing.max
    assert merged.sketch.to_state() == whole.sketch.to_state()
    qs = (0.5, 0.9, 0.95, 0.99)
    if whole.sketch.count:
        assert merged.sketch.quantiles(qs) == whole.sketch.quantiles(qs)


def test_merging_nothing_mergeable_is_an_error() -> None:
    with pytest.raises(ValueError, match="version"):
        merge_states([{"version": 99}])


def _one_file_state(**changes: Any) -> dict[str, Any]:
    agg = Aggregate()
    agg.add_batch([("a", 1000.5, 0.5, 1, 0, 0, 0, None, None, None)])
    agg.start_ts, agg.end_ts = 1000.0, 1001.0
    return {**agg.to_state(), **changes}


@pytest.mark.parametrize(("states", "message"), [
    # each alone: stamps to_summary could not write as dates, or an end before the start
    ([_one_file_state(start_ts=1e300)], r"bad aggregate state: start_ts must be a Unix time "
                                        r"in \[-62135596800, 253402300800\) \(years 1 to 9999\), "
                                        r"got 1e\+300"),
    ([_one_file_state(), _one_file_state(end_ts=253402300800.0)],
     "bad aggregate state: end_ts must be a Unix time in .* got 253402300800.0"),
    ([_one_file_state(start_ts=-62135596801.0)], "start_ts must be .* got -62135596801.0"),
    # together: sums a state cannot hold (each state alone is fine)
    ([_one_file_state(busy_seconds=1e308)] * 2,
     "merged state: busy_seconds must be a finite number, got inf"),
    ([_one_file_state(samples=2**192 - 1)] * 2,
     "merged state: samples must be < 2[*][*]192, got an int of 193 bits"),
    ([_one_file_state(timing={"count": 1, "mean": 1e308, "m2": 1e308, "min": 0.5,
                              "max": 0.5})] * 2,
     "merged state: timing m2 must be a finite number, got inf"),
])
def test_merge_states_refuses_what_its_summary_could_not_show(
        states: list[dict[str, Any]], message: str) -> None:
    copies = json.loads(json.dumps(states))
    with pytest.raises(ValueError, match=message):
        merge_states(states)
    assert states == copies  # the states given are left as they were


def test_merge_states_takes_the_edges_of_the_range() -> None:
    agg = merge_states([_one_file_state(start_ts=-62135596800.0, end_ts=-62135596800.0),
                        _one_file_state(start_ts=0.0, end_ts=253402300799.99997),
                        _one_file_state(busy_seconds=1e308)])
    summary = agg.to_summary("edges")
    assert summary.start_time == "0001-01-01T00:00:00+00:00"
    assert summary.end_time.startswith("9999-12-31T23:59:59.99")
    assert agg.busy_seconds == 1e308 + 1.0


# -- through the command line ----------------------------------------------------------------------


def cli(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          timeout=60, cwd=cwd, check=False)


async def record(m: BatchMetrics, names: range) -> None:
    for i in names:
        if i % 9 == 4:
            await m.record_error(f"f{i}", "OSError", "read failed", duration=0.002)
        elif i % 13 == 5:
            await m.record_skip(f"f{i}", reason="dup")
        else:
            await m.record_file(f"f{i}", duration=0.001 * (1 + i % 23), samples=i,
                                bytes_processed=3 * i)


def test_cli_merge_writes_to_the_longest_file_names_and_refuses_impossible_totals(
        tmp_path: Path) -> None:
    async def export() -> None:
        async with BatchMetrics("one") as m:
            await m.record_file("a.wfm", duration=0.1, samples=5)
        await m.export_json(tmp_path / "in.json")

    anyio.run(export)
    out = tmp_path / ("m" * 245 + ".json")
    result = cli("merge", tmp_path / "in.json", "-o", out)
    assert result.returncode == 0, result.stderr
    assert json.loads(out.read_text())["summary"]["totals"]["samples"] == 5
    # a total no batch can reach (past the float range: rates could not be computed)
    data = json.loads((tmp_path / "in.json").read_text())
    data["state"]["samples"] = 10**309
    (tmp_path / "huge.json").write_text(json.dumps(data))
    result = cli("merge", tmp_path / "huge.json")
    assert result.returncode == 2
    assert "samples must be < 2**192" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_merge_of_three_exports_equals_one_batch_over_all_files(tmp_path: Path) -> None:
    async def batches() -> Aggregate:
        for k in range(3):
            async with BatchMetrics(f"shard-{k}") as m:
                await record(m, range(k * 400, (k + 1) * 400 - 17 * k))
            await m.export_json(tmp_path / f"shard-{k}.json")
        async with BatchMetrics("all") as whole:
            for k in range(3):
                await record(whole, range(k * 400, (k + 1) * 400 - 17 * k))
        return Aggregate.from_state(whole.state_dict())

    whole = anyio.run(batches)
    result = cli("merge", *(tmp_path / f"shard-{k}.json" for k in range(3)),
                 "-o", tmp_path / "total.json")
    assert result.returncode == 0, result.stderr
    assert "merged 3 states" in result.stderr
    out = json.loads((tmp_path / "total.json").read_text())
    assert set(out) == {"summary", "state", "sources"}
    assert len(set(out["sources"])) == 3  # one name per export merged
    merged = Aggregate.from_state(out["state"])
    summary = out["summary"]
    assert summary["batch_id"] == "shard-0+shard-1+shard-2"
    assert summary["total_files"] == whole.total_files == 3 * 400 - 17 * 3
    assert summary["error_count"] == whole.error_count
    assert summary["errors"]["by_type"] == whole.by_type
    assert merged.timing.count == whole.timing.count
    assert close(merged.timing.mean, whole.timing.mean)
    assert close(merged.timing.m2, whole.timing.m2)
    assert merged.sketch.to_state() == whole.sketch.to_state()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left
    # a merged file merges on with other parts, but not with one already in it, which
    # was counted twice without a word
    (tmp_path / "more").mkdir()
    anyio.run(more_shard, tmp_path / "more" / "shard-3.json")
    on = cli("merge", tmp_path / "total.json", tmp_path / "more" / "shard-3.json",
             "-o", tmp_path / "more" / "total.json")
    assert on.returncode == 0, on.stderr
    assert json.loads((tmp_path / "more" / "total.json").read_text())["summary"][
        "total_files"] == whole.total_files + 5
    for inputs in ([tmp_path / "total.json", tmp_path / "shard-0.json"],
                   [tmp_path / "shard-1.json", tmp_path / "more" / "total.json"]):
        again = cli("merge", *inputs, "--batch-id", "x")
        assert again.returncode == 2
        assert again.stdout == ""
        assert "both hold the files of one export (one was merged into the other?); its " \
               "files would be counted twice" in again.stderr
    # the same merged file twice, or beside a copy written before "sources" existed
    merged = json.loads((tmp_path / "total.json").read_text())
    del merged["sources"]
    (tmp_path / "old-total.json").write_text(json.dumps(merged))
    for first, second in (("total.json", "total.json"), ("old-total.json", "total.json")):
        twice = cli("merge", first, second, cwd=tmp_path)
        assert twice.returncode == 2
        assert "it holds the same state as" in twice.stderr
    merged["sources"] = []
    (tmp_path / "no-sources.json").write_text(json.dumps(merged))
    bad = cli("merge", "no-sources.json", "shard-0.json", cwd=tmp_path)
    assert bad.returncode == 2
    assert '"sources" must be a non-empty list of strings' in bad.stderr


async def more_shard(path: Path) -> None:
    async with BatchMetrics("shard-3") as m:
        for i in range(5):
            await m.record_file(f"late-{i}.wfm", duration=0.01)
    await m.export_json(path)


def test_cli_merge_refuses_files_without_a_state(tmp_path: Path) -> None:
    (tmp_path / "summary.json").write_text(json.dumps({"batch_id": "x", "total_files": 1}))
    (tmp_path / "broken.json").write_text("{not json")
    for name, message in (("summary.json", 'has no "state"'), ("broken.json", "is not JSON"),
                          ("missing.json", "cannot read")):
        result = cli("merge", tmp_path / name, "-o", tmp_path / "out.json")
        assert result.returncode == 2
        assert message in result.stderr
        assert "Traceback" not in result.stderr
        assert not (tmp_path / "out.json").exists()


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A real export_json file's content (with errors, skips and slow files), as a dict."""
    path = tmp_path_factory.mktemp("export") / "shard.json"

    async def run() -> None:
        async with BatchMetrics("shard") as m:
            await record(m, range(60))
        await m.export_json(path)

    anyio.run(run)
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _set(key: str, value: object) -> Callable[[dict[str, Any]], None]:
    def damage(state: dict[str, Any]) -> None:
        state[key] = value
    return damage


def _set_in(key: str, inner: str, value: object) -> Callable[[dict[str, Any]], None]:
    def damage(state: dict[str, Any]) -> None:
        state[key][inner] = value
    return damage


def _drop(key: str) -> Callable[[dict[str, Any]], None]:
    def damage(state: dict[str, Any]) -> None:
        del state[key]
    return damage


# case: (the field the message starts with, how it shows the value, the damage)
DAMAGED_STATES: dict[str, tuple[str, str, Callable[[dict[str, Any]], None]]] = {
    "by_type is a list": ("by_type", "[]", _set("by_type", [])),
    "by_type count negative": ("by_type['OSError']", "-3", _set_in("by_type", "OSError", -3)),
    "error_messages is a list": ("error_messages", "[]", _set("error_messages", [])),
    "error messages are a string": ("error_messages['OSError']", "'read failed'",
                                    _set_in("error_messages", "OSError", "read failed")),
    "slowest_k is infinite": ("slowest_k", "inf", _set("slowest_k", math.inf)),
    "slowest_k is negative": ("slowest_k", "-1", _set("slowest_k", -1)),
    "slowest_k is a bool": ("slowest_k", "True", _set("slowest_k", True)),
    "slowest_k is a string": ("slowest_k", "'10'", _set("slowest_k", "10")),
    "total_files is a float": ("total_files", "1.5", _set("total_files", 1.5)),
    "busy_seconds is a string": ("busy_seconds", "'1.5'", _set("busy_seconds", "1.5")),
    "busy_seconds is infinite": ("busy_seconds", "inf", _set("busy_seconds", math.inf)),
    "timing is a list": ("timing", "[]", _set("timing", [])),
    "timing count is negative": ("timing", "-1", _set_in("timing", "count", -1)),
    "timing mean is a string": ("timing", "mean must be a finite number, got 'Infinity'",
                                _set_in("timing", "mean", "Infinity")),
    "timing m2 is negative": ("timing", "m2 must be >= 0, got -1.0",
                              _set_in("timing", "m2", -1.0)),
    "sketch max is infinite": ("sketch", "max must be a finite number >= 0, got inf",
                               _set_in("sketch", "max", math.inf)),
    "sketch is null": ("sketch", "None", _set("sketch", None)),
    "sketch has a bad precision": ("sketch", "99", _set_in("sketch", "mantissa_bits", 99)),
    "sketch zero_count is infinite": ("sketch", "zero_count must be an int >= 0, got inf",
                                      _set_in("sketch", "zero_count", math.inf)),
    "slowest is an object": ("slowest", "{}", _set("slowest", {})),
    "slowest has a bad status": ("slowest[0]", "[0.5, 'f1', 'bogus']",
                                 _set("slowest", [[0.5, "f1", "bogus"]])),
    "slowest has a negative time": ("slowest[0][0]", "-0.5",
                                    _set("slowest", [[-0.5, "f1", "success"]])),
    "start_ts is a string": ("start_ts", "'yesterday'", _set("start_ts", "yesterday")),
    # stamps a summary cannot write as a date
    "start_ts is past year 9999": ("start_ts", "got 1e+300", _set("start_ts", 1e300)),
    "end_ts is before year 1": ("end_ts", "got -1e+20", _set("end_ts", -1e20)),
    "end_ts is missing": ("end_ts", "missing", _drop("end_ts")),
}


@pytest.mark.parametrize("case", list(DAMAGED_STATES))
def test_cli_merge_of_a_damaged_state_is_one_line_naming_the_field(
        case: str, export: dict[str, Any], tmp_path: Path) -> None:
    field, shown, damage = DAMAGED_STATES[case]
    data = json.loads(json.dumps(export))
    damage(data["state"])
    damaged = tmp_path / "damaged.json"
    damaged.write_text(json.dumps(data))  # inf is written as Infinity, as Python reads it
    (tmp_path / "good.json").write_text(json.dumps(export))
    out = tmp_path / "out.json"
    result = cli("merge", tmp_path / "good.json", damaged, "-o", out)
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"batchmetrics: cannot merge {damaged}: bad aggregate state: {field}")
    assert shown in line.split(field, 1)[1]
    assert not out.exists()


def cli_with_umask(umask: int, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """The console script run by ``sh`` after ``umask``."""
    return subprocess.run(["sh", "-c", f'umask {umask:03o} && exec "$0" "$@"', str(SCRIPT),
                           *map(str, args)], capture_output=True, text=True, timeout=60,
                          check=False)


@pytest.mark.skipif(os.name != "posix", reason="file modes and umask are POSIX")
@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_cli_merge_output_mode_follows_the_umask(
        umask: int, export: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "in.json").write_text(json.dumps(export))
    out = tmp_path / "out.json"
    result = cli_with_umask(umask, "merge", tmp_path / "in.json", "-o", out)
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask
    assert json.loads(out.read_text())["summary"]["total_files"] == 60


@pytest.mark.skipif(os.name != "posix", reason="file modes and umask are POSIX")
@pytest.mark.parametrize(("mode", "umask"), [(0o644, 0o077), (0o640, 0o022), (0o600, 0o022)])
def test_cli_merge_keeps_the_mode_of_the_file_it_replaces(
        mode: int, umask: int, export: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "in.json").write_text(json.dumps(export))
    out = tmp_path / "out.json"
    out.write_text("old report\n")
    out.chmod(mode)
    result = cli_with_umask(umask, "merge", tmp_path / "in.json", "-o", out)
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(out.stat().st_mode) == mode
    assert json.loads(out.read_text())["summary"]["total_files"] == 60
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.json", "out.json"]  # no temp left


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_cli_merge_refuses_to_replace_a_fifo(export: dict[str, Any], tmp_path: Path) -> None:
    # -o on a FIFO (or /dev/stdout, a link to one) replaced it with a regular file
    (tmp_path / "in.json").write_text(json.dumps(export))
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    result = cli_with_umask(0o022, "merge", tmp_path / "in.json", "-o", fifo)
    assert result.returncode == 2
    assert result.stderr == (f"batchmetrics: cannot write {fifo}: it is not a regular file (a "
                             "device, a FIFO or a socket), which writing a new file in its "
                             "place would replace; -o - writes to standard output\n")
    assert fifo.is_fifo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.json", "out.fifo"]


def test_cli_merge_of_states_whose_sum_leaves_the_float_range_is_one_line(
        tmp_path: Path, export: dict[str, Any]) -> None:
    big = json.loads(json.dumps(export))
    big["state"]["busy_seconds"] = 1e308
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(big))
    big["state"]["busy_seconds"] = 0.9e308  # another part, not a copy
    b.write_text(json.dumps(big))
    done = cli("merge", a, b, "-o", tmp_path / "out.json")
    assert done.returncode == 2
    assert done.stderr == (f"batchmetrics: cannot merge {b}: merged state: busy_seconds must be "
                           "a finite number, got inf (past the float range)\n")
    assert not (tmp_path / "out.json").exists()


def test_cli_merge_of_states_it_cannot_combine_is_one_line(
        tmp_path: Path, export: dict[str, Any]) -> None:
    # each state reads well alone; their sketches cannot be merged
    other = json.loads(json.dumps(export))
    other["state"]["sketch"]["mantissa_bits"] = 5
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(export))
    b.write_text(json.dumps(other))
    done = cli("merge", a, b)
    assert done.returncode == 2
    assert done.stderr == (f"batchmetrics: cannot merge {b}: cannot merge sketches of "
                           "different precision: mantissa_bits 6 and 5\n")


def test_cli_merge_refuses_a_file_given_twice_or_a_copy(
        export: dict[str, Any], tmp_path: Path) -> None:
    # an overlapping glob (part-1.json twice) doubled every count without a word
    (tmp_path / "part-1.json").write_text(json.dumps(export))
    (tmp_path / "part-2.json").write_text(json.dumps(export))
    for twice in (["part-1.json", "part-1.json"], ["part-1.json", "./part-1.json"]):
        result = cli("merge", *twice, "-o", "total.json", cwd=tmp_path)
        assert result.returncode == 2
        assert "given twice" in result.stderr
        assert not (tmp_path / "total.json").exists()
    # a copy holds the same state: the same run, not another part of the batch
    result = cli("merge", "part-1.json", "part-2.json", "-o", "total.json", cwd=tmp_path)
    assert result.returncode == 2
    assert "part-2.json: it holds the same state as part-1.json (given twice, or a copy?)" \
        in result.stderr
    assert not (tmp_path / "total.json").exists()
