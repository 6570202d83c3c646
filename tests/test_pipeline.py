"""The core pipeline end to end: real Redis, real `celery worker` processes, the simulator."""

from __future__ import annotations

import time

import pytest

import subtitle_tasks
from subtitle_tasks import InvalidSubtitleRequest, request_subtitles
from tests.support.callbacks import record
from tests.support.harness import TOKEN


def ask(upload_id, tag=None, language="it-IT", **kwargs):
    tag = tag or upload_id
    return request_subtitles(upload_id, language, name="Italiano",
                             on_ready=record.s("ready", tag), on_error=record.s("error", tag), **kwargs)


def only_call(h, tag, timeout=30):
    calls = [c for c in h.wait_for_calls(1, timeout=timeout) if c["tag"] == tag]
    assert len(calls) == 1, calls
    return calls[0]


def test_happy_path_fires_on_ready_once_with_the_track(harness, sim):
    harness.worker()
    handle = ask("video-happy")
    call = only_call(harness, "video-happy")
    assert call["kind"] == "ready"
    assert call["task_id"] == f"{handle.id}-ready-0"  # stable: a consumer may dedupe on it
    track = call["payload"]
    assert track["type"] == "upload_track"
    assert track["attributes"]["status"] == "ready"
    assert track["attributes"]["language_code"] == "it-IT"
    assert track["relationships"]["upload"]["data"]["id"] == "video-happy"
    st = subtitle_tasks.status(handle.id)
    assert st["state"] == "ready" and st["track_id"] == track["id"] and st["job_id"]
    assert st["error"] is None and st["finished_at"] >= st["created_at"]
    assert sum(sim.accepted_posts().values()) == 1


def test_track_that_stays_preparing_then_turns_ready(harness, sim):
    sim.configure(job_seconds=0.2, preparing_seconds=2.0)
    harness.worker()
    handle = ask("video-slowprep")
    seen_phases = set()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not harness.calls():
        seen_phases.add(subtitle_tasks.status(handle.id)["phase"])
        time.sleep(0.05)
    call = only_call(harness, "video-slowprep")
    assert call["kind"] == "ready"
    assert "track" in seen_phases, seen_phases  # it watched the track list while preparing
    watched = [r for r in sim.requests() if r.path.endswith("/tracks") and r.method == "GET"]
    assert len(watched) >= 3


def _warm(h, low: float, high: float, n: int = 40) -> None:
    """A site whose generations took ``low``..``high`` s from POST to ready, as learned."""
    from subtitle_tasks import schedule
    from subtitle_tasks.state.redis import RedisStore

    store = RedisStore(h.redis, prefix=h.prefix)
    for i in range(n):
        store.record_timing("", schedule.READY, low + (high - low) * i / (n - 1), schedule.DECAY)


def test_a_warm_site_looks_in_the_track_list_and_never_asks_the_job_result(harness, sim):
    sim.configure(job_seconds=1.0, preparing_seconds=0.5)
    _warm(harness, 1.0, 2.0)
    harness.worker()
    ask("video-listed")
    call = only_call(harness, "video-listed")
    assert call["kind"] == "ready" and call["payload"]["attributes"]["status"] == "ready"
    gets = [r for r in sim.requests() if r.method == "GET"]
    assert not [r for r in gets if r.path.startswith("/job-results/")]
    looks = [r for r in gets if r.path == "/uploads/video-listed/tracks"]
    assert len(looks) >= 2  # the snapshot before the POST, then looks for the new track


