"""The sweep (sweep.py): the real simulator, the in-memory or a real Redis store, and one real worker."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
import redis
import requests
from celery import Celery

import subtitle_tasks
from subtitle_tasks import ConfigurationError, load_settings, runtime, validation
from subtitle_tasks.datocms import DatoCMSClient
from subtitle_tasks.rate_limits import SharedRateLimiter, StubBackend, key_for_token
from subtitle_tasks.state import MemoryStore, RedisStore
from subtitle_tasks.sweep import CURSOR_TTL, MUX_WINDOW, request_id_for, same_language, sweep
from tests.support.harness import ROOT, TOKEN

HOUR = 3600.0
DAY = 86400.0


@dataclass
class Env:
    """One wired app: its runtime's store and client point where a test wants."""

    app: Celery
    runtime: Any
    sim: Any
    redis: redis.Redis | None = None
    prefix: str = ""

    @property
    def store(self):
        return self.runtime.store

    def sweep(self, **kwargs: Any) -> dict:
        kwargs.setdefault("languages", "it-IT")
        return sweep(app=self.app, **kwargs)

    def request_keys(self) -> set[str]:
        return {k.decode().rsplit(":", 1)[1] for k in self.redis.scan_iter(f"{self.prefix}:req:*")}


@pytest.fixture
def make_env(sim, redis_server):
    made: list[Env] = []

    def make(store: str = "memory", redis_url: str | None = None, **overrides: Any) -> Env:
        prefix = f"t{uuid.uuid4().hex[:10]}"
        url = redis_url or redis_server.url
        settings = load_settings({"api_token": TOKEN, "base_url": sim.url, "redis_url": url, "broker_url": url,
                                  "key_prefix": prefix, **overrides}, environ={})
        app = Celery(f"sweep-{prefix}", broker=url, set_as_current=False)
        rt = runtime.attach(app, settings)
        env = Env(app, rt, sim, prefix=prefix)
        if store == "memory":
            # Test wiring: the runtime would build a Redis store and a Redis-backed limiter.
            rt._store = MemoryStore()
            limiter = SharedRateLimiter(StubBackend(), key_for_token(TOKEN), limit=settings.rate_limit,
                                        window=settings.rate_window, share=settings.rate_share)
            rt._clients[""] = DatoCMSClient(TOKEN, base_url=sim.url, rate_limiter=limiter)
        else:
            env.redis = redis.Redis.from_url(url)
        made.append(env)
        return env

    yield make
    for env in made:
        if env.redis is not None:
            env.runtime.close()
            env.redis.close()
        else:
            env.runtime._clients[""].close()


def add_videos(sim, n: int, prefix: str = "clip", start: float = HOUR, step: float = HOUR) -> list[str]:
    """n videos, the first ``start`` seconds old, each next one ``step`` older."""
    ids = [f"{prefix}-{i}" for i in range(n)]
    for i, upload_id in enumerate(ids):
        sim.add_upload(upload_id, age=start + i * step)
    return ids


def api_routes(sim) -> list[str]:
    return [r.route for r in sim.requests()]


# --------------------------------------------------------------------------- ids and languages


def test_request_ids_are_deterministic_valid_and_never_shared_between_sites():
    assert request_id_for(None, "q0VNpiNQSkG6z0lif_O1zg", "it-IT") == "auto.q0VNpiNQSkG6z0lif_O1zg.it-it"
    assert request_id_for("blog", "q0VN", "en") == "auto.blog.q0VN.en"
    # A site aliased "default" is not the default site.
    assert request_id_for("default", "x", "en") != request_id_for(None, "x", "en")
    # Upload ids and tags hold no dot, so the number of parts tells the two kinds apart.
    assert request_id_for("blog", "x", "en").count(".") == 3 and request_id_for(None, "x", "en").count(".") == 2
    long_id = "A" * 128
    for site in (None, "s" * 32):
        rid = request_id_for(site, long_id, "en-GB-oxendict")
        assert len(rid) <= 128 and validation.request_id(rid) == rid
        assert rid == request_id_for(site, long_id, "EN-gb-OXENDICT")  # stable, case-blind
        assert rid != request_id_for(site, "B" * 128, "en-GB-oxendict")
    assert validation.request_id(request_id_for("s" * 32, "u" * 120, "de-" + "a" * 60)) is not None


