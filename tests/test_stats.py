"""RunningStats (Welford/Chan) against ``statistics`` as the oracle."""

from __future__ import annotations

import json
import math
import statistics
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from batchmetrics import RunningStats

# Durations-like values, but signed and over many magnitudes: the stats are generic.
values_st = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
value_lists = st.lists(values_st, max_size=200)


def _stats_of(values: list[float]) -> RunningStats:
    rs = RunningStats()
    for x in values:
        rs.push(x)
    return rs


def _scale(values: list[float]) -> float:
    return max((abs(x) for x in values), default=0.0) + 1e-300


#: Squares of values under about 1e-154 are subnormal floats, with fewer significant
#: bits: variances that small are only absolutely accurate.
_TINY_VARIANCE = 1e-290


def _assert_matches_oracle(rs: RunningStats, values: list[float]) -> None:
    """Count exact; mean and variance as ``statistics`` (exact rational arithmetic) within
    a tight relative tolerance, with an absolute floor scaled to the data's magnitude
    (cancellation makes a tiny variance of large values only absolutely accurate)."""
    assert rs.count == len(values)
    scale = _scale(values)
    if not values:
        assert (rs.mean, rs.variance, rs.min, rs.max) == (0.0, 0.0, 0.0, 0.0)
        return
    assert math.isclose(rs.mean, statistics.fmean(values), rel_tol=1e-9, abs_tol=1e-12 * scale)
    expected_var = statistics.variance(values) if len(values) > 1 else 0.0
    assert math.isclose(rs.variance, expected_var, rel_tol=1e-9,
                        abs_tol=1e-9 * scale * scale + _TINY_VARIANCE)
    assert rs.min == min(values)
    assert rs.max == max(values)


@given(value_lists)
def test_push_matches_statistics(values: list[float]) -> None:
    _assert_matches_oracle(_stats_of(values), values)


@given(value_lists, value_lists)
@example([0.0], [0.0, 4.436385818673605e-159])  # a variance among the subnormals
def test_push_many_equals_repeated_push(head: list[float], values: list[float]) -> None:
    one_by_one = _stats_of(head + values)
    batched = _stats_of(head)
    batched.push_many(values)
    assert batched.count == one_by_one.count
    scale = _scale(head + values)
    assert math.isclose(batched.mean, one_by_one.mean, rel_tol=1e-9, abs_tol=1e-12 * scale)
    assert math.isclose(batched.variance, one_by_one.variance, rel_tol=1e-9,
                        abs_tol=1e-9 * scale * scale + _TINY_VARIANCE)
    assert (batched.min, batched.max) == (one_by_one.min, one_by_one.max)
    _assert_matches_oracle(batched, head + values)


@given(st.lists(value_lists, max_size=6))
def test_merge_of_partial_aggregates_equals_aggregate_of_all(parts: list[list[float]]) -> None:
    merged = RunningStats()
    for part in parts:
        merged.merge(_stats_of(part))
    everything = [x for part in parts for x in part]
    _assert_matches_oracle(merged, everything)


@given(value_lists, value_lists)
def test_add_and_iadd_merge_without_touching_the_left_operand(
    left: list[float], right: list[float]
) -> None:
    a, b = _stats_of(left), _stats_of(right)
    a_state = a.to_state()
    total = a + b
    assert a.to_state() == a_state  # ``+`` copies
    _assert_matches_oracle(total, left + right)
    a += b
    assert a == total


@given(value_lists)
def test_state_round_trips_through_json(values: list[float]) -> None:
    rs = _stats_of(values)
    state = json.loads(json.dumps(rs.to_state()))
    back = RunningStats.from_state(state)
    assert back == rs
    assert back.to_state() == rs.to_state()
    assert (back.count, back.mean, back.variance, back.min, back.max) == (
        rs.count, rs.mean, rs.variance, rs.min, rs.max)


def test_empty_stats_report_zeros() -> None:
    rs = RunningStats()
    assert (rs.count, rs.mean, rs.variance, rs.stddev, rs.min, rs.max, rs.total) == (
        0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    assert rs.to_state()["min"] is None
    assert rs.to_state()["max"] is None


def test_single_value_has_zero_variance() -> None:
    rs = RunningStats()
    rs.push(2.5)
    assert (rs.count, rs.mean, rs.variance, rs.stddev, rs.min, rs.max) == (
        1, 2.5, 0.0, 0.0, 2.5, 2.5)


def test_merge_with_empty_is_identity_on_both_sides() -> None:
    rs = _stats_of([1.0, 2.0, 4.0])
    before = rs.to_state()
    assert rs.merge(RunningStats()).to_state() == before
    empty = RunningStats()
    assert empty.merge(rs).to_state() == before


def test_merge_rejects_other_types() -> None:
    with pytest.raises(TypeError, match="RunningStats"):
        RunningStats().merge([1.0])  # type: ignore[arg-type]


@pytest.mark.parametrize("count", [-1, True, 1.5, "3"])
def test_from_state_rejects_a_bad_count(count: object) -> None:
    state = _stats_of([1.0, 2.0]).to_state()
    state["count"] = count
    with pytest.raises(ValueError, match="count"):
        RunningStats.from_state(state)


def test_push_refuses_what_is_not_a_finite_number_and_keeps_the_stats() -> None:
    stats = RunningStats()
    stats.push(2)
    for bad, error, message in ((math.nan, ValueError, "must be finite, got nan"),
                                (math.inf, ValueError, "must be finite, got inf"),
                                ("1", TypeError, "must be numbers, got str '1'"),
                                (True, TypeError, "must be numbers, got bool True")):
        with pytest.raises(error, match=message):
            stats.push(bad)  # type: ignore[arg-type]
    assert (stats.count, stats.mean, stats.m2) == (1, 2.0, 0.0)


def test_push_takes_any_real_number() -> None:
    stats = RunningStats()
    for value in (np.float32(1.5), np.int64(3), Fraction(1, 2)):
        stats.push(value)  # type: ignore[arg-type]
    assert stats.count == 3
    assert stats.mean == pytest.approx(5 / 3)
    with pytest.raises(ValueError, match="must be finite"):
        stats.push(2**1100)  # past the float range
    assert stats.count == 3
