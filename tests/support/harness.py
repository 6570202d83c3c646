"""Real processes for integration tests and benchmarks: celery workers and an isolated pipeline."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import redis

from subtitle_tasks import runtime
from subtitle_tasks.settings import load_settings
from subtitle_tasks.testing import Simulator
from tests.support.callbacks import read_calls

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "test-token-not-secret"

# Fast timings so a request runs end to end in about a second.
FAST = {
    "SUBTITLE_TASKS_POLL_INITIAL": "0.1",
    "SUBTITLE_TASKS_POLL_MAX": "0.4",
    "SUBTITLE_TASKS_POLL_TARGET": "0.5",
    "SUBTITLE_TASKS_DISPATCH_INTERVAL": "0.05",
    "SUBTITLE_TASKS_HTTP_TIMEOUT": "1",
    "SUBTITLE_TASKS_LEASE": "3",
    "SUBTITLE_TASKS_SUBMIT_GRACE": "2",
}


class Worker:
    """A real `celery worker` process with its own environment."""

    def __init__(self, env: dict[str, str], app: str = "subtitle_tasks", pool: str = "prefork",
                 concurrency: int = 2, extra: list[str] | None = None, name: str | None = None,
                 lean: bool = True):
        self.env = env
        self.app = app
        self.args = [sys.executable, "-m", "celery", "-A", app, "worker", "--pool", pool,
                     "--concurrency", str(concurrency), "--include", "tests.support.callbacks",
                     "--loglevel", "INFO", "--hostname", f"{name or uuid.uuid4().hex[:8]}@%h",
                     # lean: skip gossip/mingle/heartbeat, which only slow a test worker's start
                     *(["--without-gossip", "--without-mingle", "--without-heartbeat"] if lean else []),
                     *(extra or [])]
        self.process: subprocess.Popen | None = None
        self.log_path = Path(env["TEST_LOG_DIR"]) / f"worker-{uuid.uuid4().hex[:6]}.log"

    def start(self) -> Worker:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.args, env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        return self

    def children(self) -> list[int]:
        # pgrep exits 1 when there is no child: an empty list, not an error.
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True,
                             check=False).stdout
        return [int(p) for p in out.split()]

    def kill(self) -> None:
        """SIGKILL the main process and its pool children: an OOM kill or a lost node."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self, timeout: float = 20.0) -> None:
        """Warm shutdown (SIGTERM), as a deploy does."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class Harness:
    """One isolated pipeline: its own key prefix, environment, workers and calls list."""

    def __init__(self, redis_url: str, sim: Simulator, tmp_path: Path, **overrides: str):
        self.prefix = f"t{uuid.uuid4().hex[:10]}"
        self.sim = sim
        self.redis_url = redis_url
        self.env = {
            **os.environ,
            "CELERY_BROKER_URL": redis_url,
            "SUBTITLE_TASKS_REDIS_URL": redis_url,
            "SUBTITLE_TASKS_KEY_PREFIX": self.prefix,
            "SUBTITLE_TASKS_QUEUE": f"q-{self.prefix}",
            "DATOCMS_API_TOKEN": TOKEN,
            "DATOCMS_BASE_URL": sim.url,
            "TEST_LOG_DIR": str(tmp_path),
            "PYTHONPATH": str(ROOT),
            **FAST,
            **overrides,
        }
        # Test callbacks run on the pipeline's own workers unless a test routes them elsewhere.
        self.env.setdefault("SUBTITLE_TASKS_CALLBACK_QUEUE", self.env["SUBTITLE_TASKS_QUEUE"])
        self.redis = redis.Redis.from_url(self.env["SUBTITLE_TASKS_REDIS_URL"])
        self.workers: list[Worker] = []
        self.reached_at = 0.0  # when wait_for_calls last saw its count reached
        self.settings = load_settings({
            "redis_url": self.env["SUBTITLE_TASKS_REDIS_URL"], "broker_url": self.env["CELERY_BROKER_URL"],
            "key_prefix": self.prefix, "queue": self.env["SUBTITLE_TASKS_QUEUE"],
        }, environ={})
        runtime.configure(self.settings)

    def app(self):
        """A Celery app in the test process, wired like a web app's (for cancel())."""
        from celery import Celery

        import subtitle_tasks

        app = Celery("web-side", broker=self.env["CELERY_BROKER_URL"], set_as_current=False)
        subtitle_tasks.init_app(app, redis_url=self.redis_url, broker_url=self.env["CELERY_BROKER_URL"],
                                key_prefix=self.prefix, queue=self.env["SUBTITLE_TASKS_QUEUE"] or None)
        return app

    def worker(self, **kwargs) -> Worker:
        worker = Worker(self.env, **kwargs).start()
        self.workers.append(worker)
        return worker

    def calls(self) -> list[dict]:
        return read_calls(self.redis, self.prefix)

    def wait_for_calls(self, n: int, timeout: float = 30.0, settle: float = 1.0) -> list[dict]:
        """Wait for at least n callback calls, then a little longer so duplicates would show."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            calls = self.calls()
            if len(calls) >= n:
                self.reached_at = time.monotonic()
                time.sleep(settle)
                return self.calls()
            time.sleep(0.05)
        logs = "\n".join(w.log()[-3000:] for w in self.workers)
        raise AssertionError(f"expected {n} callback calls, got {self.calls()}\n--- worker logs ---\n{logs}")

    def calls_by_tag(self) -> Counter:
        return Counter((c["tag"], c["kind"]) for c in self.calls())

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.redis.close()
