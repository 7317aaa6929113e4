"""Every bad argument raises at the call, naming the field and the value, and records nothing."""

from __future__ import annotations

import functools
import json
import math
import os
import statistics
from pathlib import Path, PurePosixPath
from typing import Any

import anyio
import anyio.to_thread
import numpy as np
import pytest

from batchmetrics import BatchMetrics, CsvSink, History, JsonlSink


class _Case:
    def __init__(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any],
                 error: type[Exception], field: str, shown: str) -> None:
        self.method, self.args, self.kwargs = method, args, kwargs
        self.error, self.field, self.shown = error, field, shown


def _file(error: type[Exception], field: str, value: Any, shown: str | None = None,
          **kwargs: Any) -> Any:
    """A ``record_file`` call with ``field=value`` (other fields valid)."""
    call = {"duration": 0.5, **kwargs, field: value}
    return pytest.param(_Case("record_file", ("a.wfm",), call, error, field,
                              repr(value) if shown is None else shown),
                        id=f"record_file-{field}={value!r}")


BAD_CALLS = [
    # duration
    _file(ValueError, "duration", -0.001),
    _file(ValueError, "duration", -1),
    _file(ValueError, "duration", math.nan),
    _file(ValueError, "duration", math.inf),
    _file(ValueError, "duration", -math.inf),
    _file(TypeError, "duration", "0.5"),
    _file(TypeError, "duration", True),
    _file(TypeError, "duration", False),
    _file(TypeError, "duration", None),
    _file(TypeError, "duration", b"1"),
    _file(TypeError, "duration", np.True_),  # numpy's bool turns into 1.0 quietly
    _file(ValueError, "duration", 10**400, "1000000"),  # past the float range
    _file(ValueError, "duration", 1.5e10),  # past MAX_SECONDS (317 years)
    *[
        _file(ValueError, field, value, shown)
        for field in ("samples", "measurements", "bytes_processed", "memory_peak")
        for value, shown in ((2**128, str(2**128)), (10**309, "1027 bits"))
    ],
    # counts
    *[
        _file(error, field, value)
        for field in ("samples", "measurements", "bytes_processed", "memory_peak")
        for error, value in ((ValueError, -1), (TypeError, 1.5), (TypeError, 2.0),
                             (TypeError, True), (TypeError, "3"))
    ],
    _file(TypeError, "samples", None),
    # status
    _file(ValueError, "status", "done"),
    _file(ValueError, "status", ""),
    _file(ValueError, "status", "Success"),
    _file(ValueError, "status", "pending"),  # the reference's default, not a recordable status
    _file(TypeError, "status", 1),
    _file(TypeError, "status", None),
    # error fields
    _file(TypeError, "error_type", 3, status="error"),
    _file(TypeError, "error_message", 5, status="error", error_type="OSError"),
    # filename
    pytest.param(_Case("record_file", ("",), {"duration": 0.5}, ValueError, "filename", "''"),
                 id="record_file-filename=''"),
    *[
        pytest.param(_Case("record_file", (name,), {"duration": 0.5}, TypeError, "filename",
                           repr(name)), id=f"record_file-filename={name!r}")
        for name in (123, None, b"x", 1.5)
    ],
    # record_error
    pytest.param(_Case("record_error", ("a.wfm", 5, "boom"), {}, TypeError, "error_type", "5"),
                 id="record_error-error_type=5"),
    pytest.param(_Case("record_error", ("a.wfm", None, "boom"), {}, TypeError, "error_type",
                       "None"), id="record_error-error_type=None"),
    pytest.param(_Case("record_error", ("a.wfm", "OSError", 5), {}, TypeError, "error_message",
                       "5"), id="record_error-error_message=5"),
    pytest.param(_Case("record_error", ("a.wfm", "OSError", "boom", -1.0), {}, ValueError,
                       "duration", "-1.0"), id="record_error-duration=-1.0"),
    pytest.param(_Case("record_error", ("a.wfm", "OSError", "boom", math.nan), {}, ValueError,
                       "duration", "nan"), id="record_error-duration=nan"),
    pytest.param(_Case("record_error", ("a.wfm", "OSError", "boom", "1"), {}, TypeError,
                       "duration", "'1'"), id="record_error-duration='1'"),
    pytest.param(_Case("record_error", ("", "OSError", "boom"), {}, ValueError, "filename",
                       "''"), id="record_error-filename=''"),
    pytest.param(_Case("record_error", (7, "OSError", "boom"), {}, TypeError, "filename",
                       "7"), id="record_error-filename=7"),
    # record_skip
    pytest.param(_Case("record_skip", ("a.wfm",), {"reason": 5}, TypeError, "reason", "5"),
                 id="record_skip-reason=5"),
    pytest.param(_Case("record_skip", ("a.wfm",), {"reason": None}, TypeError, "reason",
                       "None"), id="record_skip-reason=None"),
    pytest.param(_Case("record_skip", (b"a.wfm",), {}, TypeError, "filename", "b'a.wfm'"),
                 id="record_skip-filename=b'a.wfm'"),
]


