"""The consumer's Aggregate: exact merges of split batches, and its JSON state."""

from __future__ import annotations

import json
import math
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batchmetrics import Aggregate, merge_states
from batchmetrics._events import ERROR, SKIPPED, SUCCESS, Event
from batchmetrics._sketch import VECTOR_MIN

ERROR_TYPES = ("ValueError", "OSError", "KeyError")


@st.composite
def events_st(draw: st.DrawFn) -> Event:
    status = draw(st.sampled_from([SUCCESS, SUCCESS, SUCCESS, ERROR, SKIPPED]))
    duration = draw(st.one_of(st.just(0.0), st.sampled_from([0.5, 1.0, 2.0]),  # ties
                              st.floats(min_value=1e-6, max_value=1e3)))
    etype = draw(st.sampled_from([*ERROR_TYPES, None])) if status == ERROR else None
    message = draw(st.sampled_from(["bad header", "truncated", None]))
    return (
        f"f{draw(st.integers(0, 10**6))}.wfm",
        1_800_000_000.0,
        duration,
        draw(st.integers(0, 10**6)),
        draw(st.integers(0, 100)),
        draw(st.integers(0, 10**9)),
        status,
        etype,
        message if status != SUCCESS else None,
        None,
    )


def _aggregate_of(events: list[Event]) -> Aggregate:
    agg = Aggregate()
    agg.add_batch(events)
    return agg


def _state_without_floats(agg: Aggregate) -> dict[str, Any]:
    """The state minus the parts summed in floating point (compared with a tolerance)."""
    state = agg.to_state()
    del state["timing"], state["busy_seconds"], state["slowest"], state["error_messages"]
    return state


def _assert_same_aggregate(merged: Aggregate, whole: Aggregate) -> None:
    assert _state_without_floats(merged) == _state_without_floats(whole)
    assert merged.sketch == whole.sketch
    assert merged.timing.count == whole.timing.count
    assert merged.timing.min == whole.timing.min
    assert merged.timing.max == whole.timing.max
    assert math.isclose(merged.timing.mean, whole.timing.mean, rel_tol=1e-9, abs_tol=1e-12)
    assert math.isclose(merged.timing.variance, whole.timing.variance, rel_tol=1e-9,
                        abs_tol=1e-9)
    assert math.isclose(merged.busy_seconds, whole.busy_seconds, rel_tol=1e-9, abs_tol=1e-9)
    # the error messages kept are the first few per type; which ones depends on the order
    assert set(merged.error_messages) == set(whole.error_messages)
    # the slowest files: the k longest, the earliest of equal durations, in that order
    assert merged.to_state()["slowest"] == whole.to_state()["slowest"]


@given(st.lists(events_st(), max_size=120), st.lists(st.integers(0, 120), max_size=4))
def test_merge_of_split_batches_equals_one_aggregate(
    events: list[Event], cuts: list[int]
) -> None:
    bounds = [0, *sorted(min(c, len(events)) for c in cuts), len(events)]
    parts = [events[a:b] for a, b in pairwise(bounds)]
    merged = Aggregate()
    for part in parts:
        merged.merge(_aggregate_of(part))
    _assert_same_aggregate(merged, _aggregate_of(events))


@given(st.lists(st.lists(events_st(), max_size=40), max_size=5))
def test_adding_batch_by_batch_equals_adding_all_at_once(batches: list[list[Event]]) -> None:
    incremental = Aggregate()
    for batch in batches:
        incremental.add_batch(batch)
    _assert_same_aggregate(incremental, _aggregate_of([e for b in batches for e in b]))


@given(st.lists(events_st(), min_size=1, max_size=40), st.integers(VECTOR_MIN, 300),
       st.integers(1, VECTOR_MIN - 1))
def test_numpy_and_plain_folds_agree(base: list[Event], n: int, size: int) -> None:
    """A batch of VECTOR_MIN events or more is folded with numpy, a smaller one in Python."""
    # a long batch cycled from a short drawn one: long lists of events are slow to draw
    events = [base[i % len(base)] for i in range(n)]
    small = Aggregate()
    for i in range(0, len(events), size):
        small.add_batch(events[i:i + size])
    whole = _aggregate_of(events)
    _assert_same_aggregate(small, whole)
    assert small.error_messages == whole.error_messages  # same order: the same first ones


@given(st.lists(events_st(), max_size=60), st.lists(events_st(), max_size=60))
def test_merge_states_equals_merging_aggregates(left: list[Event], right: list[Event]) -> None:
    a, b = _aggregate_of(left), _aggregate_of(right)
    a.start_ts, b.start_ts, a.end_ts, b.end_ts = 10.0, 5.0, 20.0, 30.0
    from_states = merge_states([json.loads(json.dumps(a.to_state())), b.to_state()])
    merged = a.copy().merge(b)
    assert from_states == merged
    assert (merged.start_ts, merged.end_ts) == (5.0, 30.0)  # earliest start, latest end


