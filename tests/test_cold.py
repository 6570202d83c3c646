"""The cold schedule (cold.py) and what the planner keeps per process (planner.py).

Pure functions and the pipeline on a MemoryStore with a fake clock: no sleeping.
"""

from __future__ import annotations

import random

import pytest

from bench.schedule import draw, run_client, run_pipeline, summarise
from subtitle_tasks import cold, schedule, unseen
from subtitle_tasks.planner import PRIOR_WEIGHT, Planner, blend, moved, pool
from tests.test_pipeline_unit import START, Env, track
from tests.test_schedule import learned, uniform, with_settings


def official_times(n: int) -> list[float]:
    return [k * (k + 1) / 2 for k in range(1, n + 1)]


def test_the_official_gap_lands_on_the_official_clients_look_times():
    t, looks = 0.0, []
    for _ in range(12):
        t += cold.official_gap(t)
        looks.append(t)
    assert looks == pytest.approx(official_times(12))
    assert cold.official_gap(4.0) == pytest.approx(2.0)  # looks at 3 and 6: the next is at 6
    assert cold.official_gap(10.0, unit=0.5) == pytest.approx(0.5)  # 10 s = 20 units: the next look at 21 units


def test_cold_job_looks_keep_the_official_pace_within_the_gap_bounds():
    assert cold.job_delay(0.0, initial=1.0, maximum=60.0) == 1.0
    assert cold.job_delay(55.0, initial=1.0, maximum=60.0) == pytest.approx(11.0)
    assert cold.job_delay(5000.0, initial=1.0, maximum=8.0) == 8.0
    # Scaled: initial is the unit, so a fast test fleet keeps the same shape.
    assert cold.job_delay(0.3, initial=0.1, maximum=6.0) == pytest.approx(0.3)


def test_cold_track_looks_are_a_target_apart_and_a_second_after_a_job_result():
    assert cold.track_delay(target=6.0, initial=1.0, maximum=60.0) == 6.0
    assert cold.track_delay(target=6.0, initial=1.0, maximum=4.0) == 4.0
    assert cold.track_delay(target=0.2, initial=1.0, maximum=60.0) == 1.0
    assert cold.track_delay(target=6.0, initial=1.0, maximum=60.0, from_job_result=True) == 1.0


def test_one_cold_look_in_three_asks_the_job_result():
    asks = [cold.asks_job_result(n) for n in range(9)]
    assert asks == [False, False, True] * 3


def test_a_cold_site_sees_each_jobs_end_no_later_than_the_official_client():
    # Through the pipeline: a fresh site, one generation, each job length; the look that
    # first finds the track comes no later than the official client's job result saying done.
    for job in (0.5, 2.0, 7.5, 21.0, 44.0, 90.0):
        env = Env(policy="learned")
        gid = env.submitted()
        env.clock.t = START
        while True:
            gen = env.gen(gid)
            at = max(env.clock.t, gen.due) - START
            if at >= job:
                env.client.tracks["u1"] = [track("t9", status="preparing")]
            env.client.jobs.clear()
            env.client.jobs.append(track("t9", status="preparing") if at >= job else None)
            if env.step(gid) == "track-preparing":
                break
        found = env.clock.t - START
        official = next(t for t in official_times(20) if t >= job)
        assert found <= official + 1e-6, job


def batch_figures(seeds: int, shape: str = "wide", before: int = 0) -> tuple[dict, dict]:
    """Cold batches of 30 arriving together (after ``before`` batches of 30 on the site),
    through the pipeline on a simulated clock, against the official client on the same draws."""
    ours, theirs = [], []
    for seed in range(seeds):
        draws = draw(shape, 30 * (before + 1), seed, 5.0)
        draws.arrivals = [(i // 30) * 200.0 for i in range(len(draws.jobs))]
        outcomes, _ = run_pipeline("learned", draws, seed=seed, lengths=False)
        ours += outcomes[-30:]
        theirs += run_client("official", draws)[-30:]
    return summarise(ours), summarise(theirs)


def test_a_fresh_sites_first_batch_is_seen_no_later_than_by_the_official_client_for_fewer_requests():
    ours, official = batch_figures(6)
    assert ours["p95"] <= official["p95"]
    assert ours["requests_per_subtitle"] <= 0.98 * official["requests_per_subtitle"]


# -- the planner: kept per process, pooled prior ---------------------------------------------------

def test_pool_weighs_each_warm_site_alike_and_blend_fades_the_prior_out():
    a, b = learned(uniform(20, 30)), learned(uniform(60, 70), n=50)
    pooled = pool([a, b, None, learned(uniform(1, 2), n=3)])  # the cold ones are left out
    assert schedule.weight(pooled) == pytest.approx(2.0)
    assert schedule.cdf(pooled, 45.0) == pytest.approx(0.5, abs=0.01)
    assert schedule.weight(blend(None, pooled)) == pytest.approx(PRIOR_WEIGHT)
    own = learned(uniform(40, 41), n=10)
    mixed = blend(own, pooled)
    assert schedule.weight(mixed) == pytest.approx(PRIOR_WEIGHT)
    assert blend(learned(uniform(40, 41), n=200), pooled) == learned(uniform(40, 41), n=200)
    assert moved(a, a) == 0.0 and moved(a, b) == pytest.approx(1.0) and moved(None, a) == 1.0


def test_a_new_site_plans_from_the_other_sites_from_its_first_request():
    env = with_settings(Env(policy="learned"), poll_max=60.0)
    env.pipeline.planner = Planner(sites=lambda: ["", "shop"])
    for seconds in random.Random(3).choices(range(40, 50), k=200):
        env.store.record_timing("shop", schedule.READY, float(seconds), schedule.DECAY)
    gid = env.submitted()
    assert env.delay(gid) >= 30  # the first look where the other site's tracks become ready
    lonely = Env(policy="learned")  # no other site: the cold schedule's first look
    assert lonely.delay(lonely.submitted()) == pytest.approx(1.0)


def warm_site(env: Env, n: int = 256) -> None:
    rng = random.Random(7)
    for _ in range(n):
        job, prep = rng.uniform(20, 90), rng.uniform(0, 30)
        env.store.record_timing("", schedule.READY, job + prep, schedule.DECAY)
        env.store.record_timing_point("", unseen.encode((round(job, 1), round(job + prep, 1))), unseen.KEEP)


def test_the_price_is_found_once_per_process_until_enough_new_points():
    env = with_settings(Env(policy="learned"), poll_max=60.0)
    warm_site(env)
    planner = Planner()
    env.client.tracks["u1"] = []
    for i in range(40):  # each look builds a new Pipeline, as tasks.py does, sharing the runtime's planner
        env.pipeline = type(env.pipeline)(env.settings, env.store, lambda site: env.client, env.notified.append,
                                          rng=lambda: 1.0, planner=planner)
        gid = env.submitted(rid=f"r{i}", upload=f"u{i}")
        for _ in range(3):
            env.step(gid)
    assert planner.price_computations == 1
    for _ in range(unseen.RECALIBRATE):  # new generations end: the price is found again, once
        env.store.record_timing_point("", unseen.encode((50.0, 60.0)), unseen.KEEP)
    gid = env.submitted(rid="late", upload="u-late")
    env.step(gid)
    env.step(gid)
    assert planner.price_computations == 2
