"""examples/ run as written: the framework's own test client in this process, a real
`celery worker` running the example's Celery app, a real Redis and the simulator.

Each test has its own key prefix and queue, so its worker sees only its own work.
The web side is rewired per test through the example's own hooks (Flask: the factory's
config; Django: init_app again on the project's app, as a settings change would do).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis
from celery import current_app as celery_current_app

import subtitle_tasks
from tests.support.harness import FAST, ROOT, TOKEN

EXAMPLES = ROOT / "examples"
DJANGO_DIR = EXAMPLES / "django"


class ExampleWorker:
    """`celery -A <app> worker` started from an example's directory, as its README says."""

    def __init__(self, app: str, cwd: Path, env: dict[str, str], queue: str, log_path: Path):
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", app, "worker", "-Q", queue, "--concurrency", "2",
                 "--loglevel", "INFO", "--hostname", f"{uuid.uuid4().hex[:8]}@%h",
                 # gossip, mingle and heartbeat only slow a test worker's start
                 "--without-gossip", "--without-mingle", "--without-heartbeat"],
                cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class Pipeline:
    """One test's slice of the shared Redis and simulator, and the workers it started."""

    def __init__(self, redis_url: str, sim, tmp_path: Path):
        self.prefix = f"ex{uuid.uuid4().hex[:10]}"
        self.queue = f"q-{self.prefix}"
        self.redis_url = redis_url
        self.sim = sim
        self.tmp_path = tmp_path
        self.redis = redis.Redis.from_url(redis_url)
        self.workers: list[ExampleWorker] = []

    def worker_env(self, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "CELERY_BROKER_URL": self.redis_url,
            "SUBTITLE_TASKS_KEY_PREFIX": self.prefix,
            # the pipeline's tasks and the example's callbacks both on this test's queue
            "SUBTITLE_TASKS_QUEUE": self.queue,
            "SUBTITLE_TASKS_CALLBACK_QUEUE": self.queue,
            "DATOCMS_API_TOKEN": TOKEN,
            "DATOCMS_BASE_URL": self.sim.url,
            **FAST,
            **extra,
        }

    def start_worker(self, app: str, cwd: Path, **extra_env: str) -> ExampleWorker:
        worker = ExampleWorker(app, cwd, self.worker_env(**extra_env), self.queue,
                               self.tmp_path / f"worker-{len(self.workers)}.log")
        self.workers.append(worker)
        return worker

    def request_keys(self) -> list[str]:
        return sorted(k.decode() for k in self.redis.scan_iter(f"{self.prefix}:req:*"))

    def wait_for(self, what: str, predicate, timeout: float = 30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.05)
        logs = "\n".join(w.log()[-4000:] for w in self.workers)
        raise AssertionError(f"timed out waiting for {what}\n--- worker logs ---\n{logs}")

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.redis.close()


@pytest.fixture
def pipeline(redis_server, sim, tmp_path):
    p = Pipeline(redis_server.url, sim, tmp_path)
    yield p
    p.close()


def _problem(response) -> tuple[int, str | None]:
    # Flask's test responses have .data, Django's .content
    body = response.data if hasattr(response, "data") else response.content
    return response.status_code, json.loads(body).get("field")


# --------------------------------------------------------------------------- Flask


@pytest.fixture(scope="class")
def flask_package():
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(EXAMPLES))
        import flask_app

        yield flask_app


@pytest.fixture
def flask_site(flask_package, pipeline):
    """create_app for this test: its own Celery app, key prefix and SQLite file, plus a worker."""
    database = str(pipeline.tmp_path / "videos.sqlite")
    app = flask_package.create_app({
        "TESTING": True,
        "DATABASE": database,
        "CELERY": {"broker_url": pipeline.redis_url, "task_serializer": "json", "accept_content": ["json"],
                   "task_ignore_result": True},
        "SUBTITLE_TASKS": {"key_prefix": pipeline.prefix, "queue": pipeline.queue,
                           "callback_queue": pipeline.queue},
    })

    def start_worker():
        return pipeline.start_worker("flask_app.worker:celery_app", EXAMPLES, FLASK_DATABASE=database)

    return app, app.test_client(), start_worker


