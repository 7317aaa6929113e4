"""QuantileSketch: exact merges, bounded relative error, bounded size."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from batchmetrics import QuantileSketch
from batchmetrics._sketch import VECTOR_MIN

# Durations in seconds, from sub-microsecond to days, with zeros mixed in.
durations_st = st.one_of(
    st.just(0.0),
    st.floats(min_value=1e-9, max_value=1e6, allow_nan=False, allow_infinity=False),
)
duration_lists = st.lists(durations_st, max_size=300)
quantiles_st = st.floats(min_value=0.0, max_value=1.0)


def _sketch_of(values: list[float]) -> QuantileSketch:
    sk = QuantileSketch()
    for x in values:
        sk.add(x)
    return sk


def _exact_quantile(values: list[float], q: float) -> float:
    """Linear interpolation between the order statistics at ranks floor/ceil of q*(n-1)
    (numpy's default method; ``statistics.median`` for q = 0.5)."""
    ordered = sorted(values)
    r = q * (len(ordered) - 1)
    lo, hi = math.floor(r), math.ceil(r)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (r - lo)


@given(st.lists(duration_lists, min_size=1, max_size=5))
def test_merge_equals_sketch_of_concatenation_exactly(parts: list[list[float]]) -> None:
    merged = QuantileSketch()
    for part in parts:
        merged.merge(_sketch_of(part))
    everything = [x for part in parts for x in part]
    whole = _sketch_of(everything)
    assert merged.to_state() == whole.to_state()
    assert merged == whole
    assert merged.bucket_count == whole.bucket_count
    assert (merged.count, merged.zero_count) == (len(everything), everything.count(0.0))


@given(duration_lists, duration_lists)
def test_add_many_equals_repeated_add(head: list[float], values: list[float]) -> None:
    batched = _sketch_of(head)
    batched.add_many(values)
    assert batched == _sketch_of(head + values)


@given(st.lists(st.floats(min_value=0.0, max_value=1.7e308), min_size=VECTOR_MIN, max_size=400),
       st.integers(1, VECTOR_MIN - 1))
def test_numpy_and_plain_bucketing_agree_over_the_whole_float_range(
    values: list[float], size: int
) -> None:
    """Batches of VECTOR_MIN or more are bucketed with numpy, smaller ones in Python."""
    whole = QuantileSketch()
    whole.add_many(values)
    pieces = QuantileSketch()
    for i in range(0, len(values), size):
        pieces.add_many(values[i:i + size])
    assert whole.to_state() == pieces.to_state()
    assert (whole.min, whole.max) == (min(values), max(values))


@given(st.lists(durations_st, min_size=1, max_size=300), st.lists(quantiles_st, max_size=5))
def test_quantiles_are_within_relative_accuracy_of_exact(
    values: list[float], qs: list[float]
) -> None:
    sk = _sketch_of(values)
    alpha = sk.relative_accuracy
    assert alpha <= 0.01
    for q in [0.0, 0.5, 0.9, 0.95, 0.99, 1.0, *qs]:
        exact = _exact_quantile(values, q)
        estimate = sk.quantile(q)
        # each order statistic is estimated within alpha, so is any convex combination
        assert abs(estimate - exact) <= alpha * exact * (1 + 1e-9), (q, estimate, exact)
    assert sk.quantiles([0.5, 0.99]) == [sk.quantile(0.5), sk.quantile(0.99)]


@given(
    st.lists(
        st.one_of(st.just(0.0), st.floats(min_value=2.2250738585072014e-308, allow_nan=False,
                                          allow_infinity=False)),
        min_size=1, max_size=50),
    quantiles_st,
)
def test_quantiles_of_extreme_normal_floats_are_finite_and_within_relative_accuracy(
    values: list[float], q: float
) -> None:
    # the bucket representative once over/underflowed: NaN above ~1e154, 0.0 below ~1e-154
    sk = _sketch_of(values)
    exact = _exact_quantile(values, q)
    estimate = sk.quantile(q)
    assert math.isfinite(estimate)
    assert abs(estimate - exact) <= sk.relative_accuracy * exact * (1 + 1e-9), (estimate, exact)


def test_quantiles_of_a_large_lognormal_sample_are_within_one_percent() -> None:
    rng = random.Random(11)
    values = [rng.lognormvariate(-3.0, 1.2) for _ in range(50_000)]
    sk = QuantileSketch()
    sk.add_many(values)
    for q in (0.01, 0.25, 0.5, 0.9, 0.95, 0.99, 0.999):
        exact = _exact_quantile(values, q)
        assert sk.quantile(q) == pytest.approx(exact, rel=0.01)


def test_zeros_are_counted_apart_and_reported_exactly() -> None:
    sk = _sketch_of([0.0, 0.0, 0.0, 1.0])
    assert sk.zero_count == 3
    assert sk.count == 4
    assert sk.bucket_count == 1
    assert sk.quantile(0.0) == 0.0
    assert sk.quantile(0.5) == 0.0
    assert sk.quantile(1.0) == 1.0  # clamped to the exact max
    only_zeros = _sketch_of([0.0, 0.0])
    assert only_zeros.quantiles([0.0, 0.5, 1.0]) == [0.0, 0.0, 0.0]


@given(st.lists(durations_st, min_size=1, max_size=100), quantiles_st)
def test_quantile_estimates_never_leave_the_exact_min_and_max(
    values: list[float], q: float
) -> None:
    sk = _sketch_of(values)
    assert (sk.min, sk.max) == (min(values), max(values))
    assert min(values) <= sk.quantile(q) <= max(values)


def test_empty_sketch_reports_zero() -> None:
    sk = QuantileSketch()
    assert sk.quantiles([0.0, 0.5, 1.0]) == [0.0, 0.0, 0.0]
    assert (sk.count, sk.min, sk.max, sk.bucket_count) == (0, 0.0, 0.0, 0)


@given(duration_lists)
def test_state_round_trips_through_json(values: list[float]) -> None:
    sk = _sketch_of(values)
    state = json.loads(json.dumps(sk.to_state()))
    back = QuantileSketch.from_state(state)
    assert back == sk
    assert back.to_state() == sk.to_state()
    assert back.quantiles([0.0, 0.5, 0.9, 1.0]) == sk.quantiles([0.0, 0.5, 0.9, 1.0])


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (-1.0, ValueError),
        (-1e-300, ValueError),
        (math.nan, ValueError),
        (math.inf, ValueError),
        (-math.inf, ValueError),
        ("1.0", TypeError),
        (True, TypeError),
        (None, TypeError),
    ],
)
def test_add_rejects_values_that_are_not_finite_non_negative_numbers(
    value: object, error: type[Exception]
) -> None:
    sk = _sketch_of([1.0])
    before = sk.to_state()
    with pytest.raises(error, match="QuantileSketch"):
        sk.add(value)  # type: ignore[arg-type]
    assert sk.to_state() == before