def test_a_warm_site_with_points_finishes_and_keeps_the_generation_as_one_more(harness, sim):
    from subtitle_tasks import schedule, unseen
    from subtitle_tasks.state.redis import RedisStore

    sim.configure(job_seconds=1.0, preparing_seconds=0.5)
    store = RedisStore(harness.redis, prefix=harness.prefix)
    for i in range(40):  # tracks that showed 0.8-1.2 s after the POST, ready 0.5 s later
        shown = 0.8 + 0.4 * i / 39
        store.record_timing("", schedule.READY, shown + 0.5, schedule.DECAY)
        store.record_timing_point("", unseen.encode((shown, shown + 0.5)), unseen.KEEP)
    harness.worker()
    ask("video-points")
    call = only_call(harness, "video-points")
    assert call["kind"] == "ready"
    kept = unseen.decode(store.timing_points(""))
    assert len(kept) == 41  # the new generation kept as a point, newest first
    shown, ready = kept[0]
    assert 0.5 < shown <= ready < 10  # seconds after its POST, as its looks bounded them
    gets = [r for r in sim.requests() if r.method == "GET"]
    assert not [r for r in gets if r.path.startswith("/job-results/")]


def test_a_warm_site_still_hears_of_a_failed_job_from_the_job_result(harness, sim):
    sim.configure(job_seconds=0.3)
    _warm(harness, 1.0, 2.0)
    harness.worker()
    ask("no-audio-listed")
    call = only_call(harness, "no-audio-listed")
    assert call["kind"] == "error" and call["payload"]["code"] == "job_failed"
    gets = [r for r in sim.requests() if r.method == "GET"]
    assert [r for r in gets if r.path.startswith("/job-results/")]  # asked once the learned range had passed


def test_errored_track_fires_on_error_with_track_errored(harness, sim):
    harness.worker()
    handle = ask("errored-video")
    call = only_call(harness, "errored-video")
    assert call["kind"] == "error"
    err = call["payload"]
    assert err["code"] == "track_errored"
    assert err["message"] and err["request_id"] == handle.id
    assert err["upload_id"] == "errored-video" and err["language_code"] == "it-IT"
    assert err["track_id"]


def test_failed_job_fires_job_failed_with_the_api_code(harness):
    harness.worker()
    ask("no-audio-video")
    err = only_call(harness, "no-audio-video")["payload"]
    assert err["code"] == "job_failed"
    assert err["api_code"] == "NO_PRIMARY_AUDIO_TRACK"
    assert err["job_id"]


def test_missing_upload_is_upload_not_found(harness):
    harness.worker()
    ask("missing-video")
    err = only_call(harness, "missing-video")["payload"]
    assert err["code"] == "upload_not_found" and err["api_code"] == "NOT_FOUND"


def test_refused_token_is_unauthorized_and_never_leaks(harness_factory):
    h = harness_factory(DATOCMS_API_TOKEN="wrong-token-value")
    h.worker()
    ask("video-401")
    err = only_call(h, "video-401")["payload"]
    assert err["code"] == "unauthorized"
    assert err["api_status"] == 401
    assert "wrong-token-value" not in repr(err)
    for key in h.redis.scan_iter(f"{h.prefix}*"):
        assert b"wrong-token-value" not in repr(h.redis.dump(key)).encode()
    assert "wrong-token-value" not in "".join(w.log() for w in h.workers)


def test_deadline_ends_a_request_that_never_finishes(harness):
    harness.worker()
    ask("stuck-video", deadline=1.5)
    err = only_call(harness, "stuck-video", timeout=20)["payload"]
    assert err["code"] == "deadline_exceeded"
    assert "deadline" in err["message"]


def test_body_type_falls_back_and_is_remembered(harness, sim):
    sim.configure(insist_type="upload_track")
    harness.worker()
    ask("video-type-a")
    assert only_call(harness, "video-type-a")["kind"] == "ready"
    ask("video-type-b")
    calls = harness.wait_for_calls(2)
    assert {(c["tag"], c["kind"]) for c in calls} == {("video-type-a", "ready"), ("video-type-b", "ready")}
    posts = [r for r in sim.requests() if r.method == "POST"]
    # a: the official client's subtitles_generation refused, then upload_track
    # accepted; b: straight to the remembered type.
    assert [(p.path.split("/")[2], p.body_type, p.status) for p in posts] == [
        ("video-type-a", "subtitles_generation", 422),
        ("video-type-a", "upload_track", 202),
        ("video-type-b", "upload_track", 202),
    ]


