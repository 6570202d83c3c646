"""Backpressure in time (backpressure.py): pure, then the dispatcher on a fake clock.

No sleeping: the clock, the queue and the workers that drain it are scripted.
"""

from __future__ import annotations

import pytest

from subtitle_tasks import backpressure
from subtitle_tasks.backpressure import DrainRate
from subtitle_tasks.dispatcher import HORIZON, ROOM_FLOOR, Dispatcher
from subtitle_tasks.state import MemoryStore


def test_the_drain_is_what_was_published_less_what_the_queue_still_holds():
    drain = DrainRate(smoothing=0.0)  # no smoothing: each look's own figure
    drain.observe(0.0, depth=10, published=100)
    assert drain.observe(1.0, depth=30, published=150) == pytest.approx(30.0)  # 50 published, 20 more queued
    assert drain.observe(3.0, depth=0, published=150) == pytest.approx(30.0)  # ran dry: a floor, not lower
    assert drain.observe(4.0, depth=5, published=200) == pytest.approx(45.0)


def test_a_look_that_cannot_be_compared_starts_anew():
    drain = DrainRate(smoothing=0.0)
    drain.observe(10.0, depth=0, published=50)
    assert drain.observe(9.0, depth=0, published=60) == 0.0  # the clock went back
    assert drain.observe(10.0, depth=0, published=5) == 0.0  # the counter was reset (Redis flushed)
    assert drain.observe(11.0, depth=3, published=25) == pytest.approx(17.0)


def test_a_dry_queue_raises_the_estimate_at_once_a_busy_one_follows_it_smoothly():
    drain = DrainRate(smoothing=5.0)
    drain.observe(0.0, depth=4, published=0)
    assert drain.observe(1.0, depth=0, published=40) == pytest.approx(44.0)  # dry: all it was given, at once
    busy = drain.observe(2.0, depth=50, published=100)  # 60 more, 10 of them taken: the busy fleet's own figure
    assert 10.0 < busy < 44.0


def test_room_is_the_horizon_of_the_drain_between_the_floor_and_the_ceiling():
    assert backpressure.room(0.0, 0, horizon=2.0, floor=20, ceiling=500) == 20  # nothing known: the floor
    assert backpressure.room(100.0, 50, horizon=2.0, floor=20, ceiling=500) == 150
    assert backpressure.room(1000.0, 0, horizon=2.0, floor=20, ceiling=500) == 500
    assert backpressure.room(8.0, 30, horizon=2.0, floor=20, ceiling=500) == 0  # the queue holds its share
    assert backpressure.room(8.0, 0, horizon=2.0, floor=20, ceiling=0) == 0


class Fleet:
    """A step queue and workers that take ``per_second`` steps off it, on a fake clock."""

    def __init__(self, per_second: float) -> None:
        self.per_second, self.now, self.queue = per_second, 0.0, []

    def publish(self, claimed):
        self.queue += claimed

    def depth(self) -> int:
        return len(self.queue)

    def run_for(self, seconds: float) -> None:
        self.now += seconds
        del self.queue[:int(self.per_second * seconds)]


def test_the_queue_holds_about_two_dispatch_intervals_of_what_the_fleet_drains():
    store = MemoryStore(clock=lambda: 1000.0)
    for i in range(2000):
        store.create_request(request_id=f"r{i}", generation_id=f"g{i}", upload_id=f"u{i}", language_code="en",
                             name=None, environment=None, on_ready=[], on_error=[], ttl=600)
    fleet = Fleet(per_second=40)
    dispatcher = Dispatcher(store, fleet.publish, lease=30, batch=500, backlog=fleet.depth, max_backlog=500,
                            horizon=HORIZON * 1.0, clock=lambda: fleet.now)
    depths, handed_out = [], 0
    for _ in range(30):  # a dispatch interval of 1 s
        handed_out += dispatcher.dispatch_once()
        depths.append(fleet.depth())
        fleet.run_for(1.0)
    # Settled: two seconds of 40 a second, not the 500 messages a count cap would queue.
    assert max(depths[10:]) <= 2 * 40 + 10
    assert min(depths[10:]) >= 40  # and never dry: the workers always had work
    assert handed_out >= 30 * 40 - 40  # so the fleet got through as much as it could
    assert store.counts()["scheduled"] == 2000  # the rest waited in the schedule


def test_a_fleet_with_room_to_spare_is_given_more_each_look_from_the_floor():
    store = MemoryStore(clock=lambda: 1000.0)
    for i in range(3000):
        store.create_request(request_id=f"r{i}", generation_id=f"g{i}", upload_id=f"u{i}", language_code="en",
                             name=None, environment=None, on_ready=[], on_error=[], ttl=600)
    fleet = Fleet(per_second=400)
    dispatcher = Dispatcher(store, fleet.publish, lease=30, batch=500, backlog=fleet.depth, max_backlog=500,
                            horizon=HORIZON * 1.0, clock=lambda: fleet.now)
    given = []
    for _ in range(6):
        given.append(dispatcher.dispatch_once())
        fleet.run_for(1.0)
    assert given[0] == ROOM_FLOOR
    assert given[1:5] == [2 * g for g in given[:4]]  # dry at every look: twice as much each time
    assert given[5] == 500  # up to the ceiling