@pytest.mark.asyncio
@pytest.mark.parametrize("case", BAD_CALLS)
async def test_bad_argument_raises_naming_field_and_value_and_records_nothing(
    case: _Case,
) -> None:
    async with BatchMetrics(batch_id="validation") as m:
        await m.record_file("good.wfm", duration=0.25, samples=1)
        before = await m.snapshot()
        with pytest.raises(case.error) as info:
            await getattr(m, case.method)(*case.args, **case.kwargs)
        message = str(info.value)
        assert case.field in message
        assert case.shown in message
        after = await m.snapshot()
        assert after.total_files == before.total_files == 1
        assert [row["filename"] for row in m.get_file_metrics()] == ["good.wfm"]
        # the batch still works after refusing a call
        await m.record_file("good2.wfm", duration=0.25)
    assert m.summary().total_files == 2


@pytest.mark.asyncio
@pytest.mark.parametrize("name", [123, None, b"x", ""])
async def test_track_refuses_a_bad_filename_at_the_call(name: Any) -> None:
    async with BatchMetrics() as m:
        with pytest.raises((TypeError, ValueError), match="filename"):
            m.track(name)
        assert (await m.snapshot()).total_files == 0


@pytest.mark.asyncio
async def test_pathlike_filenames_are_accepted_and_stored_as_str() -> None:
    async with BatchMetrics() as m:
        await m.record_file(Path("data") / "a.wfm", duration=0.5)
        await m.record_error(PurePosixPath("data/b.wfm"), "OSError", "disk")
        await m.record_skip(Path("data/c.wfm"), reason="dup")
        async with m.track(Path("data/d.wfm")):
            pass
    names = [row["filename"] for row in m.get_file_metrics()]
    assert names == [str(Path("data/a.wfm")), "data/b.wfm", str(Path("data/c.wfm")),
                     str(Path("data/d.wfm"))]
    assert all(type(name) is str for name in names)


@pytest.mark.asyncio
async def test_integer_durations_and_zero_counts_are_accepted() -> None:
    async with BatchMetrics() as m:
        await m.record_file("a.wfm", duration=2, samples=0, measurements=0, bytes_processed=0,
                            memory_peak=0)
    row = m.get_file_metrics()[0]
    assert row["duration_seconds"] == 2.0
    assert row["memory_peak_bytes"] == 0


@pytest.mark.asyncio
async def test_a_negative_zero_duration_is_written_as_zero(tmp_path: Path) -> None:
    # -0.0 passes ">= 0"; kept as it was, the log, the exports and the minimum said "-0.0"
    log = tmp_path / "files.jsonl"
    async with BatchMetrics(keep_files=True, sinks=[JsonlSink(log)]) as m:
        await m.record_file("a.wfm", duration=-0.0)
        await m.record_error("b.wfm", "OSError", "gone", duration=-0.0)
        await anyio.to_thread.run_sync(
            functools.partial(m.record_file_threadsafe, "c.wfm", duration=-0.0))
    await m.export_json(tmp_path / "m.json")
    await m.export_csv(tmp_path / "m.csv")
    for path in (log, tmp_path / "m.json", tmp_path / "m.csv"):
        assert "-0.0" not in path.read_text(encoding="utf-8"), path.name
    assert math.copysign(1.0, m.summary().timing.min_per_file) == 1.0


