"""Pure renderers: timestamps as ``datetime.isoformat``, hand-built JSON rows as ``json``."""

from __future__ import annotations

import csv
import io
import json
import math
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from batchmetrics._events import STATUS_NAMES, Event
from batchmetrics._render import (
    FILE_COLUMNS,
    LOG_COLUMNS,
    csv_header,
    csv_rows,
    file_row_dict,
    file_row_json,
    iso_timestamp,
    iso_timestamps,
    jsonl_lines,
    log_lines,
    log_row_dict,
)

# 1970 .. 2100, as Unix timestamps from time.time()
timestamps = st.floats(min_value=0.0, max_value=4_102_444_800.0)


def _reference_iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat()


@given(timestamps)
@example(0.0)
@example(1_700_000_000.0)  # an exact second: no fraction
@example(1_700_000_000.9999996)  # rounds up to the next second
@example(1_700_000_059.9999999)  # ... and the next minute
@example(1_703_980_799.9999997)  # ... and the next year (2023-12-31T23:59:59.9999997)
@example(1_700_000_000.0000005)  # half a microsecond: round half to even
@example(1_700_000_000.0000015)
@example(1_700_000_000.123456)
@example(1e-7)
def test_iso_timestamp_equals_datetime_isoformat(ts: float) -> None:
    assert iso_timestamp(ts) == _reference_iso(ts)


@given(st.integers(min_value=0, max_value=4_102_444_800), st.integers(0, 999_999))
def test_iso_timestamp_equals_datetime_isoformat_at_every_microsecond(
    second: int, micro: int
) -> None:
    ts = second + micro / 1e6
    assert iso_timestamp(ts) == _reference_iso(ts)


@pytest.mark.parametrize("ts", [-1.5, -0.0000004, -86_400.25])
def test_iso_timestamp_before_the_epoch_equals_datetime(ts: float) -> None:
    assert iso_timestamp(ts) == _reference_iso(ts)


names = st.one_of(
    st.text(min_size=1, max_size=40),
    st.sampled_from(['q"uote\\d.wfm', "new\nline.wfm", "tab\t.wfm", "données/ß-日本.wfm",
                     "emoji-🚀.wfm", "comma,semi;.wfm", "\x00nul\x1f.wfm", "\u2028sep.wfm"]),
)
optional_text = st.one_of(st.none(), st.text(max_size=40), st.just('say "hi"\n'))


@st.composite
def events_st(draw: st.DrawFn) -> Event:
    duration = draw(st.one_of(
        st.just(0.0),
        st.floats(min_value=0.0, max_value=1e6),
        st.floats(min_value=0.0, max_value=1e-300),  # tiny: samples / duration overflows
    ))
    end = draw(st.one_of(st.just(0.0), timestamps))
    status = draw(st.integers(0, 2))
    return (
        draw(names),
        end,
        duration,
        draw(st.integers(0, 2**70)),
        draw(st.integers(0, 2**40)),
        draw(st.integers(0, 2**70)),
        status,
        draw(optional_text) if status == 1 else None,
        draw(optional_text),
        draw(st.one_of(st.none(), st.integers(0, 2**63))),
    )


@given(events_st())
@example(("a.wfm", 1_700_000_000.5, 1e-310, 1000, 0, 0, 0, None, None, None))
def test_file_row_json_parses_to_file_row_dict(ev: Event) -> None:
    line = file_row_json(ev)
    assert "\n" not in line  # one line per row (JSON Lines)
    assert json.loads(line, parse_constant=_no_constant) == _as_json(file_row_dict(ev))


