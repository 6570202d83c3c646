"""The learned poll schedule (schedule.py): pure functions, simulated time, no sleeping."""

from __future__ import annotations

import itertools
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from subtitle_tasks import schedule, unseen
from subtitle_tasks.backoff import capped_exponential
from tests.test_pipeline_unit import POLL_INITIAL, START, Env, job_failed, track
from tests.test_unseen import bimodal

ONE = lambda: 1.0  # noqa: E731  (a draw that takes no jitter off)


def learned(draws, n: int = 300, seed: int = 1, decay: float = schedule.DECAY) -> list[float]:
    rng = random.Random(seed)
    stats = None
    for _ in range(n):
        stats = schedule.update(stats, draws(rng), decay)
    return stats


def uniform(low: float, high: float):
    return lambda rng: rng.uniform(low, high)


TARGET = 6.0  # the pipeline's default target (6.5 s) less half a 1 s dispatcher tick


def times(stats, target: float = TARGET, initial: float = 1.0, maximum: float = 60.0, horizon: float = 600.0):
    return schedule.poll_times(stats, target=target, initial=initial, maximum=maximum, horizon=horizon)


def late_share(stats, polls: list[float], target: float, rng: random.Random, n: int = 20000) -> float:
    """The share of durations drawn from ``stats`` that ``polls`` see later than ``target``."""
    late = 0
    for _ in range(n):
        ready = schedule.quantile(stats, rng.random())
        seen = next((t for t in polls if t >= ready), math.inf)
        late += seen - ready > target
    return late / n


# -- the histogram ------------------------------------------------------------------------

@given(st.floats(min_value=0, max_value=1e6, allow_nan=False))
def test_a_duration_falls_in_the_bucket_whose_edges_hold_it(seconds):
    index = schedule.bucket_of(seconds)
    assert 0 <= index < schedule.BUCKETS
    assert schedule.lower_edge(index) <= seconds
    assert seconds < schedule.upper_edge(index) or index == schedule.BUCKETS - 1


def test_buckets_cover_sub_second_to_past_any_deadline():
    assert schedule.bucket_of(0.0) == schedule.bucket_of(0.49) == 0
    assert schedule.bucket_of(-3.0) == schedule.bucket_of(math.nan) == 0
    assert schedule.lower_edge(schedule.BUCKETS - 1) > 2 * 7200  # the default deadline is 2 h
    assert schedule.bucket_of(1e9) == schedule.BUCKETS - 1


def test_update_decays_every_count_then_adds_one():
    stats = schedule.update(None, 10.0, decay=0.5)
    stats = schedule.update(stats, 10.0, decay=0.5)
    stats = schedule.update(stats, 100.0, decay=0.5)
    assert stats[schedule.bucket_of(10.0)] == 0.75
    assert stats[schedule.bucket_of(100.0)] == 1.0
    assert schedule.weight(stats) == 1.75


def test_update_drops_what_has_decayed_to_nothing_and_ignores_impossible_durations():
    stats = schedule.update(None, 5.0, decay=0.5)
    for _ in range(10):
        stats = schedule.update(stats, 50.0, decay=0.5)
    assert stats[schedule.bucket_of(5.0)] == 0.0
    for bad in (-1.0, math.nan, math.inf):
        assert schedule.update(stats, bad) == stats
    with pytest.raises(ValueError):
        schedule.update(stats, 1.0, decay=0.0)


def test_the_stored_form_round_trips_and_stays_short():
    stats = learned(uniform(20, 90))
    text = schedule.encode(stats)
    assert len(text) < 300 and not text.endswith(",0")
    assert schedule.decode(text) == pytest.approx(stats, rel=1e-3)
    assert schedule.decode(text.encode()) == schedule.decode(text)
    assert schedule.decode(None) is None and schedule.decode("") is None
    assert schedule.decode(",".join(["1"] * (schedule.BUCKETS + 1))) is None  # another layout: start over
    assert schedule.decode("1,x") is None