@pytest.mark.asyncio
async def test_counts_beyond_int64_are_recorded_without_breaking_the_batch() -> None:
    # used to crash the consumer: the per-file table kept counts in int64 arrays
    big = 2**63
    async with BatchMetrics() as m:
        await m.record_file("a.wfm", duration=1.0, samples=1)
        await m.record_file("huge.wfm", duration=1.0, samples=big, measurements=big + 1,
                            bytes_processed=2**80)
        await m.record_file("c.wfm", duration=1.0, samples=2)
        snap = await m.snapshot()
    assert snap.total_files == 3
    assert m.summary().total_samples == big + 3
    rows = m.get_file_metrics()
    assert [r["samples"] for r in rows] == [1, big, 2]
    assert rows[1]["bytes_processed"] == 2**80
    assert rows[1]["measurements"] == big + 1


@pytest.mark.asyncio
async def test_the_largest_accepted_values_still_give_a_summary_in_strict_json() -> None:
    # Counts past the float range used to crash the exit (rates), and durations of
    # 1e200 s gave an infinite standard deviation, written as Infinity, which is not JSON,
    # and a start time before the year 1, which no row could show.
    big = 2**128 - 1
    async with BatchMetrics() as m:
        await m.record_file("a.wfm", duration=1e10, samples=big, measurements=big,
                            bytes_processed=big, memory_peak=big)
        await m.record_file("b.wfm", duration=0.5e10, samples=big, bytes_processed=big)
        await m.record_error("c.wfm", "OSError", "boom", duration=1e10)
    summary = m.summary()
    assert summary.total_samples == 2 * big
    assert summary.timing.stddev_per_file == pytest.approx(statistics.stdev([1e10, 0.5e10]))
    json.dumps(summary.to_dict(), allow_nan=False)  # no inf, no nan anywhere
    json.dumps(m.get_file_metrics(), allow_nan=False)


def _error_fields(row: dict[str, Any]) -> tuple[Any, Any, Any]:
    return row["filename"], row.get("error_type"), row.get("error_message")