@pytest.mark.parametrize("track, wanted, same", [
    ("it-IT", "it-IT", True), ("it", "it-IT", True), ("it-IT", "it", True), ("IT-it", "it-IT", True),
    ("pt-BR", "pt-PT", False), ("en", "es", False), (None, "en", False), ("", "en", False),
])
def test_a_track_counts_for_a_language_by_its_subtags(track, wanted, same):
    assert same_language(track, wanted) is same


# --------------------------------------------------------------------------- deciding


def _track(sim, upload_id: str, language: str) -> None:
    answer = requests.post(f"{sim.url}/uploads/{upload_id}/tracks/generate-subtitles",
                           headers={"Authorization": f"Bearer {TOKEN}", "X-Api-Version": "3"},
                           json={"data": {"type": "upload_track", "attributes": {"language_code": language}}})
    assert answer.status_code == 202, answer.text


def test_requests_what_is_missing_and_skips_existing_tracks_and_requests(make_env, sim):
    env = make_env()
    sim.configure(preparing_seconds=0)
    clips = add_videos(sim, 3)
    sim.add_upload("errored-clip", age=4 * HOUR)
    sim.add_upload("poster", age=60, kind="image")
    _track(sim, "clip-1", "it")          # an Italian track: it-IT is there already
    _track(sim, "errored-clip", "it-IT")  # errored: does not count
    sim.complete_all_jobs()
    subtitle_tasks.request_subtitles("clip-2", "en", request_id=request_id_for(None, "clip-2", "en"), app=env.app)
    before = len(sim.requests())

    report = env.sweep(languages="it-IT,en")

    expected = {request_id_for(None, u, lang) for u in [*clips, "errored-clip"] for lang in ("it-IT", "en")}
    expected -= {request_id_for(None, "clip-1", "it-IT"), request_id_for(None, "clip-2", "en")}
    assert set(report["requests"]) == expected and report["requested"] == 6
    assert (report["skipped_has_track"], report["skipped_requested"]) == (1, 1)
    assert (report["listed"], report["videos"], report["too_old"], report["stopped"]) == (4, 4, 0, "done")
    for rid in expected:
        status = subtitle_tasks.status(rid, app=env.app)
        assert status["state"] == "waiting" and status["site"] is None
    # One page, then one track list per upload with something left to decide.
    assert api_routes(sim)[before:] == ["list_uploads"] + ["upload_tracks"] * 4
    assert report["api_calls"] == 5 and report["pages"] == 1


def test_the_sweep_gives_each_request_its_video_s_length(make_env, sim):
    from subtitle_tasks import schedule

    env = make_env()
    sim.add_upload("long-clip", age=HOUR, duration=600.0)
    sim.add_upload("short-clip", age=HOUR, duration=45.0)
    sim.add_upload("endless", age=HOUR, duration=8 * 86400.0)  # past what the edge takes as a length
    report = env.sweep()
    assert report["requested"] == 3
    bands = {}
    for rid in report["requests"]:
        request = env.store.load_request(rid)
        bands[request.upload_id] = env.store.load_generation(request.generation_id).duration_band
    assert bands == {"long-clip": schedule.duration_band(600.0), "short-clip": schedule.duration_band(45.0),
                     "endless": None}  # requested all the same, without the hint
    assert bands["long-clip"] != bands["short-clip"]


def test_uploads_past_the_window_are_counted_not_requested_and_older_pages_never_read(make_env, sim):
    env = make_env()
    add_videos(sim, 3)
    add_videos(sim, 10, prefix="old", start=8 * DAY, step=DAY)
    report = env.sweep(page_size=2)
    assert report["requested"] == 3 and report["pages"] == 2
    assert report["too_old"] == 1  # only the one on the page where the boundary was crossed
    assert api_routes(sim).count("list_uploads") == 2

    narrow = make_env().sweep(since=1.5 * HOUR, page_size=2)
    assert (narrow["requested"], narrow["too_old"], narrow["pages"]) == (1, 1, 1)


def test_a_video_not_yet_on_mux_is_left_for_the_next_sweep(make_env, sim):
    env = make_env()
    created = time.time() - HOUR / 2
    sim.add_upload("newer", age=60)
    sim.add_upload("raw", created_at=created, mux_ready=False)
    sim.add_upload("done", age=2 * HOUR)
    first = env.sweep()
    assert (first["requested"], first["not_ready"]) == (2, 1)
    sim.add_upload("raw", created_at=created)  # Mux finished it
    second = env.sweep()
    assert second["requests"] == [request_id_for(None, "raw", "it-IT")]