class TestFlaskApp:
    def test_post_runs_the_callback_and_a_retry_asks_once(self, flask_site, pipeline, sim):
        _, client, start_worker = flask_site
        start_worker()
        body = {"upload_id": "flask-upload-1", "language_code": "it-IT", "name": "Italiano"}
        first = client.post("/videos/7/subtitles", json=body, headers={"Idempotency-Key": "k1"})
        assert first.status_code == 202, first.json
        request_id = first.json["request_id"]
        assert request_id == "video-7-k1" and first.headers["Location"] == first.json["status_url"]
        retry = client.post("/videos/7/subtitles", json=body, headers={"Idempotency-Key": "k1"})
        assert retry.status_code == 202 and retry.json["request_id"] == request_id
        # The same key for another ask is a conflict, not a second request.
        other = client.post("/videos/7/subtitles", json={**body, "language_code": "en"},
                            headers={"Idempotency-Key": "k1"})
        assert _problem(other) == (409, "Idempotency-Key")

        video = pipeline.wait_for("on_ready to record the track", lambda: client.get("/videos/7").json["subtitles"])
        status = client.get(f"/subtitle-requests/{request_id}")
        assert status.status_code == 200 and status.json["state"] == "ready"
        assert video == {"video_id": 7, "status": "ready", "track_id": status.json["track_id"],
                         "language_code": "it-IT", "error": None, "error_message": None}
        assert sim.accepted_posts() == {(None, "flask-upload-1", "it-IT"): 1}
        assert pipeline.request_keys() == [f"{pipeline.prefix}:req:{request_id}"]

    def test_bad_input_is_400_with_the_field_and_writes_nothing(self, flask_site, pipeline):
        _, client, _ = flask_site
        good = {"upload_id": "flask-upload-2", "language_code": "it-IT"}
        assert _problem(client.post("/videos/8/subtitles", data="not json")) == (400, None)
        assert _problem(client.post("/videos/8/subtitles", json=[good])) == (400, None)
        assert _problem(client.post("/videos/8/subtitles", json={**good, "colour": "red"})) == (400, "colour")
        assert _problem(client.post("/videos/8/subtitles", json={**good, "upload_id": "../etc"})) == (400, "upload_id")
        assert _problem(client.post("/videos/8/subtitles", json={**good, "language_code": "english!"})) == (
            400, "language_code")
        assert _problem(client.post("/videos/8/subtitles", json={**good, "name": "a\nb"})) == (400, "name")
        assert _problem(client.post("/videos/8/subtitles", json={**good, "deadline": "soon"})) == (400, "deadline")
        assert _problem(client.post("/videos/8/subtitles", json=good, headers={"Idempotency-Key": "a b"})) == (
            400, "Idempotency-Key")
        assert pipeline.request_keys() == []

    def test_status_and_cancel(self, flask_site, pipeline):
        _, client, start_worker = flask_site
        start_worker()
        assert client.get("/subtitle-requests/video-9-nope").status_code == 404
        assert client.post("/subtitle-requests/video-9-nope/cancel").status_code == 404
        posted = client.post("/videos/9/subtitles", json={"upload_id": "stuck-flask", "language_code": "it-IT"})
        request_id = posted.json["request_id"]
        status = client.get(f"/subtitle-requests/{request_id}")
        assert status.status_code == 200 and status.json["state"] == "waiting"
        cancelled = client.post(f"/subtitle-requests/{request_id}/cancel")
        assert cancelled.status_code == 200 and cancelled.json == {"request_id": request_id, "cancelled": True}
        assert client.post(f"/subtitle-requests/{request_id}/cancel").status_code == 409
        video = pipeline.wait_for("on_error to record the cancel", lambda: client.get("/videos/9").json["subtitles"])
        assert video["status"] == "failed" and video["error"] == "cancelled"
        assert client.get(f"/subtitle-requests/{request_id}").json["error"]["code"] == "cancelled"


# --------------------------------------------------------------------------- Django


class RolledBack(Exception):
    pass


@pytest.fixture(scope="class")
def django_project(redis_server, tmp_path_factory):
    """The example project on a migrated file SQLite that this process and the workers share."""
    db_path = tmp_path_factory.mktemp("django") / "db.sqlite3"
    env = {"DJANGO_SETTINGS_MODULE": "mysite.settings", "DJANGO_DB_PATH": str(db_path),
           "CELERY_BROKER_URL": redis_server.url}
    subprocess.run([sys.executable, "manage.py", "migrate", "--verbosity", "0"], cwd=DJANGO_DIR, check=True,
                   env={**os.environ, **env, "PYTHONPATH": str(ROOT)})
    previous_app = celery_current_app._get_current_object()
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)
        mp.syspath_prepend(str(DJANGO_DIR))
        import django
        from django.conf import settings
        from django.db import connections
        from django.test.utils import setup_test_environment, teardown_test_environment
        from django.utils.functional import empty

        django.setup()
        setup_test_environment()  # allows the test client's host; mail to memory
        import mysite
        from videos.models import Video

        yield mysite.celery_app, Video, db_path
        teardown_test_environment()
        connections.close_all()
        # Leave no configured Django (subtitle_tasks would read its settings) and no
        # current Celery app behind for the tests that run after these.
        settings._wrapped = empty
    previous_app.set_current()


@pytest.fixture
def django_site(django_project, pipeline):
    celery_app, Video, db_path = django_project
    # What a Django process has: the project's app current, wired with this test's settings.
    celery_app.set_current()
    subtitle_tasks.init_app(celery_app, key_prefix=pipeline.prefix, queue=pipeline.queue,
                            callback_queue=pipeline.queue)
    from django.test import Client

    def start_worker():
        return pipeline.start_worker("mysite", DJANGO_DIR, DJANGO_DB_PATH=str(db_path))

    return Video, Client(), start_worker


