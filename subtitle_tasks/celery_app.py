"""Wiring into Celery: ``init_app`` for an existing app, ``create_app`` for our own fleet."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from celery import Celery

from . import runtime
from .publisher import DEFAULT_BROKER
from .settings import ConfigurationError, Settings, load_settings

log = logging.getLogger("subtitle_tasks")

RECOVER_EVERY = 30.0  # seconds between beat sweeps that init_app schedules


@dataclass
class InitReport:
    """What init_app changed on the app, for the log and for the caller to assert on."""

    settings: Settings
    changes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return "; ".join(self.changes) or "nothing to change"


def init_app(app: Celery, **overrides: Any) -> InitReport:
    """Register the tasks on ``app``, check the settings they rely on, apply what is missing.

    Refuses (ConfigurationError) what would make the pipeline misbehave; reports what
    it changed. ``overrides`` take precedence over the environment (see settings.py).
    """
    settings = load_settings(overrides)
    report = InitReport(settings)
    conf = app.conf

    if conf.task_always_eager:
        raise ConfigurationError(
            "task_always_eager is on: subtitle_tasks waits between polls through real workers and "
            "cannot run eagerly; use subtitle_tasks.testing's simulator and a worker in tests instead"
        )
    accepted = set(conf.accept_content or ())
    if not accepted & {"json", "application/json"}:
        raise ConfigurationError(
            f"accept_content={sorted(accepted)} lacks 'json', which subtitle_tasks' messages use"
        )
    if settings.state_url is None:
        raise ConfigurationError(
            "subtitle_tasks keeps request state in Redis: set SUBTITLE_TASKS_REDIS_URL "
            "(the broker is not Redis, so it cannot default to it)"
        )

    from . import tasks  # noqa: F401  (registers the shared tasks on every app)

    # Our tasks in a queue of their own (Settings.step_queue), which the dispatcher step
    # below has every worker of the app consume besides the queues it was started with.
    routes = conf.task_routes
    if routes is None or isinstance(routes, dict):
        routes = dict(routes or {})
        if "subtitle_tasks.*" not in routes:
            routes["subtitle_tasks.*"] = {"queue": settings.step_queue}
            conf.task_routes = routes
            report.changes.append(f"routed subtitle_tasks.* to queue {settings.step_queue!r} (every worker of "
                                  "this app consumes it too)")
    else:
        report.changes.append("task_routes is not a dict: left alone; route subtitle_tasks.* yourself")

    schedule = dict(conf.beat_schedule or {})
    if not any(entry.get("task") == "subtitle_tasks.recover" for entry in schedule.values()):
        # expires: while no worker runs, queued sweeps lapse instead of piling up.
        schedule["subtitle_tasks.recover"] = {"task": "subtitle_tasks.recover", "schedule": RECOVER_EVERY,
                                              "options": {"expires": RECOVER_EVERY}}
        conf.beat_schedule = schedule
        report.changes.append(f"scheduled subtitle_tasks.recover every {RECOVER_EVERY:g}s for celery beat")

    if conf.broker_connection_retry_on_startup is None:
        conf.broker_connection_retry_on_startup = True
        report.changes.append("broker_connection_retry_on_startup=True (workers outlive a broker restart)")

    redis_schemes = ("redis://", "rediss://")
    if str(conf.broker_url or "").startswith(redis_schemes) or (settings.broker_url or "").startswith(redis_schemes):
        from .broker_compat import guard_redis_channel_after_collect

        if guard_redis_channel_after_collect():
            report.changes.append("guarded kombu's Redis channel so a broker restart does not kill workers")

    from .dispatcher import DispatcherStep

    if DispatcherStep not in app.steps["worker"]:
        app.steps["worker"].add(DispatcherStep)
        report.changes.append("added the dispatcher to every worker of this app")
    from . import callback_watch  # callbacks a dead worker held come back within a lease

    callback_watch.install(app, report)
    from . import step_watch  # steps a dead worker held come back within seconds

    step_watch.install(app, report)

    runtime.attach(app, settings)
    from . import worker_metrics

    worker_metrics.install(app, report)
    from . import logs

    if logs.install(settings.log_format):
        report.changes.append("subtitle_tasks logs are JSON lines (SUBTITLE_TASKS_LOG_FORMAT=json)")
    log.info("subtitle_tasks.init_app: %s", report)
    return report


def create_app(**overrides: Any) -> Celery:
    """The dedicated app behind ``celery -A subtitle_tasks worker``."""
    settings = load_settings(overrides)
    broker = settings.broker_url or DEFAULT_BROKER
    # Our workers consume only our queue; the application's callbacks go where the
    # application's workers listen (Celery's default queue unless configured).
    callback_queue = settings.callback_queue or "celery"
    app = Celery("subtitle_tasks", broker=broker, set_as_current=False)
    app.conf.update(
        task_default_queue=settings.step_queue,
        task_ignore_result=True,
        worker_prefetch_multiplier=4,
        broker_connection_retry_on_startup=True,
    )
    # With the broker in Redis, request state can live beside it by default.
    effective = {**overrides, "broker_url": broker, "callback_queue": callback_queue}
    init_app(app, **effective)
    return app
