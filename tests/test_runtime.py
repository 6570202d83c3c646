"""Configuration per Celery app: two wired apps in one process keep their own settings,
and calls made without init_app never reconfigure the process. Real Redis databases."""

from __future__ import annotations

import pytest
import redis
from celery import Celery

import subtitle_tasks
from subtitle_tasks import UnknownRequest, cancel, init_app, request_subtitles, runtime, status
from subtitle_tasks.settings import load_settings


def _db(url: str, db: int) -> str:
    return url.rsplit("/", 1)[0] + f"/{db}"


@pytest.fixture
def two_apps(redis_server):
    apps = {}
    for name, db in (("site-a", 11), ("site-b", 12)):
        url = _db(redis_server.url, db)
        redis.Redis.from_url(url).flushdb()
        app = Celery(name, broker=url, set_as_current=False)
        init_app(app, redis_url=url, broker_url=url, key_prefix=name, deadline=600 if db == 11 else 900)
        apps[name] = (app, redis.Redis.from_url(url))
    yield apps
    for app, client in apps.values():
        client.flushdb()
        client.close()
        app.close()


def test_each_wired_app_keeps_its_own_settings(two_apps):
    (a, _), (b, _) = two_apps["site-a"], two_apps["site-b"]
    ra, rb = runtime.runtime_for(a), runtime.runtime_for(b)
    assert ra is not rb and ra is not runtime.get_runtime()
    assert (ra.settings.key_prefix, ra.settings.deadline) == ("site-a", 600)
    assert (rb.settings.key_prefix, rb.settings.deadline) == ("site-b", 900)
    # Wiring a third app changes neither.
    other = Celery("site-c", broker=ra.settings.broker_url, set_as_current=False)
    init_app(other, redis_url=ra.settings.redis_url, key_prefix="site-c")
    assert runtime.runtime_for(a) is ra and runtime.runtime_for(b) is rb
    other.close()


def test_requests_land_in_their_own_apps_state(two_apps):
    (a, ca), (b, cb) = two_apps["site-a"], two_apps["site-b"]
    ha = request_subtitles("video-a", "it-IT", app=a)
    hb = request_subtitles("video-b", "en", app=b)
    assert ca.exists(f"site-a:req:{ha.id}") and not cb.exists(f"site-b:req:{ha.id}")
    assert cb.exists(f"site-b:req:{hb.id}") and not ca.exists(f"site-a:req:{hb.id}")
    assert status(ha.id, app=a)["deadline_at"] - status(ha.id, app=a)["created_at"] == pytest.approx(600)
    assert status(hb.id, app=b)["deadline_at"] - status(hb.id, app=b)["created_at"] == pytest.approx(900)
    with pytest.raises(UnknownRequest):
        status(hb.id, app=a)


def test_tasks_bound_to_an_app_use_that_apps_state(two_apps):
    (a, ca), (b, cb) = two_apps["site-a"], two_apps["site-b"]
    request_subtitles("video-a", "it-IT", app=a)
    request_subtitles("video-b", "it-IT", app=b)
    submit_b = runtime.runtime_for(b).store.schedule_keys()[0]
    due_b = cb.zrange(submit_b, 0, -1, withscores=True)
    assert len(due_b) == 1
    # recover() claims what is due and publishes it through its own app's broker.
    summary = a.tasks["subtitle_tasks.recover"].apply().get()
    assert summary["dispatched"] == 1
    queue_a, queue_b = runtime.runtime_for(a).settings.step_queue, runtime.runtime_for(b).settings.step_queue
    assert ca.llen(queue_a) == 1 and cb.llen(queue_b) == 0  # the steps' own queue, on a's broker
    assert cb.zrange(submit_b, 0, -1, withscores=True) == due_b  # B's schedule untouched


def test_the_edge_without_init_app_never_reconfigures_the_process(redis_server, monkeypatch):
    url = _db(redis_server.url, 13)
    redis.Redis.from_url(url).flushdb()
    before = runtime.configure(load_settings({"redis_url": url, "broker_url": url, "key_prefix": "plain"},
                                             environ={}))
    monkeypatch.setattr(runtime, "_by_app", type(runtime._by_app)())  # no wired app in this process
    handle = request_subtitles("video-plain", "it-IT")
    assert status(handle.id)["state"] == "waiting"
    assert cancel(handle.id) is True
    assert status(handle.id)["state"] == "finishing"
    assert runtime.get_runtime() is before and runtime.get_runtime().settings.redis_url == url
    assert subtitle_tasks._app is None or runtime.attached(subtitle_tasks._app) is not None
    assert len(runtime._by_app) == 0  # cancel built a publisher, wired nothing
