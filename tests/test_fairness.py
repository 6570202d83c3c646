"""Fairness on Redis itself: the old shared schedule still drains, broken keys are refused,
an idle claim stays cheap, and bench/fairness.py's scenarios hold at a small scale.

The rules both stores share (sites, submit share, moves, repair, counts) are in
tests/test_store_contract.py.
"""

from __future__ import annotations

import uuid

import pytest
import redis

from bench.fairness import run_scenario
from subtitle_tasks.local_redis import LocalRedis, RedisNotAvailable
from subtitle_tasks.state import JOB, OUTCOME_READY, SUBMIT, RedisStore


@pytest.fixture(scope="module")
def server():
    try:
        local = LocalRedis().start()
    except RedisNotAvailable as exc:
        pytest.skip(str(exc))
    yield local
    local.close()


@pytest.fixture
def client(server):
    connection = redis.Redis.from_url(server.url)
    yield connection
    connection.flushdb()
    connection.close()


@pytest.fixture
def store(client):
    return RedisStore(client, prefix=f"fair-{uuid.uuid4().hex[:8]}")


def new(store: RedisStore, tag: str, site: str = "") -> str:
    return store.create_request(request_id=f"r-{tag}", generation_id=f"g-{tag}", upload_id=tag, language_code="en",
                                name=None, environment=None, on_ready=[], on_error=[], ttl=600, site=site
                                ).generation_id


def file_as_before(store: RedisStore, gid: str) -> None:
    """Move a generation's entry to the shared P:due, where versions before per-site schedules kept it."""
    client, site = store.client, store.load_generation(gid).site
    for key in store.schedule_keys(site):
        score = client.zscore(key, gid)
        if score is not None:
            client.zrem(key, gid)
            client.zadd(f"{store.prefix}:due", {gid: score})
    client.delete(f"{store.prefix}:sites")


# -- migration ------------------------------------------------------------------------

def test_entries_in_the_old_shared_schedule_are_handed_out_and_move_to_their_own_set(store, client):
    default_submit, named_submit, named_poll, named_done = (
        new(store, "d"), new(store, "s", site="b"), new(store, "p", site="b"), new(store, "x", site="b"))
    store.advance(named_poll, 0, phase=JOB, job_id="j")
    for gid in (default_submit, named_submit, named_poll, named_done):
        file_as_before(store, gid)
    # P:due is the default site's poll set: every old entry counts, and repair sees it scheduled.
    assert store.scheduled_by_site() == {"": {"submit": 0, "poll": 4}}
    assert store.repair_orphans() == 0
    assert sorted(store.claim_due(60, 10)) == sorted(
        [(default_submit, SUBMIT), (named_submit, SUBMIT), (named_poll, JOB), (named_done, SUBMIT)])

    # Each moves to its own set at its next step; an ended one leaves P:due.
    store.advance(default_submit, 0, posted_at=1.0)
    store.advance(named_submit, 0, posted_at=1.0)
    store.advance(named_poll, 0)
    store.finish(named_done, OUTCOME_READY, {})
    assert client.zcard(f"{store.prefix}:due") == 0
    assert store.scheduled_by_site() == {"": {"submit": 1, "poll": 0}, "b": {"submit": 1, "poll": 1}}
    assert client.smembers(f"{store.prefix}:sites") == {b"b"}
    assert sorted(g for g, _ in store.claim_due(60, 10)) == sorted([default_submit, named_submit, named_poll])


# -- refusals: check before the first write -------------------------------------------

@pytest.mark.parametrize("site, key", [("", "submit"), ("", "due"), ("b", "submit:b"), ("b", "due:b"),
                                       ("b", "sites")])
def test_create_refuses_a_broken_schedule_key_and_writes_nothing(store, client, site, key):
    client.set(f"{store.prefix}:{key}", "not a schedule")
    before = client.dbsize()
    with pytest.raises(redis.exceptions.ResponseError, match="holds a string"):
        new(store, "broken", site=site)
    assert client.dbsize() == before
    assert store.load_request("r-broken") is None


def test_advance_refuses_a_broken_target_set_and_leaves_the_generation_as_it_was(store, client):
    gid = new(store, "g", site="b")
    before = client.hgetall(f"{store.prefix}:gen:{gid}")
    client.set(f"{store.prefix}:due:b", "not a schedule")
    with pytest.raises(redis.exceptions.ResponseError, match="holds a string"):
        store.advance(gid, 0, phase=JOB, job_id="j")
    assert client.hgetall(f"{store.prefix}:gen:{gid}") == before
    assert client.zscore(f"{store.prefix}:submit:b", gid) is not None


# -- cost -------------------------------------------------------------------------------

def test_an_idle_claim_reads_two_sets_per_site_and_no_generation(store, client):
    for site in ("", "a", "b"):
        for i in range(50):
            store.advance(new(store, f"{site}{i}", site=site), 600)  # waiting, not due
    client.config_resetstat()
    assert store.claim_due(60, 500, 55, 3.0) == []
    stats = client.info("commandstats")
    assert stats["cmdstat_zrangebyscore"]["calls"] == 6
    assert not {"cmdstat_hget", "cmdstat_zadd", "cmdstat_zrem", "cmdstat_incr"} & set(stats)


# -- bench/fairness.py at a small scale -------------------------------------------------

@pytest.mark.parametrize("scenario", ["site", "submit", "poll"])
def test_a_late_step_waits_at_most_its_sites_window_where_a_single_fifo_waits_for_the_backlog(server, scenario):
    bench_client = redis.Redis.from_url(server.url, db=1)  # run_scenario flushes its database
    try:
        result = run_scenario(bench_client, f"bench-{scenario}", scenario, 300, pace=20, window=3.0,
                              interval=1.0, batch=500, max_claims=200)
    finally:
        bench_client.close()
    ours, fifo = result["per-site"], result["single FIFO"]
    # Another site's step: the next claim. The site's own: within its window (3 claims).
    assert ours["claims_until_handed_out"] == (1 if scenario == "site" else 3)
    assert ours["steps_handed_out_before"] == 0
    assert fifo["claims_until_handed_out"] == 3 * -(-(300 - 20 + 1) // 20)  # every window until the backlog is out
    assert ours["max_steps_per_site_per_window"] <= 20 and fifo["max_steps_per_site_per_window"] <= 20


def test_through_a_real_fleet_a_lone_request_waits_behind_seconds_of_another_sites_backlog_not_its_queue(tmp_path):
    # Site A asks for 300 subtitles, site B (own token, own simulator) for one, 8 s later.
    # The step queue holds two dispatch intervals of what the fleet drains (at least
    # ROOM_FLOOR steps), so few of A's steps are ahead of B's submit in the broker's FIFO;
    # with the queue bounded by MAX_BACKLOG messages alone, 65 of A's POSTs came first.
    from bench.fleet import DEFAULTS, UNSCALED, run_fairness
    from subtitle_tasks.dispatcher import ROOM_FLOOR

    try:
        local = LocalRedis().start()
    except RedisNotAvailable as exc:
        pytest.skip(str(exc))
    try:
        fair = run_fairness(local.url, tmp_path, a_requests=300, b_requests=1, lead=8.0,
                            overrides={**{k: repr(v) for k, v in DEFAULTS.items()}, **UNSCALED})
    finally:
        local.close()
    assert len(fair["behind"]) == 1 and fair["a_posted_meanwhile"] > 0
    assert fair["behind"][0]["a_posts_between"] <= 2 * ROOM_FLOOR