def test_sweep_off_bad_arguments_and_the_languages_setting(make_env, sim):
    env = make_env(auto_languages="it,en")
    sim.add_upload("clip")
    for bad in ({"since": MUX_WINDOW + 1}, {"since": 0}, {"since": True}, {"page_size": 501},
                {"max_requests": -1}):
        with pytest.raises(ValueError):
            sweep(app=env.app, **bad)
    with pytest.raises(ConfigurationError, match="unknown site"):
        sweep(app=env.app, site="nowhere")
    with pytest.raises(ConfigurationError, match="languages"):
        sweep(app=env.app, languages="it,xx")
    off = sweep(app=env.app, languages="")
    assert off["stopped"] == "disabled" and off["api_calls"] == 0
    assert sim.requests() == []
    assert sorted(sweep(app=env.app)["requests"]) == ["auto.clip.en", "auto.clip.it"]  # from the setting
    assert make_env().runtime.settings.auto_languages == ()  # off unless configured


@pytest.mark.parametrize("raw, expected", [
    ("it, en-GB", ("it", "en-GB")), ("", ()), ("it,,en", ("it", "en")), (["de"], ("de",)),
])
def test_auto_languages_setting(raw, expected):
    env = {"SUBTITLE_TASKS_AUTO_LANGUAGES": raw} if isinstance(raw, str) else {}
    overrides = {} if isinstance(raw, str) else {"auto_languages": raw}
    assert load_settings(overrides, environ=env).auto_languages == expected


@pytest.mark.parametrize("env", [
    {"SUBTITLE_TASKS_AUTO_LANGUAGES": "it,IT"}, {"SUBTITLE_TASKS_AUTO_LANGUAGES": "xx"},
    {"SUBTITLE_TASKS_AUTO_LANGUAGES": "it_IT"}, {"SUBTITLE_TASKS_SWEEP_SHARE": "1.5"},
    {"SUBTITLE_TASKS_SWEEP_SHARE": "0"},
])
def test_bad_sweep_settings_fail_naming_the_variable(env):
    with pytest.raises(ConfigurationError, match=next(iter(env))):
        load_settings(environ=env)


# --------------------------------------------------------------------------- never twice


def test_repeated_sweeps_never_ask_twice(make_env, sim):
    env = make_env(store="redis")
    clips = add_videos(sim, 5)
    first = env.sweep(languages="it,en")
    assert first["requested"] == 10
    again = env.sweep(languages="it,en")
    assert again["requested"] == 0
    # Even with the cursor gone, the ids find what exists.
    env.redis.delete(f"{env.prefix}:sweep")
    forgetful = env.sweep(languages="it,en")
    assert (forgetful["requested"], forgetful["skipped_requested"]) == (0, 10)
    assert env.request_keys() == {request_id_for(None, u, lang) for u in clips for lang in ("it", "en")}
    assert env.store.counts()["in_flight"] == 10  # one generation per (upload, language)


def test_overlapping_sweeps_in_threads_never_duplicate(make_env, sim):
    env = make_env(store="redis")
    clips = add_videos(sim, 12, step=60.0)
    barrier = threading.Barrier(2)
    reports: list[dict] = []

    def run() -> None:
        barrier.wait()
        reports.append(env.sweep(languages="it,en", page_size=5))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(reports) == 2
    for report in reports:  # each sweep accounted for every pair, one way or the other
        assert report["stopped"] == "done"
        assert report["requested"] + report["skipped_requested"] == 24
    assert env.request_keys() == {request_id_for(None, u, lang) for u in clips for lang in ("it", "en")}
    assert env.store.counts()["in_flight"] == 24


# --------------------------------------------------------------------------- the cursor