def test_decay_follows_a_change():
    stats = learned(uniform(20, 30), n=300)
    assert 20 <= schedule.quantile(stats, 0.5) <= 31
    rng = random.Random(2)
    for _ in range(300):  # jobs now take three times as long
        stats = schedule.update(stats, rng.uniform(60, 70))
    assert 58 <= schedule.quantile(stats, 0.5) <= 71
    assert schedule.cdf(stats, 31) < 0.06  # what is left of the old: 0.99 ** 300 ~ 5 %


def test_quantile_and_cdf_agree():
    stats = learned(uniform(20, 90))
    for p in (0.05, 0.2, 0.5, 0.8, 0.95):
        assert schedule.cdf(stats, schedule.quantile(stats, p)) == pytest.approx(p, abs=1e-9)
    assert schedule.quantile(None, 0.5) == 0.0 and schedule.cdf(None, 10) == 0.0


def test_an_interval_is_spread_over_the_buckets_it_overlaps():
    pairs = schedule.spread(20.0, 40.0)
    assert sum(w for _, w in pairs) == pytest.approx(1.0)
    assert [i for i, _ in pairs] == list(range(schedule.bucket_of(20.0), schedule.bucket_of(40.0) + 1))
    for index, share in pairs:  # in proportion to the overlap
        overlap = min(40.0, schedule.upper_edge(index)) - max(20.0, schedule.lower_edge(index))
        assert share == pytest.approx(overlap / 20.0)
    assert schedule.spread(30.0, 30.0) == [(schedule.bucket_of(30.0), 1.0)]
    assert schedule.spread(30.0, 10.0) == [(schedule.bucket_of(30.0), 1.0)]  # an empty interval: a point
    assert sum(w for _, w in schedule.spread(100.0, 1e9)) == pytest.approx(1.0)  # past the last edge
    stats = schedule.update(None, 20.0, until=40.0)
    assert schedule.weight(stats) == pytest.approx(1.0)
    assert schedule.cdf(stats, 30.0) == pytest.approx(0.5, abs=0.02)  # even inside the interval, not a spike


def test_spreading_keeps_the_stretch_after_a_fixed_poll_from_looking_empty():
    # Every generation polled at the same times: the midpoints would pile each gap's
    # mass on one spot, and the plan would then see nothing finishing just after a poll.
    rng = random.Random(3)
    polls = [20.0, 30.0, 40.0, 50.0]
    stats = None
    for _ in range(400):
        ready = rng.uniform(20, 50)
        seen = next(t for t in polls if t >= ready)
        stats = schedule.update(stats, seen - 10.0, until=seen)
    for low in (31.0, 41.0):
        assert schedule.cdf(stats, low + 4.0) - schedule.cdf(stats, low) > 0.08  # about 4 s of 30: 0.13


def test_an_observation_is_the_midpoint_of_what_the_polls_bound():
    assert schedule.observed(10.0, 14.0) == 12.0
    assert schedule.observed(0.0, 3.0) == 1.5
    assert schedule.observed(-2.0, 3.0) == 1.5  # never before the phase began
    assert schedule.observed(5.0, 4.0) == 4.0   # a poll cannot see it done before it was running


# -- cold start -----------------------------------------------------------------------------

def test_cold_start_is_the_capped_exponential_schedule():
    thin = learned(uniform(20, 30), n=5)
    assert not schedule.is_warm(thin)
    for stats in (None, thin):
        for attempt in range(8):
            for draw in (0.0, 0.3, 1.0):
                got = schedule.next_delay(stats, 123.0, attempt, target=TARGET, initial=1.0, maximum=60.0,
                                          rng=lambda draw=draw: draw)
                assert got == capped_exponential(attempt, 1.0, 60.0, rng=lambda draw=draw: draw)
    # A caller may name its own first delay (the pipeline's first job poll: poll_initial).
    assert schedule.next_delay(None, 0.0, 0, target=TARGET, initial=1.0, maximum=60.0, cold=1.0) == 1.0


def test_warm_after_enough_observations():
    assert schedule.is_warm(learned(uniform(20, 30), n=40))
    assert not schedule.is_warm(learned(uniform(20, 30), n=30))  # decayed: 26 observations