@pytest.mark.asyncio
async def test_str_subclasses_are_recorded_as_plain_str_through_sinks_store_and_export(
    tmp_path: Path,
) -> None:
    # numpy.str_ (names from an array or a DataFrame column) used to kill the consumer:
    # msgspec cannot encode a str subclass, so the sink, the store and export_json failed
    names = np.array(["a.wfm", "b.wfm", "c.wfm", "d.wfm", "e.wfm", "f.wfm"])
    etype, emsg = np.str_("OSError"), np.str_("disk full")
    log = tmp_path / "files.jsonl"
    async with BatchMetrics(sinks=[JsonlSink(log)], store=tmp_path / "history.db",
                            store_files=True) as m:
        await m.record_file(names[0], duration=0.5, samples=3)
        await m.record_file(names[1], duration=0.5, status="error", error_type=etype,
                            error_message=emsg)
        await m.record_error(names[2], "OSError", "disk full")
        await m.record_skip(names[3], reason="dup")
        async with m.track(names[4]):
            pass
        await anyio.to_thread.run_sync(functools.partial(
            m.record_error_threadsafe, names[5], etype, emsg))
        await m.snapshot()
        await m.record_file("plain.wfm", duration=0.5)  # the consumer is still alive
    assert m.summary().total_files == 7
    expected = [("a.wfm", None, None), ("b.wfm", "OSError", "disk full"),
                ("c.wfm", "OSError", "disk full"), ("d.wfm", None, "dup"),
                ("e.wfm", None, None), ("f.wfm", "OSError", "disk full"),
                ("plain.wfm", None, None)]
    rows = m.get_file_metrics()
    assert [_error_fields(r) for r in rows] == expected
    assert all(type(v) is str for r in rows for v in _error_fields(r) if v is not None)
    lines = log.read_text(encoding="utf-8").splitlines()
    assert [_error_fields(json.loads(line)) for line in lines] == expected
    path = tmp_path / "metrics.json"
    await m.export_json(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["files"] == rows
    assert data["summary"]["errors"]["by_type"] == {"OSError": 3}


@pytest.mark.asyncio
async def test_str_subclass_error_strings_of_record_error_and_record_skip_are_recorded(
    tmp_path: Path,
) -> None:
    log = tmp_path / "files.jsonl"
    async with BatchMetrics(sinks=[JsonlSink(log)]) as m:
        await m.record_error("a.wfm", np.str_("OSError"), np.str_("disk full"))
        await m.record_skip("b.wfm", reason=np.str_("dup"))
    expected = [("a.wfm", "OSError", "disk full"), ("b.wfm", None, "dup")]
    assert [_error_fields(r) for r in m.get_file_metrics()] == expected
    lines = log.read_text(encoding="utf-8").splitlines()
    assert [_error_fields(json.loads(line)) for line in lines] == expected


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: JsonlSink(""), ValueError, "path must not be empty"),
        (lambda: JsonlSink(b"x.jsonl"), TypeError, "path must be a str"),  # type: ignore[arg-type]
        (lambda: JsonlSink("x.jsonl", append="no"), TypeError, "append must be a bool"),  # type: ignore[arg-type]
        (lambda: JsonlSink("x.jsonl", full=1), TypeError, "full must be a bool"),  # type: ignore[arg-type]
        (lambda: CsvSink(""), ValueError, "path must not be empty"),
    ],
)
def test_sink_arguments_are_checked_when_the_sink_is_made(
        make: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        make()


@pytest.mark.asyncio
@pytest.mark.parametrize("path", ["", b"metrics.json"])
async def test_export_paths_are_checked_before_anything_is_written(path: Any) -> None:
    async with BatchMetrics() as m:
        await m.record_file("a.wfm", duration=0.5)
    for export in (m.export_json, m.export_csv):
        with pytest.raises((TypeError, ValueError), match="path must"):
            await export(path)


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: BatchMetrics(5), TypeError, "batch_id must be a str or None, got int 5"),  # type: ignore[arg-type]
        (lambda: BatchMetrics(""), ValueError, "batch_id must not be empty"),
        (lambda: JsonlSink("x.jsonl", buffer_bytes="10"), TypeError,  # type: ignore[arg-type]
         "buffer_bytes must be an int, got str '10'"),
        (lambda: CsvSink("x.csv", buffer_bytes=-1), ValueError, "buffer_bytes must be >= 0"),
        (lambda: JsonlSink("a\0b.jsonl"), ValueError, "path must not contain a NUL"),
        (lambda: BatchMetrics(summary_path="s\0.json"), ValueError,
         "summary_path must not contain a NUL"),
        (lambda: BatchMetrics(store="h\0.db"), ValueError, "store must not contain a NUL"),
    ],
)
def test_wrong_types_are_type_errors_and_bad_values_value_errors(
        make: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        make()


@pytest.mark.asyncio
async def test_an_export_path_with_a_nul_is_refused_naming_the_path(tmp_path: Path) -> None:
    async with BatchMetrics() as m:
        await m.record_file("a.wfm", duration=0.5)
    for export in (m.export_json, m.export_csv):
        with pytest.raises(ValueError, match=r"path must not contain a NUL.*a\\x00b"):
            await export(str(tmp_path / "a\0b"))
    assert sorted(tmp_path.iterdir()) == []


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["numpy", "int"])
async def test_a_clock_of_numpy_floats_or_ints_gives_plain_float_stamps(
        tmp_path: Path, kind: str) -> None:
    # numpy stamps broke the JSONL sink's encoder and the history's checkpoints
    t = [1_700_000_000]
    clock = (lambda: np.float64(t[0])) if kind == "numpy" else (lambda: t[0])
    log, db = tmp_path / "files.jsonl", tmp_path / "h.db"
    async with BatchMetrics("np-clock", clock=clock, sinks=[JsonlSink(log)], store=db,
                            store_files=True, keep_files=True) as m:
        for i in range(3):
            t[0] += 2
            await m.record_file(f"f{i}.wfm", duration=1.0)
    assert [json.loads(line)["end_ts"] for line in log.read_text().splitlines()] == [
        1_700_000_002.0, 1_700_000_004.0, 1_700_000_006.0]
    assert m.summary().timing.total_duration == 6.0
    with History(db) as history:
        run = history.get("np-clock")
        assert run is not None
        assert run.summary["total_files"] == 3


