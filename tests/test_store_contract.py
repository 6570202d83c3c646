"""One contract, two stores: RedisStore (real redis-server, its Lua scripts) and MemoryStore.

Each test runs against both. Redis times come from the server's clock, so a test
lets time pass through ``subject.wait`` (a real, short sleep for Redis; a jump of the
fake clock for MemoryStore) and compares times with a tolerance rather than exactly.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import redis

from subtitle_tasks.local_redis import LocalRedis, RedisNotAvailable
from subtitle_tasks.state import (
    DONE,
    FAILED,
    FINISHING,
    JOB,
    OUTCOME_ERROR,
    OUTCOME_READY,
    READY,
    SUBMIT,
    TRACK,
    WAITING,
    Created,
    RedisStore,
)
from subtitle_tasks.state.base import LISTPACK_VALUE_MAX, join_field, split_field
from subtitle_tasks.state.stub import MemoryStore

TOL = 0.5  # seconds: room for the real clock to move between Redis calls
RETENTION = 7 * 86400.0
ON_READY = [{"task": "app.ready", "args": ["x"], "kwargs": {}, "options": {}, "subtask_type": None, "immutable": False}]
ON_ERROR = [{"task": "app.error", "args": [], "kwargs": {"n": 1}, "options": {}, "subtask_type": None,
             "immutable": False}]
CANCELLED = {"code": "cancelled", "message": "cancelled by test"}


class FakeClock:
    def __init__(self, start: float = 1_700_000_000.0):
        self.t = start

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@dataclass
class Subject:
    kind: str
    store: object
    wait: Callable[[float], None]          # let this many seconds pass on the store's clock
    make: Callable[..., object]            # a fresh, empty store of the same kind
    drop_due: Callable[[object, str], None]  # lose a generation's schedule entry (a lost write)


@pytest.fixture(scope="module")
def contract_redis():
    try:
        server = LocalRedis().start()
    except RedisNotAvailable as exc:
        pytest.skip(str(exc))
    yield server
    server.close()


def _memory_subject():
    clock = FakeClock()

    def make(retention: float = RETENTION) -> MemoryStore:
        return MemoryStore(clock=clock, retention=retention)

    def drop_due(store: MemoryStore, gid: str) -> None:
        store._due.pop(gid)  # no public way to lose a write; reach in as a crash would

    return Subject("memory", make(), clock.advance, make, drop_due), lambda: None


def _redis_subject(server: LocalRedis):
    client = redis.Redis.from_url(server.url)
    prefixes: list[str] = []

    def make(retention: float = RETENTION) -> RedisStore:
        prefixes.append(f"contract-{uuid.uuid4().hex[:12]}")
        return RedisStore(client, prefix=prefixes[-1], retention=retention)

    def drop_due(store: RedisStore, gid: str) -> None:
        keys = store.schedule_keys(store.load_generation(gid).site)
        assert sum(client.zrem(key, gid) for key in keys) == 1

    def cleanup() -> None:
        for prefix in prefixes:
            for key in client.scan_iter(f"{prefix}:*"):
                client.delete(key)
        client.close()

    return Subject("redis", make(), time.sleep, make, drop_due), cleanup


@pytest.fixture(params=["memory", "redis"])
def subject(request) -> Subject:
    if request.param == "memory":
        made, cleanup = _memory_subject()
    else:
        made, cleanup = _redis_subject(request.getfixturevalue("contract_redis"))
    yield made
    cleanup()


@pytest.fixture
def store(subject):
    return subject.store


def new(store, rid: str | None = None, *, upload: str = "u1", lang: str = "it-IT", ttl: float = 600.0,
        env: str | None = None, name: str | None = "Italiano", gid: str | None = None, site: str = "") -> Created:
    return store.create_request(
        request_id=rid or uuid.uuid4().hex, generation_id=gid or uuid.uuid4().hex, upload_id=upload,
        language_code=lang, name=name, environment=env, on_ready=ON_READY, on_error=ON_ERROR, ttl=ttl, site=site,
    )


def claimed_ids(store, lease: float = 60.0, limit: int = 100) -> list[str]:
    return [gid for gid, _ in store.claim_due(lease, limit)]


# -- create_request ---------------------------------------------------------------------

def test_long_and_non_ascii_callbacks_round_trip_in_a_compact_hash(subject, store):
    on_ready = [{"task": "myproject.media.tasks.publish_subtitles_for_the_editors", "args": ["sous-titres é€😀" * 9]},
                {"task": "myproject.media.tasks.index", "args": [123456789]}]
    on_error = [{"task": "e", "args": []}]  # short: stored whole
    rid = uuid.uuid4().hex
    store.create_request(request_id=rid, generation_id=uuid.uuid4().hex, upload_id="u1", language_code="it",
                         name=None, environment=None, on_ready=on_ready, on_error=on_error, ttl=600)
    record = store.load_request(rid)
    assert (record.on_ready, record.on_error) == (on_ready, on_error)
    if subject.kind == "redis":
        # one long value would turn the whole hash into a hashtable, ~3x the memory
        assert store.client.object("encoding", f"{store.prefix}:req:{rid}") in (b"listpack", b"ziplist")


@pytest.mark.parametrize("value", ["", "short", "x" * 64, "x" * 65, "é" * 40, "a" + "😀" * 20, "€" * 100])
def test_split_field_parts_fit_and_join_back(value):
    parts = split_field("on_ready", value)
    assert all(len(part.encode()) <= LISTPACK_VALUE_MAX for part in parts.values())
    assert join_field(parts, "on_ready") == value
    assert (list(parts) == ["on_ready"]) == (len(value.encode()) <= LISTPACK_VALUE_MAX)
    assert join_field({}, "on_ready") is None


def test_new_request_starts_a_generation_due_now(store):
    created = new(store, "r1", gid="g1", upload="u1", lang="it-IT", ttl=600, env="staging", name="Italiano")
    assert created == Created("g1", joined=False, existed=False)

    req = store.load_request("r1")
    assert (req.id, req.generation_id, req.upload_id, req.language_code) == ("r1", "g1", "u1", "it-IT")
    assert req.state == WAITING and req.outcome is None and req.finished is None and req.error is None
    assert req.on_ready == ON_READY and req.on_error == ON_ERROR
    assert req.deadline == pytest.approx(req.created + 600, abs=1e-3)

    gen = store.load_generation("g1")
    assert (gen.upload_id, gen.language_code, gen.name, gen.environment) == ("u1", "it-IT", "Italiano", "staging")
    assert gen.phase == SUBMIT and gen.attempts == 0 and gen.errors == 0
    assert gen.subscribers == ("r1",)
    assert gen.created == pytest.approx(req.created, abs=1e-3)
    assert gen.deadline == pytest.approx(req.deadline, abs=1e-3)
    assert gen.due == pytest.approx(gen.created, abs=1e-3)
    assert gen.now >= gen.created and not gen.expired
    assert (gen.job_id, gen.track_id, gen.posted_at, gen.body_type, gen.outcome, gen.result) == (None,) * 6
    assert gen.known_tracks == ()
    assert store.counts() == {"scheduled": 1, "in_flight": 1, "finishing": 0}
    assert store.claim_due(60, 10) == [("g1", SUBMIT)]


def test_missing_name_and_environment_read_back_as_none(store):
    gid = new(store, name=None, env=None).generation_id
    gen = store.load_generation(gid)
    assert gen.name is None and gen.environment is None


def test_unknown_ids_read_as_none(store):
    assert store.load_request("nope") is None
    assert store.load_generation("nope") is None


def test_same_track_joins_the_generation_in_flight(store):
    first = new(store, "r1", upload="u1", lang="it-IT")
    second = new(store, "r2", upload="u1", lang="IT-it")  # the language matches case-insensitively
    assert second == Created(first.generation_id, joined=True, existed=False)
    gen = store.load_generation(first.generation_id)
    assert gen.subscribers == ("r1", "r2")
    assert gen.language_code == "it-IT"  # the first request's spelling is what gets sent
    assert store.load_request("r2").generation_id == first.generation_id
    assert store.counts() == {"scheduled": 1, "in_flight": 1, "finishing": 0}


def test_joining_a_generation_already_submitted(store):
    gid = new(store, "r1").generation_id
    store.claim_due(60, 10)
    store.advance(gid, 30, phase=JOB, job_id="job-1")
    assert new(store, "r2").generation_id == gid
    gen = store.load_generation(gid)
    assert gen.phase == JOB and gen.job_id == "job-1" and gen.subscribers == ("r1", "r2")


def test_other_upload_language_or_environment_start_their_own_generation(store):
    base = new(store, upload="u1", lang="it-IT").generation_id
    others = {new(store, upload="u2", lang="it-IT").generation_id,
              new(store, upload="u1", lang="en").generation_id,
              new(store, upload="u1", lang="it-IT", env="sandbox").generation_id}
    assert base not in others and len(others) == 3
    assert store.counts() == {"scheduled": 4, "in_flight": 4, "finishing": 0}


def test_join_extends_the_deadline_to_the_later_one(store):
    gid = new(store, "r1", ttl=100).generation_id
    new(store, "r2", ttl=500)
    later = store.load_request("r2").deadline
    assert store.load_generation(gid).deadline == pytest.approx(later, abs=1e-3)
    new(store, "r3", ttl=10)  # an earlier deadline never shortens the shared one
    assert store.load_generation(gid).deadline == pytest.approx(later, abs=1e-3)
    # each request keeps its own
    assert store.load_request("r1").deadline < later
    assert store.load_request("r3").deadline < later


def test_request_id_is_idempotent(store):
    first = new(store, "r1", gid="g1")
    again = new(store, "r1", gid="g2", upload="other-upload", ttl=5)
    assert again == Created("g1", joined=False, existed=True)
    assert store.load_generation("g2") is None
    assert store.load_generation("g1").subscribers == ("r1",)
    assert store.load_request("r1").upload_id == "u1"
    assert store.counts() == {"scheduled": 1, "in_flight": 1, "finishing": 0}
    assert first.generation_id == "g1"


def test_finished_generation_is_not_joined(store):
    gid = new(store, "r1", gid="g1").generation_id
    store.finish(gid, OUTCOME_READY, {"id": "t1"})
    created = new(store, "r2", gid="g2")
    assert created == Created("g2", joined=False, existed=False)
    assert store.load_generation("g2").phase == SUBMIT
    assert store.load_generation("g2").subscribers == ("r2",)
    # the finished one's request id stays idempotent
    assert new(store, "r1", gid="g3") == Created("g1", joined=False, existed=True)


# -- claim_due / release --------------------------------------------------------------

def test_claim_due_hands_out_each_due_item_once_until_its_lease_passes(subject, store):
    g1, g2 = new(store, upload="a").generation_id, new(store, upload="b").generation_id
    assert sorted(store.claim_due(0.3, 10)) == sorted([(g1, SUBMIT), (g2, SUBMIT)])
    assert store.claim_due(0.3, 10) == []
    subject.wait(0.4)
    assert sorted(claimed_ids(store, 0.3)) == sorted([g1, g2])
    assert store.claim_due(0.3, 10) == []


def test_claim_due_reports_the_phase_and_keeps_the_scheduled_time(store):
    gid = new(store).generation_id
    store.advance(gid, 0, phase=JOB, job_id="j")
    before = store.load_generation(gid).due
    assert store.claim_due(60, 10) == [(gid, JOB)]
    gen = store.load_generation(gid)
    # The lease lives in the schedule only: the step handed out must not look "not due".
    assert gen.due == pytest.approx(before, abs=1e-3)
    assert gen.due <= gen.now + 0.001


def test_claim_due_respects_limit_and_order(subject, store):
    late = new(store, upload="late").generation_id
    store.advance(late, 0.2)
    # ids in creation order sort the same way: ties (a fake clock) go by id, as in a zset
    early = [new(store, upload=f"e{i}", gid=f"e{i}").generation_id for i in range(3)]
    assert claimed_ids(store, limit=2) == early[:2]
    assert claimed_ids(store, limit=2) == early[2:]
    assert claimed_ids(store) == []
    subject.wait(0.3)
    assert claimed_ids(store) == [late]


def test_claim_due_paces_the_fleet_per_window(subject, store):
    gids = [new(store, upload=f"p{i}").generation_id for i in range(5)]
    # A pace of 3 per window, shared by every dispatcher: the rest stay due, unclaimed.
    first = store.claim_due(60, 10, 3, 0.4)
    second = store.claim_due(60, 10, 3, 0.4)
    assert len(first) == 3 and second == []
    assert store.counts()["scheduled"] == 5
    subject.wait(0.5)  # a new window
    rest = store.claim_due(60, 10, 3, 0.4)
    assert sorted(g for g, _ in first + rest) == sorted(gids)


def test_claim_due_without_pace_is_unlimited(store):
    for i in range(4):
        new(store, upload=f"n{i}")
    assert len(store.claim_due(60, 10)) == 4


def test_a_generation_not_yet_due_is_not_claimed(store):
    gid = new(store).generation_id
    assert store.advance(gid, 60)
    assert store.claim_due(60, 10) == []
    assert store.counts()["scheduled"] == 1


def test_release_makes_a_claimed_generation_due_now(store):
    gid = new(store).generation_id
    store.claim_due(60, 10)
    assert store.claim_due(60, 10) == []
    store.release(gid)
    gen = store.load_generation(gid)
    assert gen.due == pytest.approx(gen.now, abs=TOL)
    assert store.claim_due(60, 10) == [(gid, SUBMIT)]


def test_release_of_a_finished_generation_does_nothing(store):
    gid = new(store).generation_id
    store.finish(gid, OUTCOME_READY, {})
    store.release(gid)
    assert store.claim_due(60, 10) == []
    assert store.counts()["scheduled"] == 0
    assert store.load_generation(gid).phase == DONE


def test_the_fleet_counts_the_steps_it_published(store):
    assert store.published_count() == 0
    store.count_published(3)
    store.count_published(0)
    store.count_published(4)
    assert store.published_count() == 7


# -- fairness: sites, submissions and polls ---------------------------------------------

def submits(store, n: int, *, site: str = "", tag: str = "s") -> list[str]:
    """``n`` new generations on ``site``, due now in creation order (ids sort the same way)."""
    return [new(store, upload=f"{site}{tag}{i}", site=site, gid=f"{site}-{tag}{i:03d}").generation_id
            for i in range(n)]


def overdue_polls(store, n: int, *, site: str = "", tag: str = "p") -> list[str]:
    """``n`` generations on ``site`` already submitted, their next poll due now."""
    gids = submits(store, n, site=site, tag=tag)
    for gid in gids:
        assert store.advance(gid, 0, phase=JOB, job_id=f"job-{gid}")
    return gids


def sites_of(store, claimed) -> dict[str, int]:
    tally: dict[str, int] = {}
    for gid, _ in claimed:
        site = store.load_generation(gid).site
        tally[site] = tally.get(site, 0) + 1
    return tally


def test_claim_shares_the_room_equally_among_sites_with_due_work(store):
    for site in ("", "a", "b"):
        submits(store, 10, site=site)
    assert sites_of(store, store.claim_due(60, 9)) == {"": 3, "a": 3, "b": 3}


def test_room_a_site_cannot_use_goes_to_the_others(store):
    submits(store, 10, site="a")
    lone = submits(store, 1, site="b")
    claimed = store.claim_due(60, 8)
    assert sites_of(store, claimed) == {"a": 7, "b": 1}
    assert lone[0] in [gid for gid, _ in claimed]


def test_a_room_smaller_than_the_sites_rotates_among_them(store):
    for site in ("", "a", "b"):
        submits(store, 5, site=site)
    firsts = [store.claim_due(60, 1) for _ in range(3)]
    assert all(len(batch) == 1 for batch in firsts)
    assert sites_of(store, [entry for batch in firsts for entry in batch]) == {"": 1, "a": 1, "b": 1}


def test_each_site_is_paced_against_its_own_budget(subject, store):
    a, b = submits(store, 5, site="a"), submits(store, 5, site="b")
    first = store.claim_due(60, 100, 3, 0.4)
    assert sites_of(store, first) == {"a": 3, "b": 3}
    assert store.claim_due(60, 100, 3, 0.4) == []  # both spent their window
    c = submits(store, 1, site="c")
    assert store.claim_due(60, 100, 3, 0.4) == [(c[0], SUBMIT)]  # a third site's budget is untouched
    subject.wait(0.5)  # a new window for a and b
    rest = store.claim_due(60, 100, 3, 0.4)
    assert sorted(g for g, _ in first + rest) == sorted(a + b)


def test_a_backlog_on_one_site_does_not_hold_up_another_sites_request(store):
    backlog = submits(store, 40, site="a")
    assert len(store.claim_due(60, 100, 5, 60)) == 5  # a's whole window
    quiet = submits(store, 1, site="b")
    assert store.claim_due(60, 100, 5, 60) == [(quiet[0], SUBMIT)]
    assert store.counts()["scheduled"] == len(backlog) + 1


def test_submissions_get_half_of_a_sites_share_behind_overdue_polls(store):
    polls = overdue_polls(store, 6, site="a")
    fresh = submits(store, 6, site="a", tag="n")
    claimed = store.claim_due(60, 4)
    assert sorted(g for g, _ in claimed) == sorted(fresh[:2] + polls[:2])
    assert sorted(phase for _, phase in claimed) == [JOB, JOB, SUBMIT, SUBMIT]


def test_polls_are_not_starved_by_a_flood_of_submissions(store):
    fresh = submits(store, 20, site="a", tag="n")
    poll = overdue_polls(store, 1, site="a")  # comes due after all twenty
    claimed = store.claim_due(60, 4)
    assert poll[0] in [g for g, _ in claimed] and len(claimed) == 4
    assert {g for g, _ in claimed} <= set(fresh + poll)


def test_the_half_one_kind_cannot_use_goes_to_the_other(store):
    fresh = submits(store, 1)
    polls = overdue_polls(store, 6)
    claimed = store.claim_due(60, 4)
    assert sorted(g for g, _ in claimed) == sorted(fresh + polls[:3])  # the submits' unused half
    assert sorted(g for g, _ in store.claim_due(60, 4)) == polls[3:]
    only_submits = submits(store, 6, tag="x")
    assert sorted(g for g, _ in store.claim_due(60, 4)) == only_submits[:4]  # the polls' unused half


def test_an_odd_slot_alternates_between_submissions_and_polls(store):
    overdue_polls(store, 3)
    submits(store, 3, tag="n")
    phases = [phase for _ in range(4) for _, phase in store.claim_due(60, 1)]
    assert phases in ([SUBMIT, JOB, SUBMIT, JOB], [JOB, SUBMIT, JOB, SUBMIT])


def test_a_generation_moves_between_sets_as_its_phase_changes(subject, store):
    gid = new(store, "r1", site="b").generation_id
    assert store.scheduled_by_site() == {"b": {"submit": 1, "poll": 0}}
    store.advance(gid, 30, posted_at=1.0)  # still submitting
    assert store.scheduled_by_site() == {"b": {"submit": 1, "poll": 0}}
    store.advance(gid, 0, phase=JOB, job_id="j", posted_at=None)
    assert store.scheduled_by_site() == {"b": {"submit": 0, "poll": 1}}
    assert store.claim_due(60, 10) == [(gid, JOB)]  # leased where it now lives
    store.advance(gid, 0, phase=TRACK, track_id="t")
    assert store.scheduled_by_site() == {"b": {"submit": 0, "poll": 1}}
    store.finish(gid, OUTCOME_READY, {})
    assert store.scheduled_by_site() == {} and store.counts()["scheduled"] == 0
    cancelled = new(store, "r2", upload="u2", site="c").generation_id
    store.advance(cancelled, 0, phase=JOB, job_id="j2")
    store.cancel("r2", CANCELLED)
    assert store.scheduled_by_site() == {} and store.claim_due(60, 10) == []
    if subject.kind == "redis":  # no named site is left listed, no set left behind
        assert store.client.smembers(f"{store.prefix}:sites") == set()
        assert not any(store.client.exists(k) for site in ("b", "c") for k in store.schedule_keys(site))


def test_repair_puts_each_generation_back_in_its_own_set(subject, store):
    lost = [submits(store, 1, tag="d")[0], overdue_polls(store, 1, site="b")[0], submits(store, 1, site="c")[0]]
    kept = overdue_polls(store, 1, tag="k")[0]
    before = store.scheduled_by_site()
    for gid in lost:
        subject.drop_due(store, gid)
    assert store.counts()["scheduled"] == 1
    assert store.repair_orphans(batch=2) == 3
    assert store.scheduled_by_site() == before
    assert sorted(claimed_ids(store)) == sorted([*lost, kept])
    assert store.repair_orphans() == 0


def test_counts_and_sizes_cover_every_site_and_kind(store):
    submits(store, 2)
    overdue_polls(store, 1)
    submits(store, 1, site="a")
    overdue_polls(store, 3, site="b")
    assert store.scheduled_by_site() == {"": {"submit": 2, "poll": 1}, "a": {"submit": 1, "poll": 0},
                                         "b": {"submit": 0, "poll": 3}}
    assert store.counts() == {"scheduled": 7, "in_flight": 7, "finishing": 0}


# -- load_generation / advance ----------------------------------------------------------

def test_load_generation_reads_the_store_clock(subject, store):
    gid = new(store, ttl=0.3).generation_id
    first = store.load_generation(gid)
    assert not first.expired
    subject.wait(0.4)
    second = store.load_generation(gid)
    assert second.now - first.now >= 0.4 - 1e-3
    assert second.expired
    if subject.kind == "redis":
        assert second.now == pytest.approx(time.time(), abs=5)  # same machine, same clock


def test_advance_records_fields_and_the_next_due_time(store):
    gid = new(store).generation_id
    assert store.advance(gid, 30, phase=JOB, job_id="job-9", attempts=3, errors=2, posted_at=1234.5,
                         known_tracks=("t1", "t2"), body_type="upload_track", track_id="t3")
    gen = store.load_generation(gid)
    assert (gen.phase, gen.job_id, gen.attempts, gen.errors, gen.track_id) == (JOB, "job-9", 3, 2, "t3")
    assert gen.posted_at == 1234.5 and gen.known_tracks == ("t1", "t2") and gen.body_type == "upload_track"
    assert gen.due - gen.now == pytest.approx(30, abs=TOL)
    assert store.claim_due(60, 10) == []


def test_advance_clears_fields_set_to_none_or_empty(store):
    gid = new(store).generation_id
    store.advance(gid, 0, posted_at=99.0, known_tracks=("t1",), job_id="j")
    store.advance(gid, 0, posted_at=None, known_tracks=(), job_id=None)
    gen = store.load_generation(gid)
    assert gen.posted_at is None and gen.known_tracks == () and gen.job_id is None


def test_advance_with_a_negative_delay_is_due_now(store):
    gid = new(store).generation_id
    store.claim_due(60, 10)
    assert store.advance(gid, -5)
    gen = store.load_generation(gid)
    assert gen.due == pytest.approx(gen.now, abs=TOL)
    assert claimed_ids(store) == [gid]


def test_advance_after_finish_is_refused(store):
    gid = new(store).generation_id
    store.finish(gid, OUTCOME_ERROR, {"code": "x"})
    assert store.advance(gid, 0, phase=JOB, job_id="late") is False
    gen = store.load_generation(gid)
    assert gen.phase == DONE and gen.job_id is None
    assert store.counts()["scheduled"] == 0
    assert store.advance("no-such-generation", 0) is False


def test_advance_rejects_unknown_fields(store):
    gid = new(store).generation_id
    with pytest.raises(KeyError):
        store.advance(gid, 0, colour="blue")


# -- finish -----------------------------------------------------------------------------

def test_finish_moves_waiting_subscribers_to_finishing_once(store):
    gid = new(store, "r1").generation_id
    new(store, "r2")
    track = {"id": "t1", "type": "upload_track", "attributes": {"status": "ready"}}
    assert store.finish(gid, OUTCOME_READY, track) == ["r1", "r2"]
    for rid in ("r1", "r2"):
        req = store.load_request(rid)
        assert req.state == FINISHING and req.outcome == OUTCOME_READY and req.error is None
    gen = store.load_generation(gid)
    assert gen.phase == DONE and gen.outcome == OUTCOME_READY and gen.result == track
    assert store.counts() == {"scheduled": 0, "in_flight": 0, "finishing": 2}
    assert store.claim_due(60, 10) == []

    # Only the first finisher notifies; the first outcome stands.
    assert store.finish(gid, OUTCOME_ERROR, {"code": "late"}) == []
    assert store.load_generation(gid).result == track
    assert store.load_request("r1").outcome == OUTCOME_READY
    assert store.finish("no-such-generation", OUTCOME_READY, {}) == []


def test_concurrent_finishers_only_one_gets_the_subscribers(store):
    gid = new(store, "r1").generation_id
    new(store, "r2")
    start = threading.Barrier(8)
    results: list[list[str]] = []

    def finisher(n: int) -> None:
        start.wait()
        results.append(store.finish(gid, OUTCOME_READY, {"winner": n}))

    threads = [threading.Thread(target=finisher, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [r for r in results if r]
    assert len(results) == 8 and winners == [["r1", "r2"]]


def test_finish_skips_a_subscriber_that_was_cancelled(store):
    gid = new(store, "r1").generation_id
    new(store, "r2")
    store.cancel("r1", CANCELLED)
    assert store.finish(gid, OUTCOME_READY, {"id": "t"}) == ["r2"]
    r1 = store.load_request("r1")
    assert r1.outcome == OUTCOME_ERROR and r1.error == CANCELLED


# -- cancel -----------------------------------------------------------------------------

def test_cancel_unknown_request(store):
    assert store.cancel("nope", CANCELLED) == "unknown"


def test_cancel_one_of_two_subscribers_leaves_the_generation_running(store):
    gid = new(store, "r1").generation_id
    new(store, "r2")
    assert store.cancel("r1", CANCELLED) == WAITING
    r1 = store.load_request("r1")
    assert r1.state == FINISHING and r1.outcome == OUTCOME_ERROR and r1.error == CANCELLED
    assert store.load_request("r2").state == WAITING
    assert store.load_generation(gid).phase == SUBMIT
    assert store.counts() == {"scheduled": 1, "in_flight": 1, "finishing": 1}
    assert claimed_ids(store) == [gid]
    assert new(store, "r3").generation_id == gid  # still joinable


def test_cancel_of_the_last_waiting_subscriber_ends_the_generation(store):
    gid = new(store, "r1").generation_id
    new(store, "r2")
    store.cancel("r1", CANCELLED)
    assert store.cancel("r2", CANCELLED) == WAITING
    gen = store.load_generation(gid)
    assert gen.phase == DONE and gen.outcome == "cancelled"
    assert store.counts() == {"scheduled": 0, "in_flight": 0, "finishing": 2}
    assert store.claim_due(60, 10) == []
    assert store.advance(gid, 0) is False
    assert store.finish(gid, OUTCOME_READY, {}) == []  # a step still running cannot notify them again
    # the dedup entry is gone: the same track starts afresh
    fresh = new(store, "r3", gid="g-new")
    assert fresh == Created("g-new", joined=False, existed=False)


def test_cancel_of_an_ended_request_reports_its_state(store):
    gid = new(store, "r1").generation_id
    store.finish(gid, OUTCOME_READY, {})
    assert store.cancel("r1", CANCELLED) == FINISHING
    assert store.load_request("r1").error is None
    store.settle("r1", READY)
    assert store.cancel("r1", CANCELLED) == READY
    new(store, "r2")
    store.cancel("r2", CANCELLED)
    assert store.cancel("r2", CANCELLED) == FINISHING


# -- settle -----------------------------------------------------------------------------

def test_settle_only_from_finishing(store):
    gid = new(store, "r1").generation_id
    new(store, "r2", upload="other")
    assert store.settle("r2", READY) is False  # still waiting
    assert store.load_request("r2").state == WAITING
    store.finish(gid, OUTCOME_READY, {})
    assert store.settle("r1", READY) is True
    req = store.load_request("r1")
    assert req.state == READY and req.finished is not None and req.finished >= req.created
    assert store.counts()["finishing"] == 0
    assert store.settle("r1", FAILED) is False
    assert store.load_request("r1").state == READY
    assert store.settle("nope", READY) is False


def test_settled_request_expires_after_retention(subject):
    store = subject.make(retention=1)
    gid = new(store, "r1", gid="g1").generation_id
    store.finish(gid, OUTCOME_READY, {"id": "t"})
    store.settle("r1", READY)
    assert store.load_request("r1") is not None
    subject.wait(1.2)
    assert store.load_request("r1") is None
    assert store.load_generation(gid).result == {"id": "t"}  # kept an hour longer than its requests
    assert store.cancel("r1", CANCELLED) == "unknown"
    assert new(store, "r1", gid="g2") == Created("g2", joined=False, existed=False)


# -- claim_finishing ----------------------------------------------------------------------

def test_claim_finishing_respects_staleness_and_claims_by_bumping(subject, store):
    gid = new(store, "r1").generation_id
    new(store, "r2")
    store.finish(gid, OUTCOME_READY, {})
    assert store.claim_finishing(0.3, 10) == []  # fresh: its notifier may still be at work
    subject.wait(0.4)
    assert sorted(store.claim_finishing(0.3, 10)) == ["r1", "r2"]
    assert store.claim_finishing(0.3, 10) == []  # claimed: fresh again
    subject.wait(0.4)
    store.settle("r1", READY)
    assert store.claim_finishing(0.3, 10) == ["r2"]
    assert store.counts()["finishing"] == 1


def test_claim_finishing_honours_limit(subject, store):
    gid = new(store, "r1").generation_id
    for rid in ("r2", "r3"):
        new(store, rid)
    store.finish(gid, OUTCOME_READY, {})
    subject.wait(0.4)
    first = store.claim_finishing(0.3, 2)
    second = store.claim_finishing(0.3, 2)
    assert len(first) == 2 and len(second) == 1
    assert sorted(first + second) == ["r1", "r2", "r3"]


def test_two_claimers_never_get_the_same_request(subject, store):
    rids = [f"r{i}" for i in range(12)]
    gid = new(store, rids[0]).generation_id
    for rid in rids[1:]:
        new(store, rid)
    store.finish(gid, OUTCOME_ERROR, {"code": "x"})
    subject.wait(0.4)
    start = threading.Barrier(4)
    got: list[list[str]] = []

    def claimer() -> None:
        start.wait()
        for _ in range(3):
            got.append(store.claim_finishing(0.3, 2))

    threads = [threading.Thread(target=claimer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    flat = [rid for batch in got for rid in batch]
    assert sorted(flat) == sorted(rids)  # each exactly once


# -- repair_orphans -----------------------------------------------------------------------

def test_repair_orphans_re_adds_a_generation_lost_from_the_schedule(subject, store):
    gids = [new(store, upload=f"u{i}").generation_id for i in range(3)]
    done = new(store, upload="done").generation_id
    store.finish(done, OUTCOME_READY, {})
    for gid in gids[:2]:
        subject.drop_due(store, gid)
    assert store.counts()["scheduled"] == 1
    assert store.repair_orphans(batch=1) == 2
    assert store.counts()["scheduled"] == 3
    assert sorted(claimed_ids(store)) == sorted(gids)
    assert store.repair_orphans() == 0  # claimed entries are scheduled, not orphans
    assert store.load_generation(done).phase == DONE


# -- lock ---------------------------------------------------------------------------------

def test_lock_is_exclusive_and_only_its_owner_unlocks(store):
    token = store.lock("gen:g1", 30)
    assert token
    assert store.lock("gen:g1", 30) is None
    assert store.lock("gen:g2", 30)  # other names are independent
    store.unlock("gen:g1", "someone-else")
    assert store.lock("gen:g1", 30) is None
    store.unlock("gen:g1", token)
    again = store.lock("gen:g1", 30)
    assert again and again != token
    store.unlock("gen:never-locked", "x")  # harmless


def test_lock_expires_after_its_ttl(subject, store):
    old = store.lock("notify:r1", 0.2)
    assert store.lock("notify:r1", 0.2) is None
    subject.wait(0.3)
    new_token = store.lock("notify:r1", 30)
    assert new_token
    store.unlock("notify:r1", old)  # the late former owner cannot release the new holder's lock
    assert store.lock("notify:r1", 30) is None
    store.unlock("notify:r1", new_token)


def test_only_the_holder_extends_a_lock(subject, store):
    token = store.lock("gen:g1", 0.2)
    assert store.extend_lock("gen:g1", token, 0.6) is True
    subject.wait(0.3)
    assert store.lock("gen:g1", 30) is None  # still held: the extension counted
    assert store.extend_lock("gen:g1", "someone-else", 30) is False
    subject.wait(0.5)
    assert store.extend_lock("gen:g1", token, 30) is False  # lapsed: too late to extend
    new_token = store.lock("gen:g1", 30)
    assert new_token and store.extend_lock("gen:g1", token, 30) is False  # nor once retaken
    assert store.extend_lock("gen:never-locked", token, 30) is False


def test_concurrent_lockers_only_one_wins(store):
    start = threading.Barrier(8)
    tokens: list[str | None] = []

    def locker() -> None:
        start.wait()
        tokens.append(store.lock("gen:race", 30))

    threads = [threading.Thread(target=locker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len([t for t in tokens if t]) == 1


# -- body type, counts --------------------------------------------------------------------

def test_body_type_is_remembered(store):
    assert store.preferred_body_type() is None
    store.remember_body_type("subtitles_generation")
    assert store.preferred_body_type() == "subtitles_generation"
    store.remember_body_type("upload_track")
    assert store.preferred_body_type() == "upload_track"


def test_counts_follow_a_life_cycle(store):
    assert store.counts() == {"scheduled": 0, "in_flight": 0, "finishing": 0}
    g1 = new(store, "a1", upload="a").generation_id
    new(store, "a2", upload="a")
    new(store, "b1", upload="b")
    assert store.counts() == {"scheduled": 2, "in_flight": 2, "finishing": 0}
    store.claim_due(60, 10)
    assert store.counts() == {"scheduled": 2, "in_flight": 2, "finishing": 0}  # leased, still scheduled
    store.finish(g1, OUTCOME_READY, {})
    assert store.counts() == {"scheduled": 1, "in_flight": 1, "finishing": 2}
    store.settle("a1", READY)
    store.settle("a2", READY)
    store.cancel("b1", CANCELLED)
    assert store.counts() == {"scheduled": 0, "in_flight": 0, "finishing": 1}
    store.settle("b1", FAILED)
    assert store.counts() == {"scheduled": 0, "in_flight": 0, "finishing": 0}


# -- MemoryStore only: retention and sweeping on a fake clock -----------------------------

def test_memory_generation_outlives_its_requests_by_an_hour():
    clock = FakeClock()
    store = MemoryStore(clock=clock, retention=100)
    gid = new(store, "r1").generation_id
    new(store, "r2", upload="waiting-forever")
    store.finish(gid, OUTCOME_READY, {"id": "t"})
    store.settle("r1", READY)
    clock.advance(101)
    assert store.load_request("r1") is None
    assert store.load_generation(gid) is not None
    clock.advance(3600)
    assert store.load_generation(gid) is None
    assert store.load_request("r2").state == WAITING  # waiting requests never expire


def test_memory_sweep_drops_expired_records_nobody_reads():
    clock = FakeClock()
    store = MemoryStore(clock=clock, retention=10, sweep_interval=60)
    for i in range(5):
        gid = new(store, f"r{i}", upload=f"u{i}").generation_id
        store.finish(gid, OUTCOME_READY, {})
        store.settle(f"r{i}", READY)
    store.lock("gen:x", 1)
    assert len(store._keys._values) == 11
    clock.advance(3700)
    assert store.claim_due(1, 1) == []  # the next call that reads the clock sweeps
    assert store._keys._values == {}


# -- learned poll timing (schedule.py) -----------------------------------------------------

def _raw_timing(subject, store, site: str, phase: str, value):
    """Put a value at a timing key directly, as damage or an older layout would."""
    if subject.kind == "redis":
        store.client.set(store._timing_key(site, phase), value)
    else:
        store._keys.set(f"timing:{phase}:{site}", value, now=store.clock())


def test_timing_stats_are_none_until_something_is_recorded(store):
    assert store.timing_stats("", "job") is None
    assert store.timing_stats("blog", "track") is None


def test_record_timing_is_schedule_update_to_the_stored_precision(store):
    from subtitle_tasks import schedule

    expected = None
    for seconds, decay in [(30.0, 0.99), (31.5, 0.99), (0.2, 0.99), (30.0, 0.5), (7200.0, 0.99), (0.0, 0.9)]:
        store.record_timing("", "job", seconds, decay)
        expected = schedule.decode(schedule.encode(schedule.update(expected, seconds, decay)))
        assert store.timing_stats("", "job") == expected  # Lua and Python round alike (%.4g)
    stats = store.timing_stats("", "job")
    assert len(stats) == schedule.BUCKETS
    # 30 and 31.5 share a bucket: ((1 x 0.99 + 1) x 0.99 x 0.5 + 1) x 0.99 x 0.9
    assert stats[schedule.bucket_of(30.0)] == pytest.approx(((0.99 + 1) * 0.99 * 0.5 + 1) * 0.99 * 0.9, rel=1e-3)


def test_a_generation_keeps_the_duration_band_it_was_created_with(store):
    first = store.create_request(request_id="r1", generation_id="g1", upload_id="u1", language_code="it",
                                 name=None, environment=None, on_ready=[], on_error=[], ttl=60.0, duration_band=3)
    joined = store.create_request(request_id="r2", generation_id="g2", upload_id="u1", language_code="it",
                                  name=None, environment=None, on_ready=[], on_error=[], ttl=60.0, duration_band=5)
    plain = store.create_request(request_id="r3", generation_id="g3", upload_id="u3", language_code="it",
                                 name=None, environment=None, on_ready=[], on_error=[], ttl=60.0)
    assert joined.joined and joined.generation_id == first.generation_id
    assert store.load_generation(first.generation_id).duration_band == 3  # a joiner's hint does not replace it
    assert store.load_generation(plain.generation_id).duration_band is None


def test_record_timing_spreads_an_interval_as_schedule_update_does(store):
    from subtitle_tasks import schedule

    expected = None
    for low, high in [(20.0, 40.0), (33.0, 33.5), (100.0, 1e9), (5.0, 5.0), (0.0, 3.0)]:
        store.record_timing("", "ready", low, 0.99, high)
        expected = schedule.decode(schedule.encode(schedule.update(expected, low, 0.99, until=high)))
        assert store.timing_stats("", "ready") == expected  # Lua and Python share alike
    assert schedule.weight(store.timing_stats("", "ready")) == pytest.approx(
        ((((0.99 + 1) * 0.99 + 1) * 0.99 + 1) * 0.99 + 1), rel=1e-3)
    before = store.timing_stats("", "ready")
    store.record_timing("", "ready", 10.0, 0.99, math.nan)  # an impossible interval changes nothing
    assert store.timing_stats("", "ready") == before


def test_timing_is_kept_per_site_and_phase(store):
    store.record_timing("", "job", 40.0, 0.99)
    store.record_timing("blog", "job", 5.0, 0.99)
    store.record_timing("blog", "track", 9.0, 0.99)
    from subtitle_tasks import schedule

    assert store.timing_stats("", "job")[schedule.bucket_of(40.0)] == 1.0
    assert store.timing_stats("blog", "job")[schedule.bucket_of(5.0)] == 1.0
    assert store.timing_stats("blog", "track")[schedule.bucket_of(9.0)] == 1.0
    assert store.timing_stats("", "track") is None
    assert store.timing_stats("shop", "job") is None


def test_timing_points_keep_the_newest_per_site(store):
    assert store.timing_points("") == []
    for i in range(7):
        store.record_timing_point("", f"{i}.0:{i + 1}.0", 5)
    store.record_timing_point("blog", "9.5:12.0", 5)
    assert store.timing_points("") == [f"{i}.0:{i + 1}.0" for i in (6, 5, 4, 3, 2)]  # newest first, five kept
    assert store.timing_points("blog") == ["9.5:12.0"]
    assert store.timing_points("shop") == []


def test_a_generation_keeps_when_its_track_showed(store):
    gid = new(store).generation_id
    assert store.load_generation(gid).shown is None
    store.advance(gid, 5.0, shown=(12.25, 18.5))
    assert store.load_generation(gid).shown == (12.25, 18.5)
    store.advance(gid, 5.0, shown=None)
    assert store.load_generation(gid).shown is None


@pytest.mark.parametrize("seconds", [-1.0, float("nan"), float("inf")])
def test_timing_ignores_durations_that_cannot_be(store, seconds):
    store.record_timing("", "job", seconds, 0.5)
    assert store.timing_stats("", "job") is None
    store.record_timing("", "job", 3.0, 0.5)
    store.record_timing("", "job", seconds, 0.5)  # and does not decay what is there either
    assert sum(store.timing_stats("", "job")) == 1.0


def test_counts_that_decay_to_nothing_are_dropped(store):
    from subtitle_tasks import schedule

    store.record_timing("", "track", 2.0, 0.5)
    for _ in range(10):  # 0.5 ** 10 < schedule.PRUNE
        store.record_timing("", "track", 60.0, 0.5)
    stats = store.timing_stats("", "track")
    assert stats[schedule.bucket_of(2.0)] == 0.0
    assert stats[schedule.bucket_of(60.0)] == pytest.approx(2.0, rel=1e-2)


@pytest.mark.parametrize("damage", ["1,2,x", ",".join(["1"] * 200), "-1,3", "nan"])
def test_an_unreadable_or_foreign_histogram_starts_over(subject, store, damage):
    from subtitle_tasks import schedule

    _raw_timing(subject, store, "", "job", damage)
    assert store.timing_stats("", "job") is None
    store.record_timing("", "job", 12.0, 0.99)
    assert store.timing_stats("", "job") == schedule.update(None, 12.0)


def test_timing_is_kept_a_month_after_its_last_update(subject, store):
    store.record_timing("", "job", 12.0, 0.99)
    if subject.kind == "redis":
        ttl = store.client.pttl(store._timing_key("", "job")) / 1000
        assert 29 * 86400 < ttl <= 30 * 86400
    else:
        subject.wait(29 * 86400)
        store.record_timing("", "job", 12.0, 0.99)  # refreshes the month
        subject.wait(29 * 86400)
        assert store.timing_stats("", "job") is not None
        subject.wait(2 * 86400)
        assert store.timing_stats("", "job") is None


def test_redis_refuses_a_timing_key_of_another_type_and_leaves_it(redis_server):
    # Redis only: the in-memory store has no key types to get wrong.
    store = RedisStore(redis.Redis.from_url(redis_server.url), f"t{uuid.uuid4().hex[:8]}")
    key = store._timing_key("", "job")
    store.client.hset(key, "x", "1")
    with pytest.raises(redis.ResponseError, match="not a string"):
        store.record_timing("", "job", 12.0, 0.99)
    assert store.client.hgetall(key) == {b"x": b"1"}