# -- where the polls go -------------------------------------------------------------------------

def test_the_first_poll_comes_near_the_low_end_of_what_jobs_take():
    stats = learned(uniform(20, 90))
    first = times(stats)[0]
    assert schedule.quantile(stats, 0.0) <= first <= schedule.quantile(stats, 0.2)
    assert first >= 20 - 20 * (schedule.RATIO - 1)  # not before any job has ever finished (bucket width)


def test_polls_go_where_jobs_finish_and_skip_where_none_do():
    stats = learned(lambda rng: rng.uniform(15, 25) if rng.random() < 0.6 else rng.uniform(60, 90))
    polls = times(stats)
    assert polls[0] < 25
    assert not [t for t in polls if 27 < t < 58]  # nothing finishes between the two modes
    assert len([t for t in polls if 58 <= t <= 92]) >= 4  # dense where the second mode finishes


def test_past_the_tail_the_gaps_grow_geometrically_up_to_the_maximum():
    stats = learned(uniform(20, 30))
    polls = times(stats, maximum=60.0, horizon=1000)
    tail = [t for t in polls if t > 31 * schedule.RATIO]
    gaps = [b - a for a, b in itertools.pairwise(tail)]
    assert gaps[0] == pytest.approx((schedule.GROWTH - 1) * tail[0], rel=1e-6)
    assert all(b >= a - 1e-9 for a, b in itertools.pairwise(gaps))
    assert gaps[-1] == 60.0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=5000), min_size=11, max_size=60),
       st.floats(min_value=0.05, max_value=5), st.floats(min_value=0.1, max_value=20))
def test_gaps_are_never_below_the_minimum_nor_above_the_maximum(durations, initial, target):
    stats = None
    for d in durations:
        stats = schedule.update(stats, d)
    maximum = 60 * initial
    polls = [0.0, *times(stats, target=target * initial, initial=initial, maximum=maximum, horizon=6000 * initial)]
    gaps = [b - a for a, b in itertools.pairwise(polls)]
    assert gaps and min(gaps) >= initial - 1e-9 and max(gaps) <= maximum + 1e-9


@settings(max_examples=80, deadline=None)
@given(st.floats(min_value=0, max_value=500), st.integers(min_value=0, max_value=30),
       st.floats(min_value=0, max_value=100), st.booleans(), st.floats(min_value=0, max_value=1))
def test_never_past_the_deadline(elapsed, attempt, remaining, warm, draw):
    stats = learned(uniform(20, 90)) if warm else None
    delay = schedule.next_delay(stats, elapsed, attempt, target=TARGET, initial=1.0, maximum=60.0,
                                remaining=remaining, rng=lambda: draw)
    assert 0 <= delay <= remaining


def test_jitter_only_brings_a_poll_forward_by_at_most_a_tenth():
    stats = learned(uniform(20, 90))
    for elapsed in (0.0, 25.0, 50.0, 200.0):
        planned = schedule.next_delay(stats, elapsed, 0, target=TARGET, initial=1.0, maximum=60.0, rng=ONE)
        early = schedule.next_delay(stats, elapsed, 0, target=TARGET, initial=1.0, maximum=60.0, rng=lambda: 0.0)
        assert min(planned, 1.0) <= early <= planned
        assert early >= (1 - schedule.JITTER) * planned - 1e-9


def test_known_running_earlier_means_a_poll_no_later():
    # A job result shows the track as it was when the job ended: known not ready then,
    # it may be ready now, so the next poll comes sooner than if it were seen preparing now.
    stats = learned(uniform(0, 30))
    now = schedule.next_delay(stats, 6.0, 0, target=3.0, initial=1.0, maximum=60.0, rng=ONE)
    earlier = schedule.next_delay(stats, 6.0, 0, target=3.0, initial=1.0, maximum=60.0, rng=ONE, running_at=0.0)
    assert 1.0 <= earlier <= now
    # past everything observed and not known running there: look again at once
    assert schedule.next_delay(stats, 80.0, 0, target=3.0, initial=1.0, maximum=60.0, rng=ONE,
                               running_at=0.0) == 1.0


