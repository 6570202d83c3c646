"""Pure delay arithmetic: examples first, then properties."""

from __future__ import annotations

import math

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from subtitle_tasks.backoff import capped_exponential, retry_delay


def const(value: float):
    return lambda: value


# ----------------------------------------------------------------- examples


def test_attempt_zero_is_about_initial():
    assert capped_exponential(0, 1.0, 60.0, rng=const(1.0)) == 1.0
    assert capped_exponential(0, 1.0, 60.0, rng=const(0.0)) == 0.5


def test_grows_by_factor_then_caps():
    full = [capped_exponential(n, 1.0, 10.0, jitter=0.0) for n in range(6)]
    assert full == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    tripled = [capped_exponential(n, 1.0, 100.0, factor=3.0, jitter=0.0) for n in range(4)]
    assert tripled == [1.0, 3.0, 9.0, 27.0]


def test_equal_jitter_formula():
    # delay 8, jitter 0.5: 4 fixed + 4 * draw
    assert capped_exponential(3, 1.0, 60.0, jitter=0.5, rng=const(0.25)) == pytest.approx(5.0)
    assert capped_exponential(3, 1.0, 60.0, jitter=1.0, rng=const(0.25)) == pytest.approx(2.0)


def test_factor_one_is_constant():
    assert {capped_exponential(n, 2.0, 5.0, factor=1.0, jitter=0.0) for n in range(20)} == {2.0}


def test_huge_attempt_does_not_overflow():
    assert capped_exponential(10_000, 0.5, 30.0, rng=const(1.0)) == 30.0
    assert capped_exponential(10**9, 0.5, 30.0, factor=10.0, rng=const(0.0)) == 15.0


def test_rng_outside_unit_interval_is_clamped():
    assert capped_exponential(2, 1.0, 60.0, rng=const(7.0)) == 4.0
    assert capped_exponential(2, 1.0, 60.0, rng=const(-3.0)) == 2.0
    assert capped_exponential(2, 1.0, 60.0, rng=const(math.nan)) == 4.0


def test_default_rng_is_random_within_bounds():
    values = {capped_exponential(4, 1.0, 60.0) for _ in range(50)}
    assert all(8.0 <= v <= 16.0 for v in values)
    assert len(values) > 1


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(attempt=-1, initial=1.0, maximum=2.0),
        dict(attempt=1.5, initial=1.0, maximum=2.0),
        dict(attempt=True, initial=1.0, maximum=2.0),
        dict(attempt=0, initial=0.0, maximum=2.0),
        dict(attempt=0, initial=-1.0, maximum=2.0),
        dict(attempt=0, initial=math.inf, maximum=math.inf),
        dict(attempt=0, initial=math.nan, maximum=2.0),
        dict(attempt=0, initial=3.0, maximum=2.0),
        dict(attempt=0, initial=1.0, maximum=2.0, factor=0.5),
        dict(attempt=0, initial=1.0, maximum=2.0, jitter=-0.1),
        dict(attempt=0, initial=1.0, maximum=2.0, jitter=1.5),
        dict(attempt=0, initial="1", maximum=2.0),
    ],
)
def test_invalid_arguments_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        capped_exponential(**kwargs)


def test_retry_delay_defaults():
    assert retry_delay(0, rng=const(1.0)) == 0.5
    assert retry_delay(1, rng=const(1.0)) == 1.0
    assert retry_delay(0, rng=const(0.0)) == 0.25
    assert retry_delay(50, rng=const(1.0)) == 30.0


def test_retry_delay_honours_hint_even_above_maximum():
    assert retry_delay(0, hint=3.0, rng=const(1.0)) == 3.0
    assert retry_delay(0, hint=120.0, rng=const(1.0)) == 120.0
    assert retry_delay(0, hint=120.0, maximum=10.0, rng=const(1.0)) == 120.0


def test_retry_delay_small_hint_does_not_shorten_backoff():
    assert retry_delay(5, hint=0.1, rng=const(1.0)) == 16.0


@pytest.mark.parametrize("hint", [None, -1.0, math.nan, math.inf, "3", True])
def test_retry_delay_ignores_unusable_hints(hint):
    assert retry_delay(2, hint=hint, rng=const(1.0)) == 2.0


# --------------------------------------------------------------- properties

initials = st.floats(min_value=1e-3, max_value=100.0, allow_nan=False)
spans = st.floats(min_value=1.0, max_value=1000.0, allow_nan=False)
factors = st.floats(min_value=1.0, max_value=10.0, allow_nan=False)
jitters = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
draws = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
attempts = st.integers(min_value=0, max_value=2_000)


@given(attempts, initials, spans, factors, jitters, draws)
def test_result_stays_within_bounds(attempt, initial, span, factor, jitter, draw):
    maximum = initial * span
    delay = capped_exponential(attempt, initial, maximum, factor=factor, jitter=jitter, rng=const(draw))
    assert initial * (1 - jitter) <= delay <= maximum


@given(attempts, initials, spans, factors, jitters, draws)
def test_monotone_in_attempt_for_a_fixed_draw(attempt, initial, span, factor, jitter, draw):
    maximum = initial * span
    now = capped_exponential(attempt, initial, maximum, factor=factor, jitter=jitter, rng=const(draw))
    later = capped_exponential(attempt + 1, initial, maximum, factor=factor, jitter=jitter, rng=const(draw))
    assert later >= now


@given(attempts, initials, spans, factors)
def test_full_draw_equals_capped_exponential_without_jitter(attempt, initial, span, factor):
    maximum = initial * span
    assert capped_exponential(attempt, initial, maximum, factor=factor, rng=const(1.0)) == capped_exponential(
        attempt, initial, maximum, factor=factor, jitter=0.0
    )


@given(initials, spans, factors, jitters, draws)
def test_eventually_reaches_the_cap_region(initial, span, factor, jitter, draw):
    assume(factor > 1.01)
    maximum = initial * span
    delay = capped_exponential(2_000, initial, maximum, factor=factor, jitter=jitter, rng=const(draw))
    assert delay >= maximum * (1 - jitter) - 1e-9


@given(attempts, st.one_of(st.none(), st.floats(min_value=0.0, max_value=1e6)), draws)
def test_retry_delay_is_at_least_hint_and_backoff(attempt, hint, draw):
    delay = retry_delay(attempt, hint=hint, rng=const(draw))
    assert delay >= capped_exponential(attempt, 0.5, 30.0, rng=const(draw))
    if hint is not None:
        assert delay >= hint
    else:
        assert delay <= 30.0