def test_an_interrupted_sweep_resumes_and_the_next_one_stops_early(make_env, sim):
    env = make_env()
    clips = add_videos(sim, 9)
    first = env.sweep(page_size=4, max_requests=5)
    assert (first["stopped"], first["requested"]) == ("max_requests", 5)
    cursor = env.store.sweep_cursor("")
    assert cursor["pass"]["offset"] == 5 and cursor["top"] is None

    sim.add_upload("fresh", age=0)  # shifts every offset by one
    second = env.sweep(page_size=4)
    assert second["resumed_from"]["offset"] == 5 and second["stopped"] == "done"
    assert second["requested"] == 4 and second["already_swept"] == 1  # the one the shift brought back
    assert set(first["requests"]) | set(second["requests"]) == {request_id_for(None, u, "it-IT") for u in clips}
    assert env.store.sweep_cursor("")["pass"] is None

    before = len(sim.requests())
    third = env.sweep(page_size=4)
    assert third["requests"] == [request_id_for(None, "fresh", "it-IT")]
    # It stopped at the uploads the finished pass covered: one page, one track list.
    assert (third["pages"], third["api_calls"], third["resumed_from"]) == (1, 2, None)
    assert len(sim.requests()) - before == 2

    fourth = env.sweep(page_size=4)
    assert (fourth["requested"], fourth["api_calls"]) == (0, 1)


def test_a_resumed_sweep_steps_back_when_uploads_were_deleted(make_env, sim):
    env = make_env()
    clips = add_videos(sim, 9)
    first = env.sweep(page_size=4, max_requests=5)
    for upload_id in clips[:4]:
        sim.remove_upload(upload_id)  # the list moves up by four: offset 5 is past its end now
    second = env.sweep(page_size=4)
    assert second["stopped"] == "done" and second["requests"] == [request_id_for(None, u, "it-IT")
                                                                   for u in clips[5:]]
    assert len(first["requests"]) == 5 and second["already_swept"] == 1


def test_a_time_budget_stops_the_sweep_and_the_next_one_finishes(make_env, sim):
    env = make_env()
    clips = add_videos(sim, 6)
    sim.configure(faults={"slow": 1.0}, slow_seconds=0.3)
    started = time.monotonic()
    first = env.sweep(max_seconds=1.0, page_size=3)
    assert first["stopped"] == "max_seconds" and time.monotonic() - started < 2.0
    assert 0 < first["requested"] < 6
    sim.configure(faults={})
    second = env.sweep(page_size=3)
    assert second["stopped"] == "done" and second["resumed_from"] is not None
    assert set(first["requests"]) | set(second["requests"]) == {request_id_for(None, u, "it-IT") for u in clips}
    assert not set(first["requests"]) & set(second["requests"])


def test_an_api_failure_ends_the_sweep_keeping_its_progress(make_env, sim):
    env = make_env()
    clips = add_videos(sim, 4)
    sim.configure(faults={"http_500": 1.0})
    failed = env.sweep()
    assert failed["stopped"] == "error" and "UnexpectedServerError" in failed["error"]
    sim.configure(faults={})
    assert len(env.sweep()["requests"]) == len(clips)


def test_store_keeps_one_cursor_per_site(make_env, sim):
    for env in (make_env(), make_env(store="redis")):
        store = env.store
        assert store.sweep_cursor("") is None
        store.save_sweep_cursor("", {"top": 1.5}, CURSOR_TTL)
        store.save_sweep_cursor("default", {"top": 2.5}, 60)
        assert store.sweep_cursor("") == {"top": 1.5} and store.sweep_cursor("default") == {"top": 2.5}
        if isinstance(store, RedisStore):
            assert 0 < env.redis.pttl(f"{env.prefix}:sweep") <= CURSOR_TTL * 1000
            env.redis.set(f"{env.prefix}:sweep", "{not json")
            assert store.sweep_cursor("") is None  # unreadable: start over


def test_a_named_site_sweeps_its_own_environment_with_its_own_cursor(make_env, sim, monkeypatch):
    monkeypatch.setenv("SWEEP_TEST_BLOG_TOKEN", TOKEN)
    env = make_env(store="redis", sites={"blog": {"token_env": "SWEEP_TEST_BLOG_TOKEN", "environment": "staging"}})
    sim.add_upload("home-clip")
    sim.add_upload("blog-clip", environment="staging")
    blog = env.sweep(site="blog")
    assert blog["requests"] == ["auto.blog.blog-clip.it-it"] and blog["site"] == "blog"
    assert subtitle_tasks.status("auto.blog.blog-clip.it-it", app=env.app)["site"] == "blog"
    assert env.redis.exists(f"{env.prefix}:sweep:blog") and not env.redis.exists(f"{env.prefix}:sweep")
    assert env.sweep()["requests"] == ["auto.home-clip.it-it"]


# --------------------------------------------------------------------------- dry run and quota