@pytest.mark.asyncio
async def test_numpy_counts_in_the_constructor_give_plain_json(tmp_path: Path) -> None:
    # numpy ints pass the count check; kept as they were, they broke every JSON output
    m = BatchMetrics("np", total_files=np.int64(5), slowest=np.int64(3),  # type: ignore[arg-type]
                     buffer_size=np.int32(64), store=tmp_path / "h.db")  # type: ignore[arg-type]
    async with m:
        await m.record_file("a.wfm", duration=0.5)
    await m.export_json(tmp_path / "m.json")
    exported = json.loads((tmp_path / "m.json").read_text(encoding="utf-8"))
    assert exported["summary"]["progress"]["remaining"] == 4
    assert json.loads(json.dumps(m.summary().to_dict())) == exported["summary"]


@pytest.mark.asyncio
@pytest.mark.parametrize(("reading", "error", "message"), [
    (math.nan, ValueError, "clock must return seconds since the epoch.*nan"),
    (1e300, ValueError, "clock must return seconds since the epoch.*1e\\+300"),
    ("now", TypeError, "clock must return a number.*str 'now'"),
])
async def test_a_clock_that_gives_no_time_fails_the_start_naming_the_clock(
        reading: Any, error: type[Exception], message: str) -> None:
    m = BatchMetrics("clock", clock=lambda: reading)
    with pytest.raises(error, match=message):
        async with m:
            pass
    assert m.summary().state == "failed"


@pytest.mark.asyncio
async def test_a_bad_counter_on_a_track_handle_raises_where_it_is_set() -> None:
    # Checked only as the block ended, it replaced the outcome: the file that ran was
    # recorded neither as a success nor as an error.
    async with BatchMetrics("counters") as m, m.track("a.wfm") as item:
        with pytest.raises(ValueError, match="samples must be >= 0, got -1"):
            item.samples = -1
        with pytest.raises(TypeError, match="bytes_processed must be an int, got float"):
            item.bytes_processed = 1.5  # type: ignore[assignment]
        item.measurements = np.int64(3)  # type: ignore[assignment]
        item.memory_peak = None
        item.samples = 10
    row = m.get_file_metrics()[0]
    assert (row["status"], row["samples"], row["measurements"]) == ("success", 10, 3)
    assert type(row["measurements"]) is int


@pytest.mark.asyncio
async def test_timed_takes_only_a_result_that_can_be_a_sample_count() -> None:
    async with BatchMetrics("timed-big") as m:
        @m.timed
        async def decode(path: str) -> int:
            return 2**130  # a result, not a sample count

        assert await decode("a.wfm") == 2**130
    row = m.get_file_metrics()[0]
    assert (row["status"], row["samples"]) == ("success", 0)


def test_a_sink_listed_twice_is_refused(tmp_path: Path) -> None:
    # it got every row twice
    sink = JsonlSink(tmp_path / "f.jsonl")
    with pytest.raises(ValueError, match="sinks must be distinct"):
        BatchMetrics(sinks=[sink, sink])


@pytest.mark.parametrize("other", ["sink", "summary_path", "store"])
def test_two_outputs_on_one_path_are_refused_naming_both(tmp_path: Path,
                                                         other: str) -> None:
    # they overwrote each other: a sink truncated the history, two logs interleaved
    path = tmp_path / "out.jsonl"
    cases: dict[str, dict[str, Any]] = {
        "sink": {"sinks": [CsvSink(path), JsonlSink(tmp_path / "." / "out.jsonl")]},
        "summary_path": {"sinks": [CsvSink(path)], "summary_path": path},
        "store": {"sinks": [CsvSink(path)], "store": path},
    }
    named = {"sink": r"sinks\[0\] \(CsvSink\) and sinks\[1\] \(JsonlSink\)",
             "summary_path": r"summary_path and sinks\[0\] \(CsvSink\)",
             "store": r"sinks\[0\] \(CsvSink\) and the history \(store\)"}[other]
    with pytest.raises(ValueError, match=named + r" would write one file \('[^']*/out\.jsonl'\)"):
        BatchMetrics(**cases[other])



