"""Settings resolution and init_app's checks: no Redis, no workers."""

from __future__ import annotations

import pytest
from celery import Celery

import subtitle_tasks
from subtitle_tasks import ConfigurationError, load_settings
from subtitle_tasks.dispatcher import DispatcherStep

STATE = {"SUBTITLE_TASKS_REDIS_URL": "redis://127.0.0.1:1/0"}


def test_overrides_beat_environment_which_beats_defaults():
    env = {"SUBTITLE_TASKS_POLL_MAX": "30", "SUBTITLE_TASKS_DEADLINE": "600"}
    s = load_settings({"deadline": 60}, environ=env)
    assert (s.deadline, s.poll_max, s.poll_initial) == (60.0, 30.0, 1.0)


@pytest.mark.parametrize("env, name", [
    ({"SUBTITLE_TASKS_POLL_INITIAL": "soon"}, "SUBTITLE_TASKS_POLL_INITIAL"),
    ({"SUBTITLE_TASKS_DEADLINE": "-5"}, "SUBTITLE_TASKS_DEADLINE"),
    ({"DATOCMS_BASE_URL": "ftp://x"}, "DATOCMS_BASE_URL"),
    ({"SUBTITLE_TASKS_REDIS_URL": "http://x"}, "SUBTITLE_TASKS_REDIS_URL"),
    ({"SUBTITLE_TASKS_POLL_INITIAL": "10", "SUBTITLE_TASKS_POLL_MAX": "5"}, "SUBTITLE_TASKS_POLL_MAX"),
    ({"SUBTITLE_TASKS_LEASE": "5", "SUBTITLE_TASKS_HTTP_TIMEOUT": "10"}, "SUBTITLE_TASKS_LEASE"),
    ({"SUBTITLE_TASKS_RATE_LIMIT": "0"}, "SUBTITLE_TASKS_RATE_LIMIT"),
])
def test_bad_values_fail_naming_the_variable(env, name):
    with pytest.raises(ConfigurationError, match=name):
        load_settings(environ=env)


def test_unknown_override_is_refused():
    with pytest.raises(ConfigurationError, match="unknown setting"):
        load_settings({"dealine": 5}, environ={})


def test_token_is_not_in_the_settings_repr():
    s = load_settings(environ={"DATOCMS_API_TOKEN": "sekret-token"})
    assert s.api_token == "sekret-token" and "sekret" not in repr(s)


def test_state_defaults_to_a_redis_broker_but_not_to_rabbitmq():
    assert load_settings(environ={"CELERY_BROKER_URL": "redis://h:6379/2"}).state_url == "redis://h:6379/2"
    assert load_settings(environ={"CELERY_BROKER_URL": "amqp://guest@h//"}).state_url is None


def _app(**conf) -> Celery:
    app = Celery("t", broker="redis://127.0.0.1:1/0", set_as_current=False)
    app.conf.update(conf)
    return app


def test_init_app_reports_what_it_changed(monkeypatch):
    for key, value in STATE.items():
        monkeypatch.setenv(key, value)
    app = _app()
    report = subtitle_tasks.init_app(app, queue="subs")
    assert app.conf.task_routes["subtitle_tasks.*"] == {"queue": "subs"}
    recover = app.conf.beat_schedule["subtitle_tasks.recover"]
    assert recover["task"] == "subtitle_tasks.recover" and recover["options"]["expires"] == recover["schedule"]
    assert DispatcherStep in app.steps["worker"]
    assert any("routed" in c for c in report.changes) and any("recover" in c for c in report.changes)
    assert "subtitle_tasks.poll" in app.tasks and "subtitle_tasks.submit" in app.tasks
    # A second call changes nothing it already did.
    again = subtitle_tasks.init_app(app, queue="subs")
    assert not any("routed" in c or "recover" in c or "dispatcher" in c for c in again.changes)


def test_init_app_routes_its_tasks_to_a_queue_of_their_own_by_default(monkeypatch):
    # Not the app's default queue, where a burst of the app's own tasks would delay every step.
    for key, value in STATE.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("SUBTITLE_TASKS_QUEUE", raising=False)
    app = _app()
    report = subtitle_tasks.init_app(app)
    assert report.settings.step_queue == "subtitle_tasks"
    assert app.conf.task_routes["subtitle_tasks.*"] == {"queue": "subtitle_tasks"}
    assert app.amqp.router.route({}, "subtitle_tasks.poll")["queue"].name == "subtitle_tasks"
    assert app.amqp.router.route({}, "videos.publish")["queue"].name == "celery"
    assert any("routed subtitle_tasks.* to queue 'subtitle_tasks'" in c for c in report.changes)


def test_init_app_keeps_the_apps_own_routes_and_schedule(monkeypatch):
    for key, value in STATE.items():
        monkeypatch.setenv(key, value)
    app = _app(task_routes={"subtitle_tasks.*": {"queue": "mine"}},
               beat_schedule={"sweep": {"task": "subtitle_tasks.recover", "schedule": 5.0}})
    subtitle_tasks.init_app(app, queue="subs")
    assert app.conf.task_routes["subtitle_tasks.*"] == {"queue": "mine"}
    assert list(app.conf.beat_schedule) == ["sweep"]


@pytest.mark.parametrize("conf, words", [
    ({"task_always_eager": True}, "task_always_eager"),
    ({"accept_content": ["pickle"]}, "accept_content"),
])
def test_init_app_refuses_settings_the_pipeline_cannot_run_with(monkeypatch, conf, words):
    for key, value in STATE.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigurationError, match=words):
        subtitle_tasks.init_app(_app(**conf))


def test_init_app_refuses_a_rabbitmq_setup_without_redis_for_state(monkeypatch):
    monkeypatch.delenv("SUBTITLE_TASKS_REDIS_URL", raising=False)
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    with pytest.raises(ConfigurationError, match="SUBTITLE_TASKS_REDIS_URL"):
        subtitle_tasks.init_app(_app(), broker_url="amqp://guest@127.0.0.1//")


def test_django_settings_are_read_even_before_anything_touched_them(tmp_path):
    # A project's celery.py calls init_app before Django has loaded its lazy settings.
    import subprocess
    import sys

    (tmp_path / "proj_settings.py").write_text(
        "SECRET_KEY = 'x'\nSUBTITLE_TASKS_DEADLINE = 123\nSUBTITLE_TASKS_KEY_PREFIX = 'from-django'\n")
    code = ("from subtitle_tasks import load_settings; s = load_settings(); "
            "print(s.deadline, s.key_prefix)")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path), "DJANGO_SETTINGS_MODULE": "proj_settings",
           "SUBTITLE_TASKS_KEY_PREFIX": "from-env"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    # Django fills what the environment leaves open; the environment wins where both speak.
    assert out.split() == ["123.0", "from-env"]