def _ask(client, pk, key=None, **body):
    return client.post(f"/videos/{pk}/subtitles", {"language_code": "it-IT", **body},
                       content_type="application/json", headers={"Idempotency-Key": key} if key else {})


class TestDjangoProject:
    def test_post_sets_the_track_on_the_row_and_a_retry_asks_once(self, django_site, pipeline, sim):
        Video, client, start_worker = django_site
        start_worker()
        video = Video.objects.create(title="Trailer", upload_id="django-upload-1")
        first = _ask(client, video.pk, key="k1", name="Italiano")
        assert first.status_code == 202, first.content
        request_id = first.json()["request_id"]
        assert request_id == f"video-{video.pk}-k1" and first["Location"] == first.json()["status_url"]
        retry = _ask(client, video.pk, key="k1", name="Italiano")
        assert retry.status_code == 202 and retry.json()["request_id"] == request_id
        assert _problem(_ask(client, video.pk, key="k1", language_code="en")) == (409, "Idempotency-Key")

        track_id = pipeline.wait_for("publish_video to set the row's track",
                                     lambda: Video.objects.get(pk=video.pk).subtitles_track_id)
        row = Video.objects.get(pk=video.pk)
        assert (row.subtitles_request_id, row.subtitles_error) == (request_id, "")
        status = client.get(f"/subtitle-requests/{request_id}")
        assert status.status_code == 200 and status.json()["state"] == "ready"
        assert status.json()["track_id"] == track_id
        assert client.get(f"/videos/{video.pk}").json()["subtitles_track_id"] == track_id
        assert sim.accepted_posts() == {(None, "django-upload-1", "it-IT"): 1}

    def test_bad_input_is_400_with_the_field_and_writes_nothing(self, django_site, pipeline):
        Video, client, _ = django_site
        video = Video.objects.create(title="Teaser", upload_id="django-upload-2", subtitles_request_id="earlier")
        url = f"/videos/{video.pk}/subtitles"
        assert _problem(client.post(url, "not json", content_type="application/json")) == (400, None)
        assert _problem(_ask(client, video.pk, colour="red")) == (400, "colour")
        assert _problem(_ask(client, video.pk, language_code="english!")) == (400, "language_code")
        assert _problem(_ask(client, video.pk, name="a\nb")) == (400, "name")
        assert _problem(_ask(client, video.pk, deadline="soon")) == (400, "deadline")
        assert _problem(_ask(client, video.pk, key="a b")) == (400, "Idempotency-Key")
        assert _ask(client, 10**9).status_code == 404
        # Refused after the commit: the row names the request it named before.
        assert Video.objects.get(pk=video.pk).subtitles_request_id == "earlier"
        assert pipeline.request_keys() == []

    def test_status_and_cancel(self, django_site, pipeline):
        Video, client, start_worker = django_site
        start_worker()
        video = Video.objects.create(title="Stuck", upload_id="stuck-django")
        assert client.get("/subtitle-requests/video-0-nope").status_code == 404
        assert client.post("/subtitle-requests/video-0-nope/cancel").status_code == 404
        request_id = _ask(client, video.pk).json()["request_id"]
        status = client.get(f"/subtitle-requests/{request_id}")
        assert status.status_code == 200 and status.json()["state"] == "waiting"
        cancelled = client.post(f"/subtitle-requests/{request_id}/cancel")
        assert cancelled.status_code == 200 and cancelled.json() == {"request_id": request_id, "cancelled": True}
        assert client.post(f"/subtitle-requests/{request_id}/cancel").status_code == 409
        assert pipeline.wait_for("alert_editors to record the cancel",
                                 lambda: Video.objects.get(pk=video.pk).subtitles_error) == "cancelled"

    def test_rolled_back_transaction_requests_nothing(self, django_site, pipeline, sim):
        from django.db import transaction

        Video, client, start_worker = django_site
        start_worker()
        dropped = Video.objects.create(title="Rolled back", upload_id="django-rollback")
        kept = Video.objects.create(title="Committed", upload_id="django-commit")
        with pytest.raises(RolledBack), transaction.atomic():  # the caller's transaction, around the view
            response = _ask(client, dropped.pk, key="once")
            assert response.status_code == 202  # the id is known before the commit
            dropped_id = response.json()["request_id"]
            raise RolledBack
        assert Video.objects.get(pk=dropped.pk).subtitles_request_id == ""
        assert client.get(f"/subtitle-requests/{dropped_id}").status_code == 404

        # The same worker does request what a committed transaction asked for.
        kept_id = _ask(client, kept.pk).json()["request_id"]
        pipeline.wait_for("the committed request's track", lambda: Video.objects.get(pk=kept.pk).subtitles_track_id)
        assert pipeline.request_keys() == [f"{pipeline.prefix}:req:{kept_id}"]
        assert sim.accepted_posts() == {(None, "django-commit", "it-IT"): 1}