def test_rate_limit_storm_every_request_ends_once(harness_factory, sim):
    sim.configure(rate_limit=6, rate_window=1.0, faults={"rate_429": 0.2})
    # The announced plan counts per the server's window: the fleet must use the same one.
    harness = harness_factory(SUBTITLE_TASKS_RATE_WINDOW="1")
    harness.worker(concurrency=4)
    tags = [f"video-storm-{i}" for i in range(15)]
    for tag in tags:
        ask(tag)
    calls = harness.wait_for_calls(len(tags), timeout=90)
    assert sorted(c["tag"] for c in calls) == sorted(tags)
    assert all(c["kind"] == "ready" for c in calls)
    assert any(r.status == 429 for r in sim.requests())


def test_transient_faults_are_ridden_out_without_duplicate_generations(harness, sim):
    sim.configure(faults={"http_503": 0.1, "transient": 0.1, "drop": 0.05, "html_502": 0.1,
                          "http_500": 0.05, "drop_after_commit": 0.1})
    harness.worker(concurrency=4)
    tags = [f"video-faulty-{i}" for i in range(12)]
    for tag in tags:
        ask(tag)
    calls = harness.wait_for_calls(len(tags), timeout=120, settle=2.0)
    assert sorted(c["tag"] for c in calls) == sorted(tags)
    assert all(c["kind"] == "ready" for c in calls), [c for c in calls if c["kind"] != "ready"]
    statuses = {r.status for r in sim.requests()}
    assert {500, 502, 503} & statuses  # faults really happened
    assert max(sim.accepted_posts().values()) == 1


def test_same_upload_and_language_share_one_generation(harness, sim):
    sim.configure(job_seconds=1.0)
    first = ask("video-dup", tag="first")
    second = ask("video-dup", tag="second")
    assert second.joined and second.generation_id == first.generation_id
    harness.worker()
    calls = harness.wait_for_calls(2)
    assert sorted((c["tag"], c["kind"]) for c in calls) == [("first", "ready"), ("second", "ready")]
    assert calls[0]["payload"]["id"] == calls[1]["payload"]["id"]
    assert list(sim.accepted_posts().values()) == [1]


def test_several_callbacks_each_fire_once(harness):
    harness.worker()
    request_subtitles("video-multi", "en", on_ready=[record.s("ready", "a"), record.s("ready", "b")],
                      on_error=record.s("error", "c"))
    harness.wait_for_calls(2)
    assert harness.calls_by_tag() == {("a", "ready"): 1, ("b", "ready"): 1}


def test_cancel_fires_cancelled_once(harness, sim):
    sim.configure(job_seconds=30)
    harness.app()
    harness.worker()
    handle = ask("video-cancel")
    time.sleep(0.5)
    assert subtitle_tasks.cancel(handle.id) is True
    assert subtitle_tasks.cancel(handle.id) is False
    err = only_call(harness, "video-cancel")["payload"]
    assert err["code"] == "cancelled"
    st = subtitle_tasks.status(handle.id)
    assert st["state"] == "failed" and st["error"] == err  # status shows what on_error got


def test_request_through_init_app_on_a_foreign_app(harness_factory):
    # No SUBTITLE_TASKS_QUEUE: the steps go to a queue of their own, which the app's
    # worker consumes although it was started with -Q naming its own queue only.
    h = harness_factory(FOREIGN_QUEUE="foreign-q", SUBTITLE_TASKS_QUEUE="", SUBTITLE_TASKS_CALLBACK_QUEUE="")
    h.worker(app="tests.support.foreign_app", extra=["-Q", "foreign-q"])
    from celery import signature

    request_subtitles("video-foreign", "it-IT",
                      on_ready=signature("foreign.publish_video", args=(42,)))
    published = _published(h)
    assert len(published) == 1 and published[0].startswith(b"42:"), [*published, h.workers[0].log()[-2000:]]