def test_the_policy_scales_with_its_settings():
    slow = times(learned(uniform(20, 90)), target=6.0, initial=1.0, maximum=60.0, horizon=600)
    fast = times(learned(lambda rng: rng.uniform(2, 9)), target=0.6, initial=0.1, maximum=6.0, horizon=60)
    assert len(fast) == pytest.approx(len(slow), abs=3)


def test_the_plan_sees_all_but_five_percent_within_the_target():
    rng = random.Random(11)
    for stats in (learned(uniform(20, 120)), learned(uniform(40, 50)),
                  learned(lambda r: r.uniform(15, 45) if r.random() < 0.6 else r.uniform(60, 110))):
        polls = times(stats)
        planned = schedule.planned_late_share(stats, target=TARGET, initial=1.0, maximum=60.0)
        assert 0.0 <= planned <= schedule.late_allowance(schedule.weight(stats)) <= 1 - schedule.QUANTILE
        assert late_share(stats, polls, TARGET, rng) <= 1 - schedule.QUANTILE + 0.01


def test_a_looser_target_spends_fewer_polls():
    stats = learned(uniform(20, 120))
    counts = [len(times(stats, target=target, horizon=130)) for target in (2.0, 4.0, 8.0, 16.0)]
    assert counts == sorted(counts, reverse=True) and counts[0] > 2 * counts[-1]


def test_an_upload_s_length_falls_in_a_band_per_doubling():
    assert schedule.duration_band(30.0) == 0 and schedule.duration_band(59.9) == 0
    assert schedule.duration_band(60.0) == 1 and schedule.duration_band(119.0) == 1
    assert schedule.duration_band(120.0) == 2 and schedule.duration_band(3 * 3600.0) == schedule.BANDS - 1
    for nothing in (None, 0, -5.0, math.nan, math.inf, True, "60"):
        assert schedule.duration_band(nothing) is None
    assert schedule.timing_name(None) == schedule.READY and schedule.timing_name(3) == "ready@3"


def test_a_band_is_used_only_when_the_data_show_it_narrower_than_the_site():
    whole = learned(uniform(15, 120), n=500)
    assert schedule.informative(learned(uniform(30, 50), n=60), whole)  # the length predicts
    assert not schedule.informative(learned(uniform(15, 120), n=60, seed=2), whole)  # it does not
    assert not schedule.informative(learned(uniform(30, 50), n=20), whole)  # too few to tell
    assert not schedule.informative(learned(uniform(30, 50), n=60), None)
    # A band whose middle is elsewhere but as wide (the site drifted) is not evidence.
    assert not schedule.informative(learned(uniform(60, 160), n=60), whole)


# -- the goal, in simulated time ------------------------------------------------------------------

def official(job: float, prep: float) -> tuple[int, float]:
    """The JS client: 1 s, 2 s, 3 s ... between job-result GETs, then the same for the track list."""
    t, k, polls = 0.0, 0, 0
    while t < job:
        k += 1
        t += k
        polls += 1
    k = 0
    while t < job + prep:
        k += 1
        t += k
        polls += 1
    return polls, t - (job + prep)


def ours(stats, ready: float, rng, phase: float) -> tuple[int, float, float, float]:
    """Polls on the learned schedule until one sees the track ready, as the pipeline places
    them: one snapshot of the track list before the POST, then looks at the list; returns
    requests, delay and the interval the last two looks bound.

    A step due at t runs at the next tick of a 1 s dispatcher (ticks at ``phase`` + whole
    seconds), as SUBTITLE_TASKS_DISPATCH_INTERVAL's default hands them out.
    """
    def tick(x: float) -> float:
        return phase + math.ceil(x - phase - 1e-9)

    requests, t, last = 1, 0.0, 0.0
    while True:
        t = tick(t + schedule.next_delay(stats, t, requests - 1, target=TARGET, initial=1.0, maximum=60.0, rng=rng,
                                         cold=1.0 if requests == 1 else None))
        requests += 1
        if t >= ready:
            return requests, t - ready, last, t
        last = t