def test_counts_and_totals_follow_the_reference_semantics() -> None:
    events: list[Event] = [
        ("a", 1e9, 0.5, 10, 1, 100, SUCCESS, None, None, None),
        ("b", 1e9, 0.0, 20, 2, 200, SUCCESS, None, None, None),  # counted, not timed
        ("c", 1e9, 0.2, 30, 3, 300, ERROR, "OSError", "disk", None),
        ("d", 1e9, 0.1, 40, 4, 400, ERROR, None, "untyped", None),  # no type: not by_type
        ("e", 1e9, 0.0, 0, 0, 0, SKIPPED, None, "dup", None),
    ]
    agg = _aggregate_of(events)
    assert (agg.total_files, agg.processed_count, agg.error_count, agg.skip_count) == (
        5, 2, 2, 1)
    assert (agg.samples, agg.measurements, agg.total_bytes) == (30, 3, 300)  # successes only
    assert agg.by_type == {"OSError": 1}
    assert agg.timing.count == 1
    assert agg.sketch.count == 1
    assert agg.busy_seconds == pytest.approx(0.8)  # every file's duration


@given(st.lists(events_st(), max_size=80))
def test_state_round_trips_through_json(events: list[Event]) -> None:
    agg = _aggregate_of(events)
    agg.start_ts, agg.end_ts = 1_800_000_000.25, 1_800_000_100.5
    back = Aggregate.from_state(json.loads(json.dumps(agg.to_state())))
    assert back == agg
    assert back.to_summary("b").to_dict() == agg.to_summary("b").to_dict()


@pytest.mark.parametrize("version", [None, 0, 2, "1"])
def test_from_state_rejects_an_unknown_version(version: object) -> None:
    state = _aggregate_of([("a", 1e9, 0.5, 1, 1, 1, SUCCESS, None, None, None)]).to_state()
    state["version"] = version
    with pytest.raises(ValueError, match="version"):
        Aggregate.from_state(state)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("total_files", -1),
        ("processed_count", 1.5),
        ("error_count", True),
        ("skip_count", "3"),
        ("samples", None),
        ("bytes_processed", -10),
    ],
)
def test_from_state_rejects_bad_counts(key: str, value: object) -> None:
    state = _aggregate_of([("a", 1e9, 0.5, 1, 1, 1, SUCCESS, None, None, None)]).to_state()
    state[key] = value
    with pytest.raises(ValueError, match=key):
        Aggregate.from_state(state)


def test_from_state_rejects_missing_keys_and_inconsistent_sketches() -> None:
    state = _aggregate_of([("a", 1e9, 0.5, 1, 1, 1, SUCCESS, None, None, None)]).to_state()
    del state["timing"]
    with pytest.raises(ValueError, match="timing"):
        Aggregate.from_state(state)
    state = _aggregate_of([("a", 1e9, 0.5, 1, 1, 1, SUCCESS, None, None, None)]).to_state()
    state["sketch"]["count"] = 7
    with pytest.raises(ValueError, match="count"):
        Aggregate.from_state(state)
    with pytest.raises(TypeError, match="dict"):
        Aggregate.from_state([])  # type: ignore[arg-type]


def _mixed_state() -> dict[str, Any]:
    events: list[Event] = [
        ("a", 1e9, 0.5, 1, 1, 1, SUCCESS, None, None, None),
        ("b", 1e9, 0.0, 1, 1, 1, SUCCESS, None, None, None),  # not timed
        ("c", 1e9, 0.1, 0, 0, 0, ERROR, "OSError", "gone", None),
        ("d", 1e9, 0.0, 0, 0, 0, SKIPPED, None, "dup", None),
    ]
    agg = _aggregate_of(events)
    agg.start_ts, agg.end_ts = 1_800_000_000.0, 1_800_000_001.0
    return agg.to_state()


@pytest.mark.parametrize(("change", "message"), [
    ({"total_files": 5}, r"total_files 5 is not processed_count \+ error_count \+ skip_count "
                         r"\(2 \+ 1 \+ 1 = 4\)"),
    ({"skip_count": 0}, r"total_files 4 is not .* \(2 \+ 1 \+ 0 = 3\)"),
    ({"by_type": {"OSError": 2}}, "by_type and other_types count 2 errors, more than "
                                  "error_count 1"),
    ({"other_types": 1}, "by_type and other_types count 2 errors"),
    ({"processed_count": 0, "total_files": 2},
     "timing counts 1 durations, more than processed_count 0"),
    ({"slowest_k": 3}, "slowest holds 4 files, more than slowest_k 3"),
])
def test_from_state_rejects_fields_that_contradict_each_other(
        change: dict[str, Any], message: str) -> None:
    # a hand-edited or damaged export: merging it would give figures no run can have
    state = _mixed_state()
    assert Aggregate.from_state(state).total_files == 4  # as written, it reads
    with pytest.raises(ValueError, match=f"bad aggregate state: {message}"):
        merge_states([{**state, **change}])