def _published(h, timeout=30):
    key = f"{h.prefix}:foreign:published"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not h.redis.llen(key):
        time.sleep(0.1)
    time.sleep(1)
    return h.redis.lrange(key, 0, -1)


def test_dedicated_fleet_sends_callbacks_to_the_apps_default_queue(harness_factory):
    from celery import signature

    from subtitle_tasks.local_redis import LocalRedis

    with LocalRedis() as server:  # its own server: the "celery" queue is shared by name
        h = harness_factory(redis_url=server.url, SUBTITLE_TASKS_CALLBACK_QUEUE="", FOREIGN_QUEUE="celery")
        fleet = h.worker()                          # celery -A subtitle_tasks: consumes its own queue only
        h.worker(app="tests.support.foreign_app")   # the application's worker, on "celery"
        request_subtitles("video-fleet", "it-IT", on_ready=signature("foreign.publish_video", args=(7,)))
        published = _published(h)
        assert len(published) == 1 and published[0].startswith(b"7:"), published
        assert "unregistered task" not in fleet.log()


@pytest.mark.parametrize("kwargs, field", [
    ({"upload_id": "", "language_code": "it-IT"}, "upload_id"),
    ({"upload_id": "a/b", "language_code": "it-IT"}, "upload_id"),
    ({"upload_id": "abc", "language_code": "italian"}, "language_code"),
    ({"upload_id": "abc", "language_code": "ja-JP"}, "language_code"),
    ({"upload_id": "abc", "language_code": "it", "on_ready": "not a signature"}, "on_ready"),
    ({"upload_id": "abc", "language_code": "it", "on_error": record.s("error", object())}, "on_error"),
    ({"upload_id": "abc", "language_code": "it", "deadline": -1}, "deadline"),
    ({"upload_id": "abc", "language_code": "it", "name": ""}, "name"),
    ({"upload_id": "abc", "language_code": "it", "upload_duration": -1}, "upload_duration"),
    ({"upload_id": "abc", "language_code": "it", "upload_duration": "90"}, "upload_duration"),
    ({"upload_id": "abc", "language_code": "it", "upload_duration": float("nan")}, "upload_duration"),
    ({"upload_id": "abc", "language_code": "it", "upload_duration": True}, "upload_duration"),
])
def test_bad_input_fails_at_the_edge_and_writes_nothing(harness, kwargs, field):
    with pytest.raises(InvalidSubtitleRequest) as info:
        request_subtitles(**kwargs)
    assert info.value.field == field
    assert list(harness.redis.scan_iter(f"{harness.prefix}*")) == []


def test_same_request_id_is_idempotent(harness):
    a = ask("video-idem", request_id="order-17")
    b = ask("video-idem", request_id="order-17")
    assert a.id == b.id == "order-17" and a.generation_id == b.generation_id
    harness.worker()
    harness.wait_for_calls(1)
    assert harness.calls_by_tag() == {("video-idem", "ready"): 1}


def test_token_never_enters_broker_messages_or_state(harness, sim):
    harness.worker()
    ask("video-secret")
    harness.wait_for_calls(1)
    for key in harness.redis.scan_iter("*"):
        kind = harness.redis.type(key)
        blob = repr(harness.redis.dump(key))
        assert TOKEN not in blob, (key, kind)


def test_unreachable_state_store_is_one_clear_retryable_error(harness):
    from subtitle_tasks import StateUnavailable, runtime
    from subtitle_tasks.local_redis import free_port
    from subtitle_tasks.settings import load_settings

    runtime.configure(load_settings({"redis_url": f"redis://127.0.0.1:{free_port()}/0"}, environ={}))
    with pytest.raises(StateUnavailable, match="unreachable"):
        ask("video-nostate")
    with pytest.raises(StateUnavailable):
        subtitle_tasks.status("anything")