@pytest.mark.asyncio
@pytest.mark.parametrize("log_exists", [False, True])
async def test_outputs_that_share_no_file_are_allowed(tmp_path: Path, log_exists: bool,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # refused by the checks that two outputs write one file
    log = tmp_path / "log.jsonl"
    if log_exists:
        log.write_text("", encoding="utf-8")
    latest = tmp_path / "latest.json"
    latest.symlink_to(log)  # the summary replaces the link; it never writes the log
    (tmp_path / "data" / "run1").mkdir(parents=True)
    (tmp_path / "current").symlink_to(tmp_path / "data" / "run1")
    monkeypatch.chdir(tmp_path)
    up = JsonlSink(os.path.join("current", "..", "up.jsonl"))  # .. from where the link leads
    sinks = [JsonlSink(log, append=True), JsonlSink(os.devnull), CsvSink(os.devnull), up]
    async with BatchMetrics(sinks=sinks, summary_path=latest) as m:
        await m.record_file("a.wfm", duration=0.1)
    assert len(log.read_text(encoding="utf-8").splitlines()) == 1
    assert json.loads(latest.read_text(encoding="utf-8"))["total_files"] == 1
    assert (tmp_path / "data" / "up.jsonl").exists()  # where open() puts it
    assert not (tmp_path / "up.jsonl").exists()


@pytest.mark.asyncio
@pytest.mark.parametrize("link", ["symlink", "hard link"])
async def test_two_sinks_on_one_file_through_a_link_fail_the_start(
        tmp_path: Path, link: str) -> None:
    log = tmp_path / "run.jsonl"
    log.write_text('{"kept": true}\n', encoding="utf-8")
    alias = tmp_path / "alias.jsonl"
    if link == "symlink":
        alias.symlink_to(log)
    else:
        os.link(log, alias)
    m = BatchMetrics(sinks=[JsonlSink(log), CsvSink(alias)])
    with pytest.raises(ValueError, match="would write one file"):
        async with m:
            raise AssertionError("the body must not run")  # pragma: no cover
    assert log.read_text(encoding="utf-8") == '{"kept": true}\n'


@pytest.mark.asyncio
async def test_relative_output_paths_are_those_of_the_working_directory_when_made(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # they were resolved when first written, against whatever directory was current
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    m = BatchMetrics(sinks=[JsonlSink("files.jsonl")], summary_path="summary.json",
                     store="history.db")
    monkeypatch.chdir(tmp_path / "b")
    async with m:
        await m.record_file("x.wfm", duration=0.1)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "files.jsonl", "history.db", "summary.json"]
    assert list((tmp_path / "b").iterdir()) == []


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["missing folder", "a folder", "closed", "dangling link"])
async def test_a_sink_that_cannot_write_fails_the_start_naming_its_file(
        tmp_path: Path, kind: str) -> None:
    # it failed in the consumer, after the first record, and the message had no path
    kept = tmp_path / "earlier.csv"
    kept.write_text("precious,data\n1,2\n", encoding="utf-8")
    if kind == "missing folder":
        bad, shown = JsonlSink(tmp_path / "no" / "f.jsonl"), r"its folder .*/no' does not exist"
    elif kind == "a folder":
        bad, shown = JsonlSink(tmp_path), "it is a folder"
    elif kind == "dangling link":  # a sink writes through the link: its target counts
        (tmp_path / "link.jsonl").symlink_to(tmp_path / "gone" / "f.jsonl")
        bad, shown = JsonlSink(tmp_path / "link.jsonl"), r"its folder .*/gone' does not exist"
    else:
        bad, shown = JsonlSink(tmp_path / "used.jsonl"), "is closed: a sink serves one batch"
        async with BatchMetrics(sinks=[bad]):
            pass
    m = BatchMetrics("bad-sink", sinks=[CsvSink(kept), bad])
    with pytest.raises((ValueError, RuntimeError), match=shown):
        async with m:
            raise AssertionError("the body must not run")  # pragma: no cover
    assert m.summary().state == "failed"
    # the start checks, it creates and truncates nothing
    assert kept.read_text(encoding="utf-8") == "precious,data\n1,2\n"


