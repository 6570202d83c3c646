"""unseen.py: planning from the generations whose track had not shown yet. Pure
functions, no sleeping; the pipeline's use of them is in tests/test_schedule.py."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from subtitle_tasks import schedule, unseen

LIMITS = {"target": 6.0, "initial": 1.0, "maximum": 60.0}


def bimodal(n: int, seed: int = 1) -> list[unseen.Point]:
    """Short jobs (15-25 s) and long ones (60-90 s), then up to 20 s preparing."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        shown = rng.uniform(15, 25) if rng.random() < 0.6 else rng.uniform(60, 90)
        out.append((round(shown, 1), round(shown + rng.uniform(0, 20), 1)))
    return out


def histogram(points: list[unseen.Point]) -> list[float]:
    stats = None
    for _, ready in points:
        stats = schedule.update(stats, ready, decay=1.0)
    return stats


@given(st.floats(0, 500), st.floats(0, 100), st.floats(0, 500), st.floats(0, 100), st.floats(0, 1), st.floats(0, 1))
def test_a_point_lies_inside_both_intervals_and_is_never_ready_before_it_shows(low, width, ready_low, ready_width,
                                                                                a, b):
    draws = iter([a, b])
    shown, ready = (low, low + width), (ready_low, ready_low + ready_width)
    p = unseen.point(shown, ready, lambda: next(draws))
    if ready[1] < shown[0]:
        assert p is None  # ready before it could have shown: not a point
        return
    assert p is not None
    assert shown[0] - 0.05 <= p[0] <= min(shown[1], ready[1]) + 0.05
    assert p[0] <= p[1] <= ready[1] + 0.05
    assert p[1] >= ready[0] - 0.05 or p[1] == p[0]


@pytest.mark.parametrize("shown, ready", [((-1.0, 2.0), (3.0, 4.0)), ((5.0, 2.0), (6.0, 7.0)),
                                          ((1.0, 2.0), (4.0, 3.0)), ((1.0, float("nan")), (3.0, 4.0)),
                                          ((1.0, 2.0), (3.0, float("inf")))])
def test_intervals_that_cannot_be_make_no_point(shown, ready):
    assert unseen.point(shown, ready, lambda: 0.5) is None


def test_points_round_trip_and_unreadable_entries_are_left_out():
    raw = [unseen.encode((12.34, 40.0)), b"3.0:4.5", "junk", "5:1", "nan:3", "-1:2", "1:2:3"]
    assert unseen.decode(raw) == [(12.3, 40.0), (3.0, 4.5)]


def test_a_look_is_planned_from_the_points_only_once_enough_showed_later():
    points = bimodal(200)
    later = sum(1 for shown, _ in points if shown > 85)
    assert later < unseen.ENOUGH
    assert unseen.counts_after(points, 85.0) is None
    assert unseen.next_delay(points, 85.0, unseen_at=85.0, weight=10.0, **LIMITS) is None
    counts = unseen.counts_after(points, 30.0)
    assert counts is not None
    assert sum(counts) == sum(1 for shown, _ in points if shown > 30)
    assert schedule.cdf(list(counts), 50.0) == 0.0  # only the long jobs (showing from 60 s) are left


def test_a_track_not_listed_after_the_short_jobs_waits_for_the_long_ones():
    points = bimodal(256)
    stats = histogram(points)
    weight = unseen.price(points, stats, **LIMITS)
    assert weight is not None
    conditioned = unseen.next_delay(points, 30.0, unseen_at=30.0, weight=weight, **LIMITS)
    # Only "not ready at 30 s", the histogram still expects short jobs' tracks there.
    plain = schedule.next_delay(stats, 30.0, 0, rng=lambda: 1.0, **LIMITS)
    assert plain < 10
    assert conditioned is not None and 30.0 + conditioned >= 55.0  # the next look near where long jobs end


def test_the_price_keeps_the_replayed_late_share_within_the_allowance():
    for points in (bimodal(256, seed=3), [(round(s, 1), round(s + r, 1)) for s, r in
                                          ((random.Random(i).uniform(20, 90), random.Random(-i).uniform(0, 30))
                                           for i in range(256))]):
        stats = histogram(points)
        weight = unseen.price(points, stats, **LIMITS)
        assert weight is not None
        assert unseen.replay_late_share(points, stats, weight, **LIMITS) <= 1 - schedule.QUANTILE
        # and it is needed: at a fifth of it, the policy waits longer and misses more
        assert unseen.replay_late_share(points, stats, weight / 5, **LIMITS) > 1 - schedule.QUANTILE


def test_no_price_while_cold_or_with_few_points():
    points = bimodal(unseen.ENOUGH - 1)
    assert unseen.price(points, histogram(bimodal(200)), **LIMITS) is None
    assert unseen.price(bimodal(200), None, **LIMITS) is None


def test_the_replay_sees_a_point_when_a_look_comes_at_or_after_its_ready_time():
    # A histogram whose plan is a look every few seconds: a point ready at once after
    # showing is seen at the first look at or after it, never before.
    points = [(30.0, 30.0)] * unseen.ENOUGH
    stats = histogram(points)
    assert unseen.replay_late_share(points, stats, 100.0, **LIMITS) == 0.0
