"""When a lost POST may be sent again (repost.py): pure functions, no clock."""

from __future__ import annotations

import pytest

from subtitle_tasks import repost, schedule


def evidence(*seconds: float) -> list[float] | None:
    stats = None
    for value in seconds:
        stats = schedule.update(stats, value)
    return stats


def test_cold_waits_the_ceiling_as_before():
    assert repost.repost_after(None, floor=60, ceiling=300) == 300
    assert repost.repost_after(evidence(*[1.0] * 5), floor=60, ceiling=300) == 300  # too little evidence


def test_warm_waits_a_margin_over_the_learned_tail_between_floor_and_ceiling():
    assert repost.repost_after(evidence(*[1.0] * 20), floor=60, ceiling=300) == 60  # quick to show: the floor
    tail = evidence(*[20.0] * 15, *[45.0] * 5)
    wait = repost.repost_after(tail, floor=60, ceiling=300)
    assert 2 * 45 <= wait <= 2 * 45 * 1.2
    assert repost.repost_after(evidence(*[400.0] * 20), floor=60, ceiling=300) == 300  # never past the ceiling


def test_a_ceiling_below_the_floor_still_waits_the_floor():
    assert repost.repost_after(None, floor=60, ceiling=5) == 60


@pytest.mark.parametrize("draw,warm,expected", [(0.9, False, True), (0.9, True, False), (0.01, True, True)])
def test_probes_every_post_while_cold_then_a_sample(draw, warm, expected):
    stats = evidence(*[1.0] * (20 if warm else 3))
    assert repost.should_probe(stats, lambda: draw) is expected