@pytest.mark.asyncio
async def test_a_start_refused_by_the_history_leaves_the_sinks_files_alone(
        tmp_path: Path) -> None:
    log, db = tmp_path / "run.csv", tmp_path / "h.db"
    async with BatchMetrics("nightly", sinks=[CsvSink(log)], store=db) as m:
        await m.record_file("a.wfm", duration=0.1)
    before = log.read_bytes()
    with pytest.raises(ValueError, match="already in the history"):
        async with BatchMetrics("nightly", sinks=[CsvSink(log)], store=db):
            raise AssertionError("the body must not run")  # pragma: no cover
    assert log.read_bytes() == before


@pytest.mark.asyncio
@pytest.mark.parametrize(("where", "message"), [
    ("no/s.json", r"cannot write summary_path .* its folder .* does not exist"),
    (".", r"cannot write summary_path .* it is a folder"),
    # replaced by a regular file at the first write (as root, /dev/null was)
    ("pipe", r"cannot write summary_path .* it is not a regular file"),
    # a link to one too: the link was replaced, not the FIFO, but a reader of the link
    # waits on the FIFO
    ("link-to-pipe", r"cannot write summary_path .* it is not a regular file"),
])
async def test_a_summary_file_that_cannot_be_written_fails_the_start(
        tmp_path: Path, where: str, message: str) -> None:
    if where == "pipe":
        os.mkfifo(tmp_path / where)
    elif where == "link-to-pipe":
        os.mkfifo(tmp_path / "pipe")
        (tmp_path / where).symlink_to(tmp_path / "pipe")
    m = BatchMetrics("no-folder", summary_path=tmp_path / where)
    with pytest.raises(ValueError, match=message):
        async with m:
            raise AssertionError("the body must not run")  # pragma: no cover


@pytest.mark.asyncio
async def test_a_path_going_up_through_a_link_is_another_file(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "data" / "run1").mkdir(parents=True)
    (tmp_path / "current").symlink_to(tmp_path / "data" / "run1")
    monkeypatch.chdir(tmp_path)
    sinks = [JsonlSink(os.path.join("current", "..", "up.jsonl")), JsonlSink("up.jsonl")]
    async with BatchMetrics(sinks=sinks) as m:
        await m.record_file("a.wfm", duration=0.1)
    assert len((tmp_path / "data" / "up.jsonl").read_text().splitlines()) == 1
    assert len((tmp_path / "up.jsonl").read_text().splitlines()) == 1


@pytest.mark.parametrize("sep", ["/./", "//"])
def test_a_dot_or_double_slash_alias_of_a_path_is_refused_when_made(tmp_path: Path,
                                                                   sep: str) -> None:
    with pytest.raises(ValueError, match="would write one file"):
        BatchMetrics(sinks=[CsvSink(tmp_path / "out.jsonl"),
                            JsonlSink(str(tmp_path) + sep + "out.jsonl")])


@pytest.mark.asyncio
async def test_two_sinks_through_a_link_to_a_file_not_made_yet_fail_the_start(
        tmp_path: Path) -> None:
    log = tmp_path / "run.jsonl"
    alias = tmp_path / "alias.jsonl"
    alias.symlink_to(log)
    m = BatchMetrics(sinks=[JsonlSink(log), CsvSink(alias)])
    with pytest.raises(ValueError, match="would write one file"):
        async with m:
            raise AssertionError("the body must not run")
    assert not log.exists()


def test_a_third_output_on_the_second_ones_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="would write one file"):
        BatchMetrics(summary_path=tmp_path / "s.json",
                     sinks=[JsonlSink(tmp_path / "a.log"), CsvSink(tmp_path / "a.log")])


@pytest.mark.asyncio
async def test_a_sink_linked_to_the_history_fails_the_start_and_spares_it(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    async with BatchMetrics("first", store=db) as m:
        await m.record_file("a.wfm", duration=0.1)
    alias = tmp_path / "alias.jsonl"
    alias.symlink_to(db)
    m2 = BatchMetrics("second", store=db, sinks=[JsonlSink(alias)])
    with pytest.raises(ValueError, match="would write one file"):
        async with m2:
            await m2.record_file("b.wfm", duration=0.1)
    with History(db) as h:
        assert h.get("first") is not None