@pytest.mark.parametrize("q", [-0.01, 1.01, -math.inf, math.inf, math.nan])
def test_quantile_outside_zero_one_raises(q: float) -> None:
    with pytest.raises(ValueError, match="quantile q must be in"):
        _sketch_of([1.0, 2.0]).quantile(q)


def test_bucket_count_stays_bounded_by_the_spread_not_the_count() -> None:
    rng = random.Random(3)
    values = [10.0 ** rng.uniform(-6.0, 5.0) for _ in range(1_000_000)]
    sk = QuantileSketch()
    sk.add_many(values)
    # at most 2**mantissa_bits buckets per power of two the values span
    bound = 2**sk.mantissa_bits * (math.ceil(math.log2(1e5 / 1e-6)) + 1)
    assert sk.count == 1_000_000
    assert sk.bucket_count <= bound < 5000
    before = sk.bucket_count
    sk.add_many(values[:100_000])  # more of the same spread: no new buckets
    assert sk.bucket_count == before


def test_merge_rejects_other_precision_and_other_types() -> None:
    with pytest.raises(ValueError, match="mantissa_bits"):
        QuantileSketch(6).merge(QuantileSketch(7))
    with pytest.raises(TypeError, match="QuantileSketch"):
        QuantileSketch().merge([1.0])  # type: ignore[arg-type]


def test_from_state_rejects_counts_that_do_not_match_the_buckets() -> None:
    state = _sketch_of([1.0, 2.0, 0.0]).to_state()
    state["count"] = 5
    with pytest.raises(ValueError, match="count"):
        QuantileSketch.from_state(state)
    state = _sketch_of([1.0]).to_state()
    state["buckets"] = [[state["buckets"][0][0], 0]]
    with pytest.raises(ValueError, match="bucket"):
        QuantileSketch.from_state(state)


def test_wrong_types_are_type_errors_naming_the_argument() -> None:
    with pytest.raises(TypeError, match="mantissa_bits must be an int, got str '6'"):
        QuantileSketch("6")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"mantissa_bits must be an int in 1\.\.20, got 21"):
        QuantileSketch(21)
    sketch = QuantileSketch()
    sketch.add(1.0)
    with pytest.raises(TypeError, match=r"quantile q must be a number, got str '0\.5'"):
        sketch.quantile("0.5")  # type: ignore[arg-type]
    assert sketch.quantile(0.5) == pytest.approx(1.0, rel=0.01)
    numpy_qs: list[float] = [np.float32(0.5), np.int64(1)]  # type: ignore[list-item]
    assert sketch.quantiles(numpy_qs) == [sketch.quantile(0.5)] * 2