def _as_json(row: dict[str, Any]) -> dict[str, Any]:
    """A row as our JSON holds it: a rate that is not finite (a subnormal duration) is null."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v
            for k, v in row.items()}


def _no_constant(name: str) -> None:
    raise AssertionError(f"{name} is not JSON")


@given(st.lists(events_st(), max_size=10))
def test_jsonl_lines_is_one_parsable_row_per_event(events: list[Event]) -> None:
    text = jsonl_lines(events)
    assert text.count("\n") == len(events)
    assert text == "" or text.endswith("\n")
    assert [json.loads(line, parse_constant=_no_constant) for line in text.split("\n")[:-1]] == [
        _as_json(file_row_dict(ev)) for ev in events]


@given(st.lists(events_st(), min_size=1, max_size=20), st.integers(16, 80))
@example([("bad-\udcff.wfm", 1_700_000_000.5, 0.5, 10, 0, 0, 0, None, None, None)], 16)
def test_jsonl_lines_of_whole_batches_parse_to_file_row_dicts(base: list[Event], n: int) -> None:
    # batches of 16 or more format their timestamps column-wise; a long batch is cycled
    # from a short drawn one, as long lists of events are slow to draw
    events = [base[i % len(base)] for i in range(n)]
    text = jsonl_lines(events)
    # lines end at "\n" only: U+0085 and U+2028 may stand in a JSON string unescaped
    assert [json.loads(line, parse_constant=_no_constant) for line in text.split("\n")[:-1]] == [
        _as_json(file_row_dict(ev)) for ev in events]


@given(st.lists(st.one_of(timestamps, st.just(0.0), st.integers(0, 4_102_444_800).map(float),
                          st.floats(min_value=-1e9, max_value=0.0)), min_size=16, max_size=300))
@example([1_700_000_059.9999999, 1_703_980_799.9999997, 1_700_000_000.0000005, 1e-7] * 4)
def test_iso_timestamps_of_a_column_equal_iso_timestamp(times: list[float]) -> None:
    assert iso_timestamps(times) == [iso_timestamp(t) if t else None for t in times]


@given(st.lists(events_st(), max_size=60))
@example([("bad-\udcff.wfm", 1_700_000_000.5, 0.5, 10, 0, 0, 1, "OSError", "x\udc80", 7)])
def test_log_lines_are_the_events_as_recorded(events: list[Event]) -> None:
    text = log_lines(events).decode("utf-8")
    rows = [json.loads(line) for line in text.split("\n")[:-1]]
    assert rows == [log_row_dict(ev) for ev in events]
    for row, ev in zip(rows, events, strict=True):
        # keys in LOG_COLUMNS order; the last three only when they are not None
        assert tuple(row) == tuple(key for key in LOG_COLUMNS if key in row)
        assert set(LOG_COLUMNS[:7]) <= set(row)
        assert ("memory_peak_bytes" in row) == (ev[9] is not None)
        assert row["end_ts"] == ev[1]
        assert row["status"] == STATUS_NAMES[ev[6]]


def test_file_row_dict_has_the_reference_columns_in_order() -> None:
    ev: Event = ("a.wfm", 1_700_000_010.0, 2.0, 100, 3, 4096, 0, None, None, 1 << 20)
    row = file_row_dict(ev)
    assert tuple(row) == FILE_COLUMNS
    assert row == {
        "filename": "a.wfm",
        "start_time": _reference_iso(1_700_000_008.0),
        "end_time": _reference_iso(1_700_000_010.0),
        "duration_seconds": 2.0,
        "samples": 100,
        "measurements": 3,
        "status": "success",
        "error_type": None,
        "error_message": None,
        "memory_peak_bytes": 1 << 20,
        "samples_per_second": 50.0,
        "bytes_processed": 4096,
    }
    assert file_row_dict(("b", 0.0, 0.0, 5, 0, 0, 2, None, "", None))["start_time"] is None


plain_names = st.text(alphabet=st.characters(codec="utf-8", exclude_characters=',"\r\n\x00'),
                      max_size=30)


@given(st.lists(st.one_of(events_st(), events_st().map(lambda ev: (
    "plain.wfm", *ev[1:7], None, None, None))), max_size=40), st.lists(plain_names, max_size=40))
def test_csv_rows_are_the_csv_modules_text_exactly(events: list[Event], names: list[str]) -> None:
    # most rows are formatted without csv.writer: the text must be the one it writes
    events = [(name, *ev[1:]) for name, ev in zip(names, events, strict=False)] + \
        events[len(names):]
    buf = io.StringIO()
    csv.writer(buf).writerows(
        [ev[0], iso_timestamp(ev[1] - ev[2]) if ev[1] - ev[2] else None,
         iso_timestamp(ev[1]) if ev[1] else None, ev[2], ev[3], ev[4], STATUS_NAMES[ev[6]],
         ev[7], ev[8], ev[9], ev[3] / ev[2] if ev[2] > 0 else 0, ev[5]] for ev in events)
    assert csv_rows(events) == buf.getvalue()


@given(st.lists(events_st(), max_size=10))
def test_csv_rows_parse_back_with_dictreader(events: list[Event]) -> None:
    text = csv_header() + csv_rows(events)
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    assert len(rows) == len(events)
    for row, ev in zip(rows, events, strict=True):
        assert tuple(row) == FILE_COLUMNS
        assert row["filename"] == ev[0]
        assert row["status"] == STATUS_NAMES[ev[6]]
        assert row["error_message"] == ("" if ev[8] is None else ev[8])
        assert int(row["samples"]) == ev[3]
        assert float(row["duration_seconds"]) == ev[2]