def goal(draws, n: int = 700, warmup: int = 200, seed: int = 7) -> tuple[float, float, float, float]:
    rng = random.Random(seed)
    jitter = random.Random(seed + 1).random
    stats = None
    mine, theirs = [], []
    for i in range(n):
        job, prep = draws(rng)
        requests, delay, low, high = ours(stats, job + prep, jitter, rng.random())
        stats = schedule.update(stats, low, until=high)
        if i >= warmup:
            mine.append((requests, delay))
            theirs.append(official(job, prep))

    def p95(rows):
        delays = sorted(d for _, d in rows)
        return delays[math.ceil(0.95 * len(delays)) - 1]

    return (sum(p for p, _ in mine) / len(mine), p95(mine), sum(p for p, _ in theirs) / len(theirs), p95(theirs))


def test_goal_half_the_requests_at_no_worse_p95_on_narrow_jobs():
    requests, p95, official_requests, official_p95 = goal(lambda rng: (rng.uniform(40, 50), rng.uniform(2, 6)))
    assert requests <= 0.5 * official_requests
    assert p95 <= official_p95


def test_on_the_issues_wide_jobs_p95_holds_at_about_sixty_percent_of_the_requests():
    # Jobs 20-90 s, tracks 0-30 s more: ready anywhere in 20-120 s. Even a schedule that
    # knew the distribution exactly needs about half the official requests at its p95
    # (bench/README.md), so 0.5x is out of reach here; about 0.6x is what this holds
    # (0.63x since plans keep a margin for their sample's size, schedule.late_allowance).
    requests, p95, official_requests, official_p95 = goal(lambda rng: (rng.uniform(20, 90), rng.uniform(0, 30)))
    assert requests <= 0.65 * official_requests
    assert p95 <= official_p95


# -- the pipeline learns and uses it (MemoryStore on a fake clock, scripted API) --------------


def with_settings(env: Env, **changes) -> Env:
    env.pipeline.settings = env.settings = type(env.settings)(**{**env.settings.__dict__, **changes})
    return env


def warm(env: Env, low: float, high: float, n: int = 40, site: str = "") -> None:
    rng = random.Random(5)
    for _ in range(n):
        env.store.record_timing(site, schedule.READY, rng.uniform(low, high), schedule.DECAY)


def test_a_generation_records_the_time_from_its_post_to_its_track_being_ready():
    env = Env(policy="learned")
    gid = env.submitted()
    assert env.gen(gid).phase_clock == (START, 0.0)
    env.client.jobs.append(track("t9", status="preparing"))
    assert env.step(gid) == "job-pending"  # at 1 s (cold: the official client's times): not listed
    assert env.step(gid) == "job-pending"  # at 3 s: not listed
    assert env.gen(gid).phase_clock == (START, pytest.approx(3.0))
    assert env.client.count("job") == 0
    assert env.step(gid) == "track-preparing"  # at 6 s, the job result (one look in three): done
    assert env.client.count("job") == 1
    assert env.store.timing_stats("", schedule.READY) is None  # nothing learned until the track is ready
    # The clock runs on from the POST; the job result showed the track as the job left
    # it, so it is known not ready at the job's estimated end (4.5 s), and the next look
    # comes a second later, as the official client's does.
    assert env.gen(gid).phase_clock == (START, pytest.approx(4.5))
    assert env.delay(gid) == pytest.approx(POLL_INITIAL)
    env.client.tracks["u1"] = [track("t9", status="preparing")]
    assert env.step(gid) == "track-preparing"
    seen_preparing = env.gen(gid).phase_clock[1]
    assert seen_preparing == pytest.approx(env.clock.t - START)
    env.client.tracks["u1"] = [track("t9")]
    assert env.step(gid) == "ready"
    expected = schedule.update(None, seen_preparing, until=env.clock.t - START)
    assert env.store.timing_stats("", schedule.READY) == pytest.approx(expected, abs=1e-3)