def test_a_state_whose_sketch_and_timing_disagree_is_refused() -> None:
    state = _mixed_state()
    assert state["timing"]["count"] == state["sketch"]["count"] == 1  # b took no time
    state["timing"] = {**state["timing"], "count": 2, "m2": 0.0}
    with pytest.raises(ValueError, match="timing counts 2 durations and sketch 1"):
        Aggregate.from_state(state)


def test_a_state_that_ends_before_it_starts_is_read() -> None:
    # an injected clock stepped back is used as it is, and older runs had wall-clock
    # stamps: such a run is shown (with a negative duration), not refused
    state = {**_mixed_state(), "end_ts": 1_799_999_940.0}
    merged = merge_states([state])
    assert merged.to_summary("b").to_dict()["timing"]["total_duration_seconds"] == -60.0


def test_slowest_files_are_the_k_longest_across_merges() -> None:
    events: list[Event] = [(f"f{i}", 1e9, float(i), 0, 0, 0, SUCCESS, None, None, None)
                           for i in range(1, 101)]
    merged = _aggregate_of(events[:37]).merge(_aggregate_of(events[37:]))
    names = [s.filename for s in merged.to_summary("b").slowest_files]
    assert names == [f"f{i}" for i in range(100, 90, -1)]


@given(st.lists(st.sampled_from([f"E{i}" for i in range(6)]), max_size=60),
       st.integers(0, 60), st.integers(1, 6))
def test_error_types_past_the_cap_are_counted_apart_also_across_merges(
        types: list[str], cut: int, cap: int) -> None:
    events: list[Event] = [(f"f{i}", 1e9, 1.0, 0, 0, 0, ERROR, etype, "bad", None)
                           for i, etype in enumerate(types)]

    def capped(part: list[Event]) -> Aggregate:
        agg = Aggregate(max_error_types=cap)
        agg.add_batch(part)
        return agg

    whole = capped(events)
    first_seen = list(dict.fromkeys(types))
    assert whole.by_type == {etype: types.count(etype) for etype in first_seen[:cap]}
    assert whole.other_types == len(types) - sum(whole.by_type.values())
    assert whole.to_summary("b").to_dict()["errors"]["other_types"] == whole.other_types
    assert Aggregate.from_state(json.loads(json.dumps(whole.to_state()))) == whole
    merged = capped(events[:cut]).merge(capped(events[cut:]))
    if len(set(types[:cut])) <= cap and len(set(types[cut:])) <= cap:
        # no part had to leave a type out: the merge is exact
        assert merged.to_state() == whole.to_state()
    else:
        # a type one part left out is in other_types for that part's errors: each kept
        # count is a lower bound, and every error is still counted once
        assert len(merged.by_type) <= cap
        assert all(count <= types.count(etype) for etype, count in merged.by_type.items())
        assert sum(merged.by_type.values()) + merged.other_types == len(types)


def test_merging_parts_of_different_error_type_caps_keeps_the_larger_in_any_order() -> None:
    # the first part's cap was kept: types the other part had counted went to other_types
    def part(cap: int, types: list[str]) -> Aggregate:
        agg = Aggregate(max_error_types=cap)
        agg.add_batch([(f"f{i}", 1e9, 1.0, 0, 0, 0, ERROR, t, "m", None)
                       for i, t in enumerate(types)])
        return agg

    one_way = part(1, ["a", "b", "b"]).merge(part(100, ["b", "c"]))
    other_way = part(100, ["b", "c"]).merge(part(1, ["a", "b", "b"]))
    for merged in (one_way, other_way):
        assert merged.by_type == {"a": 1, "b": 1, "c": 1}  # b's 2 from the capped part: other
        assert (merged.other_types, merged.max_error_types) == (2, 100)


def test_a_state_without_the_error_type_cap_reads_as_the_defaults() -> None:
    # states written before other_types and max_error_types existed (version 1 too)
    state = _aggregate_of([("a", 1e9, 0.5, 0, 0, 0, ERROR, "OSError", "x", None)]).to_state()
    del state["other_types"], state["max_error_types"]
    agg = Aggregate.from_state(state)
    assert (agg.by_type, agg.other_types, agg.max_error_types) == ({"OSError": 1}, 0, 100)


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"slowest_k": "3"}, TypeError, "slowest_k must be an int, got str '3'"),
    ({"slowest_k": -1}, ValueError, "slowest_k must be >= 0, got -1"),
    ({"error_messages_per_type": 1.5}, TypeError, "error_messages_per_type must be an int"),
    ({"max_error_types": -2}, ValueError, "max_error_types must be >= 0, got -2"),
])
def test_aggregate_arguments_are_checked(
        kwargs: dict[str, Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        Aggregate(**kwargs)