def test_a_dry_run_requests_nothing_and_writes_nothing(make_env, sim, redis_server):
    url = redis_server.url.rsplit("/", 1)[0] + "/13"
    env = make_env(store="redis", redis_url=url)
    env.redis.flushdb()
    clips = add_videos(sim, 4)
    # The shared quota log and the fleet's API-answer counters are the fleet's, not the
    # sweep's: a dry run's calls are counted like any. Make them exist first, so DBSIZE
    # measures the sweep's own state only.
    env.runtime.client.list_uploads(limit=1)
    before = env.redis.dbsize()
    report = env.sweep(dry_run=True, languages="it,en")
    assert env.redis.dbsize() == before
    assert [k for k in env.redis.scan_iter(f"{env.prefix}:*") if k != f"{env.prefix}:metrics".encode()] == []
    assert report["dry_run"] and report["requested"] == 8 and report["stopped"] == "done"
    real = env.sweep(languages="it,en")
    assert sorted(real["requests"]) == sorted(report["requests"])
    assert env.request_keys() == {request_id_for(None, u, lang) for u in clips for lang in ("it", "en")}


def test_the_sweep_spends_at_most_its_share_of_the_quota(make_env, sim):
    sim.configure(rate_limit=40, rate_window=1.0)
    env = make_env(store="redis", rate_limit=40, rate_window=1.0, sweep_share=0.25)
    add_videos(sim, 30, step=60.0)
    started = time.monotonic()
    report = env.sweep(page_size=100)
    elapsed = time.monotonic() - started
    assert report["requested"] == 30 and report["api_calls"] == 31
    assert report["api_budget"]["per_window"] <= 10
    times = [r.time for r in sim.requests() if r.route in ("list_uploads", "upload_tracks")]
    assert len(times) == 31 and all(r.status == 200 for r in sim.requests())
    busiest = max(sum(1 for t in times if end - 1.0 < t <= end) for end in times)
    assert busiest <= 10, busiest  # never more than a quarter of the 40 per second
    assert elapsed >= 2.0  # 31 calls at <= 10 a second


# --------------------------------------------------------------------------- real processes


def _cli(harness, *args, timeout=60):
    return subprocess.run([sys.executable, "-m", "subtitle_tasks.cli", *args], env=harness.env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, check=False)


def _wait_ready(request_ids, timeout=30.0) -> None:
    deadline = time.monotonic() + timeout
    states = {}
    while time.monotonic() < deadline:
        states = {rid: subtitle_tasks.status(rid)["state"] for rid in request_ids}
        if all(state == "ready" for state in states.values()):
            return
        time.sleep(0.1)
    raise AssertionError(f"not all ready: {states}")


def test_cli_sweep_and_beat_task_with_a_real_worker_reach_ready(harness, sim):
    harness.worker()
    sim.add_upload("cli-clip-1", age=HOUR)
    sim.add_upload("cli-clip-2", age=2 * HOUR)
    sim.add_upload("cli-old", age=3 * DAY)

    dry = _cli(harness, "sweep", "--languages", "it,en", "--since", "2d", "--dry-run")
    assert dry.returncode == 0 and "would request 4" in dry.stdout and "1 too old" in dry.stdout

    done = _cli(harness, "sweep", "--languages", "it,en", "--since", "2d", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["requested"] == 4 and report["too_old"] == 1 and not report["dry_run"]
    _wait_ready(report["requests"])
    assert sum(sim.accepted_posts().values()) == 4

    again = json.loads(_cli(harness, "sweep", "--languages", "it,en", "--since", "2d", "--json").stdout)
    assert again["requested"] == 0
    assert _cli(harness, "sweep", "--languages", "it", "--since", "30d").returncode == 2
    assert _cli(harness, "sweep", "--languages", "it", "--since", "soon").returncode == 2

    # The beat task, through the broker to the worker, picks up a new upload.
    sim.add_upload("beat-clip", age=60)
    harness.app().send_task("subtitle_tasks.sweep", kwargs={"languages": ["it"], "since": DAY},
                            queue=harness.env["SUBTITLE_TASKS_QUEUE"])
    rid = request_id_for(None, "beat-clip", "it")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            subtitle_tasks.status(rid)
            break
        except subtitle_tasks.UnknownRequest:
            time.sleep(0.1)
    _wait_ready([rid])
    assert sum(sim.accepted_posts().values()) == 5
    assert "Traceback" not in "".join(w.log() for w in harness.workers)