def test_a_track_ready_at_a_cold_look_is_learned_between_the_looks():
    env = Env(policy="learned")
    gid = env.submitted()
    env.step(gid)  # at 1 s: not listed
    env.client.tracks["u1"] = [track("t9")]
    assert env.step(gid) == "ready"  # at 3 s, listed ready: ready somewhere in (1, 3]
    assert env.client.count("job") == 0
    expected = schedule.update(None, 1.0, until=3.0)
    assert env.store.timing_stats("", schedule.READY) == pytest.approx(expected, abs=1e-3)


def test_a_failed_job_teaches_nothing():
    # Learned durations are those of jobs that produce a track: a failure may come fast.
    env = Env(policy="learned")
    gid = env.submitted()
    env.client.jobs.append(job_failed())
    assert [env.step(gid) for _ in range(3)] == ["job-pending", "job-pending", "error"]  # the third asks the job
    assert env.store.timing_stats("", schedule.READY) is None


def test_warm_stats_move_the_first_poll_to_where_tracks_become_ready():
    env = with_settings(Env(policy="learned"), poll_max=60.0)
    warm(env, 40, 50)
    gid = env.submitted()
    assert 35 <= env.delay(gid) <= 50
    capped = Env(policy="learned")  # POLL_MAX 8: no wait is longer, the first one included
    warm(capped, 40, 50)
    assert capped.delay(capped.submitted()) == pytest.approx(8.0)
    cold = Env(policy="learned")
    assert cold.delay(cold.submitted()) == pytest.approx(1.0)  # poll_initial, as before learning


def test_a_warm_site_looks_in_the_track_list_and_finishes_without_the_job_result():
    env = with_settings(Env(policy="learned"), poll_max=60.0)
    warm(env, 40, 50)
    env.client.tracks["u1"] = [track("old", status="ready")]  # an Italian track from before: not ours
    gid = env.submitted()
    assert env.step(gid) == "job-pending"  # the list shows only the old track
    env.client.tracks["u1"].append(track("t9", status="preparing"))
    assert env.step(gid) == "track-preparing"
    assert env.gen(gid).track_id == "t9"
    env.client.tracks["u1"][1] = track("t9")
    assert env.step(gid) == "ready"
    assert env.client.count("job") == 0  # every look was one GET of the list
    assert env.client.count("tracks") == 4  # the snapshot before the POST and three looks
    assert env.notified == ["r1"]


def bimodal_site(env: Env, n: int = 256) -> None:
    """A site whose jobs take 15-25 s or 60-90 s, each track then ready within 20 s: its
    histogram and its points (unseen.py), as its generations would have left them."""
    for shown, ready in bimodal(n, seed=11):
        env.store.record_timing("", schedule.READY, ready, schedule.DECAY)
        env.store.record_timing_point("", unseen.encode((shown, ready)), unseen.KEEP)


def test_a_look_that_does_not_find_the_track_plans_from_the_generations_whose_track_showed_later():
    env = with_settings(Env(policy="learned"), poll_max=60.0)
    bimodal_site(env)
    gid = env.submitted()
    env.client.tracks["u1"] = []
    while env.clock.t - START < 30:
        assert env.step(gid) == "job-pending"
    looked_at = env.clock.t - START
    # Not listed after the short jobs' tracks have all shown: a long job, whose track shows
    # from 60 s. The histogram alone ("not ready yet") would look again within seconds.
    assert env.gen(gid).due - START >= 55
    stats = env.store.timing_stats("", schedule.READY)
    assert schedule.next_delay(stats, looked_at, 0, target=env.pipeline._poll_target(), initial=1.0, maximum=60.0,
                               rng=lambda: 1.0) < 15


def test_a_generation_keeps_when_its_track_showed_and_leaves_a_point_when_it_ends():
    env = with_settings(Env(policy="learned"), poll_max=60.0)
    warm(env, 40, 50)
    gid = env.submitted()
    env.client.tracks["u1"] = []
    assert env.step(gid) == "job-pending"
    first = env.clock.t - START
    env.client.tracks["u1"] = [track("t9", status="preparing")]
    assert env.step(gid) == "track-preparing"
    second = env.clock.t - START
    assert env.gen(gid).shown == pytest.approx((first, second), abs=1e-3)  # kept to the millisecond
    env.client.tracks["u1"] = [track("t9")]
    assert env.step(gid) == "ready"
    done = env.clock.t - START
    [kept] = unseen.decode(env.store.timing_points(""))
    assert first - 0.1 <= kept[0] <= second + 0.1 and second - 0.1 <= kept[1] <= done + 0.1


