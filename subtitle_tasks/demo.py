"""``subtitle-tasks demo``: one request through to its ready track, on embedded defaults.

No broker configured: starts a throwaway Redis. No token: starts the simulator.
Then a real worker process, one request, its callback, and a clean shutdown.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

from celery import shared_task

if TYPE_CHECKING:
    from .api import RequestStatus

RESULTS_KEY = "demo:results"


@shared_task(name="subtitle_tasks.demo.record", ignore_result=True)  # type: ignore[untyped-decorator]  # Celery is untyped
def record(payload: dict[str, Any], kind: str) -> None:
    """Demo callback: hands the outcome back to the waiting demo process through Redis."""
    from .runtime import get_runtime

    store = get_runtime().store
    store.client.rpush(f"{store.prefix}:{RESULTS_KEY}", json.dumps({"kind": kind, "payload": payload}))


def _say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def run(upload_id: str, language_code: str, name: str | None, timeout: float) -> int:
    from . import local_redis

    env = dict(os.environ)
    with ExitStack() as stack:
        if not env.get("CELERY_BROKER_URL"):
            server = stack.enter_context(local_redis.LocalRedis())
            env["CELERY_BROKER_URL"] = server.url
            _say(f"no CELERY_BROKER_URL: started a local Redis at {server.url}")
        if not env.get("DATOCMS_API_TOKEN"):
            from .testing import Simulator, SimulatorConfig

            sim = stack.enter_context(Simulator(SimulatorConfig(job_seconds=2.0, preparing_seconds=2.0)))
            env.update(DATOCMS_API_TOKEN="demo-token", DATOCMS_BASE_URL=sim.url)
            _say(f"no DATOCMS_API_TOKEN: started the DatoCMS simulator at {sim.url}")
        env.setdefault("SUBTITLE_TASKS_POLL_INITIAL", "0.5")
        env.setdefault("SUBTITLE_TASKS_POLL_MAX", "5")
        env.setdefault("SUBTITLE_TASKS_DISPATCH_INTERVAL", "0.2")
        os.environ.update({k: v for k, v in env.items()
                           if k.startswith(("CELERY_", "SUBTITLE_TASKS_", "DATOCMS_BASE", "DATOCMS_ENV"))})

        worker = subprocess.Popen(
            # The demo's worker is the fleet (queue subtitle_tasks) and, for the demo's own
            # callbacks, the application's worker too (queue celery).
            [sys.executable, "-m", "celery", "-A", "subtitle_tasks", "worker", "--include", "subtitle_tasks.demo",
             "--queues", "subtitle_tasks,celery",
             "--concurrency", "2", "--loglevel", "WARNING", "--without-gossip", "--without-mingle",
             "--hostname", f"demo-{os.getpid()}@%h"],
            env=env,
        )
        stack.callback(_stop_worker, worker)
        _say(f"started a worker (pid {worker.pid})")

        from . import request_subtitles, runtime, status
        from .settings import load_settings

        runtime.configure(load_settings())
        handle = request_subtitles(upload_id, language_code, name=name,
                                   on_ready=record.s("ready"), on_error=record.s("error"))
        _say(f"requested subtitles for upload {upload_id} ({language_code}): request {handle.id}")
        return _wait_for_outcome(handle.id, timeout, status, worker)


def _wait_for_outcome(request_id: str, timeout: float, status: Callable[[str], RequestStatus],
                      worker: subprocess.Popen[bytes]) -> int:
    from .runtime import get_runtime

    store = get_runtime().store
    key = f"{store.prefix}:{RESULTS_KEY}"
    deadline = time.monotonic() + timeout
    last_state = None
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            _say(f"the worker exited early with {worker.returncode}")
            return 1
        item = store.client.blpop([key], timeout=1)
        now = status(request_id)
        current = (now["state"], now["phase"], now["job_id"], now["track_id"])
        if current != last_state:
            _say(f"state={now['state']} phase={now['phase']} job={now['job_id']} track={now['track_id']}")
            last_state = current
        if item is not None:
            outcome = json.loads(item[1])
            if outcome["kind"] == "ready":
                track = outcome["payload"]
                _say(f"on_ready fired: track {track['id']} is {track['attributes']['status']}")
                print(json.dumps(track, indent=2))
                return 0
            _say(f"on_error fired: {json.dumps(outcome['payload'])}")
            return 1
    _say(f"no outcome after {timeout:.0f}s")
    return 1


def _stop_worker(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is None:
        worker.terminate()  # warm shutdown
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
    _say("worker stopped; shutting down")
