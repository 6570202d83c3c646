"""Fleet metrics in an app's workers: callback latency where callbacks start, an exporter
per worker when SUBTITLE_TASKS_METRICS_PORT is set. ``init_app`` calls ``install``.

Kept apart from metrics.py, which records and serves and knows nothing of Celery's
workers or of which app a task runs in.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar, Protocol

from celery import bootsteps
from celery.signals import task_prerun

from .metrics import MetricsServer, on_callback_started
from .runtime import attached, runtime_for

log = logging.getLogger("subtitle_tasks.metrics")

_prerun_connected = False


class _Report(Protocol):
    """What install() writes to: celery_app.InitReport (not imported: init_app imports us)."""

    changes: list[str]


def install(app: Any, report: _Report) -> None:
    """Time our callbacks where they start; serve metrics from workers if configured."""
    global _prerun_connected
    if not _prerun_connected:
        task_prerun.connect(_on_task_prerun, weak=False)
        _prerun_connected = True
    wired = attached(app)
    settings = wired.settings if wired is not None else None
    if settings is not None and settings.metrics_port and _MetricsStep not in app.steps["worker"]:
        app.steps["worker"].add(_MetricsStep)
        report.changes.append(f"serving fleet metrics on port {settings.metrics_port} from every worker")


def _on_task_prerun(sender: Any = None, task: Any = None, **_: Any) -> None:
    if task is None:
        return
    try:
        latency = on_callback_started(task.request.get)
        if latency is not None:
            runtime_for(getattr(task, "app", None)).metrics.callback_started(latency)
    except Exception:  # never into the user's task
        pass


# Celery ships no type information: StartStopStep is Any to mypy.
class _MetricsStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """Serves /metrics and /stats.json from a worker's main process."""

    requires: ClassVar[set[str]] = {"celery.worker.components:Pool"}
    server: MetricsServer | None = None  # set by start

    def start(self, worker: Any) -> None:
        runtime = runtime_for(worker.app)
        port = runtime.settings.metrics_port
        if port is None:  # install() adds this step only to an app whose settings name a port
            log.info("metrics not served from this worker (SUBTITLE_TASKS_METRICS_PORT is not set)")
            self.server = None
            return
        try:
            self.server = MetricsServer(runtime.store, runtime.settings.lease, port=port)
        except OSError as exc:  # another worker on this host has the port: one is enough
            log.info("metrics not served from this worker (%s)", exc)
            self.server = None
            return
        self.server.serve_in_thread()

    def stop(self, worker: Any) -> None:
        if self.server is not None:
            self.server.close()