def test_a_process_finds_the_price_again_only_after_enough_new_points(monkeypatch):
    env = with_settings(Env(policy="learned"), poll_max=60.0)
    bimodal_site(env)
    replays = []
    real = unseen.price
    monkeypatch.setattr(unseen, "price", lambda *args, **kwargs: replays.append(1) or real(*args, **kwargs))
    for i in range(3):
        env.submitted(rid=f"r{i}", job_id=f"job-{i}", upload=f"u{i}")
    assert len(replays) == 1  # one replay serves every look while the points stay the same
    for _ in range(unseen.RECALIBRATE - 1):
        env.store.record_timing_point("", "20.0:30.0", unseen.KEEP)
    env.submitted(rid="r8", job_id="job-8", upload="u8")
    assert len(replays) == 1
    env.store.record_timing_point("", "20.0:30.0", unseen.KEEP)
    env.submitted(rid="r9", job_id="job-9", upload="u9")
    assert len(replays) == 2


def test_a_job_poll_reads_the_site_s_timing_once():
    env = with_settings(Env(policy="learned"), poll_max=60.0)
    warm(env, 40, 50)
    gid = env.submitted()
    reads = []
    real = env.store.timing_stats
    env.store.timing_stats = lambda site, phase: reads.append(phase) or real(site, phase)
    env.client.tracks["u1"] = []
    assert env.step(gid) == "job-pending"  # where to look and when next, from one read
    assert reads == [schedule.READY]
    reads.clear()
    env.client.tracks["u1"] = [track("t9", status="preparing")]
    assert env.step(gid) == "track-preparing"
    assert reads == [schedule.READY]


def test_a_ready_track_in_the_list_ends_the_job_phase_at_once():
    env = with_settings(Env(policy="learned"), poll_max=60.0)
    warm(env, 40, 50)
    gid = env.submitted()
    env.client.tracks["u1"] = [track("t9")]
    assert env.step(gid) == "ready"
    assert env.client.count("job") == 0


def test_past_what_was_observed_the_job_result_is_asked_as_it_alone_tells_a_failure():
    env = with_settings(Env(policy="learned"), poll_max=60.0)
    warm(env, 40, 50)
    gid = env.submitted()
    horizon = schedule.horizon(env.store.timing_stats("", schedule.READY))
    while env.gen(gid).due - START < horizon:
        assert env.step(gid) == "job-pending"  # nothing in the list yet
    assert env.client.count("job") == 0
    env.client.jobs.append(job_failed())
    assert env.step(gid) == "error"
    assert env.client.count("job") == 1
    assert env.gen(gid).result["code"] == "job_failed"


def test_a_request_that_gives_the_upload_s_length_is_learned_in_its_band_and_planned_from_it():
    env = with_settings(Env(policy="learned"), poll_max=60.0)
    warm(env, 15, 120, n=200)  # the site: anything from 15 s to 2 min
    band = schedule.duration_band(90.0)
    rng = random.Random(8)
    for _ in range(40):  # 1-2 min videos: 30-40 s
        env.store.record_timing("", schedule.timing_name(band), rng.uniform(30, 40), schedule.DECAY)
    gid = env.request(upload="u1")  # no length given
    assert env.gen(gid).duration_band is None
    hinted = env.store.create_request(request_id="r2", generation_id="g-r2", upload_id="u2", language_code="it-IT",
                                      name=None, environment=None, on_ready=[], on_error=[], ttl=3600.0,
                                      duration_band=band)
    assert env.gen(hinted.generation_id).duration_band == band
    env.client.posts.append("job-2")
    assert env.step(hinted.generation_id) == "submitted"
    assert 25 <= env.delay(hinted.generation_id) <= 40  # planned from its band: 30-40 s
    env.client.posts.append("job-1")
    assert env.step(gid) == "submitted"
    assert env.delay(gid) < 25  # planned from the site: it may be ready from 15 s
    env.client.tracks["u2"] = [track("t2", upload="u2")]
    before = schedule.weight(env.store.timing_stats("", schedule.timing_name(band)))
    assert env.step(hinted.generation_id) == "ready"
    assert schedule.weight(env.store.timing_stats("", schedule.timing_name(band))) == pytest.approx(
        before * schedule.DECAY + 1, rel=1e-3)  # learned in its band as well as the site's


def test_stats_are_per_site():
    env = Env(policy="learned")
    warm(env, 40, 50, site="blog")
    assert env.delay(env.submitted()) == pytest.approx(1.0)  # the default site knows nothing yet


def test_the_exponential_policy_ignores_what_was_learned():
    env = with_settings(Env(policy="learned"), poll_policy="exponential", poll_max=60.0)
    warm(env, 40, 50)
    gid = env.submitted()
    assert env.delay(gid) == pytest.approx(1.0)
    env.client.jobs.extend([None, None])
    env.step(gid)
    assert env.delay(gid) == pytest.approx(1.0)
    env.step(gid)
    assert env.delay(gid) == pytest.approx(2.0)
    assert env.client.count("job") == 2  # job results, as before learning
    env.client.jobs.append(track("t9"))
    env.step(gid)
    assert schedule.weight(env.store.timing_stats("", schedule.READY)) > 30  # it still learns, for a switch back


def test_after_a_job_result_the_track_is_polled_from_the_learned_time_since_the_post():
    env = with_settings(Env(policy="learned"), poll_max=60.0)
    warm(env, 20, 25)
    gid = env.submitted()
    # Past the learned horizon (25 s and a bucket) the job result is asked; this one
    # shows the track preparing as the job left it.
    env.store.advance(gid, 0, phase_clock=(START - 10.0, 0.0), attempts=2)
    env.client.jobs.append(track("t9", status="preparing"))
    env.clock.t = START + 30.0
    assert env.step(gid) == "track-preparing"
    assert env.client.count("job") == 1
    # Not ready when the job ended, somewhere after 0 s, and past the data: the cold
    # schedule looks at the track list a second later, as the official client would.
    assert env.delay(gid) == pytest.approx(POLL_INITIAL)


def test_the_track_phase_waits_for_where_the_site_s_tracks_become_ready():
    env = with_settings(Env(policy="learned"), poll_max=60.0)
    warm(env, 40, 50)
    gid = env.submitted()
    env.client.tracks["u1"] = [track("t9", status="preparing")]
    assert env.step(gid) == "track-preparing"
    first_look = env.clock.t - START
    due = env.gen(gid).due - START
    assert first_look < due <= 50 * schedule.RATIO  # the next look still inside what was observed


def test_a_generation_without_a_phase_clock_polls_on_the_cold_schedule():
    # Written by a version before learning: no clock, so no elapsed time to plan from.
    env = Env(policy="learned")
    warm(env, 40, 50)
    gid = env.submitted()
    env.store.advance(gid, 0, phase_clock=None)
    env.client.jobs.append(None)
    env.step(gid)
    assert env.gen(gid).phase_clock is None
    assert env.delay(gid) == pytest.approx(1.0)  # capped exponential, attempt 0
    assert env.client.count("job") == 1  # and the job result, as before learning
    env.client.jobs.append(track("t9", status="preparing"))
    assert env.step(gid) == "track-preparing"
    assert schedule.weight(env.store.timing_stats("", schedule.READY)) == pytest.approx(schedule.weight(
        learned(uniform(40, 50), n=40, seed=5)), rel=0.01)  # nothing recorded for it


def test_a_store_that_cannot_keep_timing_never_fails_a_step(caplog):
    env = Env(policy="learned")

    def broken(*args, **kwargs):
        raise RuntimeError("WRONGTYPE")

    env.store.record_timing = broken
    env.store.timing_stats = broken
    gid = env.submitted()
    env.client.tracks["u1"] = [track("t9")]
    assert env.step(gid) == "ready"
    assert "could not record a ready duration" in caplog.text
