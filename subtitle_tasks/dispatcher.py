"""The dispatcher: turns due entries of the schedule into ordinary, immediate tasks.

Why not Celery countdown/ETA retries: on a Redis broker an ETA task is fetched at
once and held in the worker's memory until due (celery#2218), is delivered again
when its wait passes ``visibility_timeout`` (kombu#337), and after a SIGKILL comes
back only when that timeout expires. Here a waiting generation is one sorted-set
entry in Redis; a worker thread (one per worker process, not a pool slot) claims due
entries with a lease and publishes plain tasks. A claim's lease is short (the
delivery lease, 6 s): a task lost on its way comes due again then. Once a worker
receives it the step watch stretches it to the full lease and, if that worker dies,
hands the step out again within seconds (step_watch.py).

Fairness lives in the claim (``Store.claim_due``), not in queues: each claim shares
its room among the sites with due work and, within a site, between new submissions
and polls, and paces every site against its own quota. So the one step queue holds
at most about one window of any site's steps, and a backlog on one site never keeps
another site's step out of the next claim.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar

from celery import Celery, bootsteps

from . import backpressure
from .settings import Settings
from .state import SUBMIT, Store

log = logging.getLogger("subtitle_tasks.dispatcher")

SUBMIT_TASK = "subtitle_tasks.submit"
POLL_TASK = "subtitle_tasks.poll"
# The step queue holds HORIZON dispatch intervals of what the fleet drains, and at least
# ROOM_FLOOR steps (backpressure.py): two looks, so a fleet with room to spare doubles it
# each look, and far below the delivery lease, so no queued step is handed out twice.
HORIZON = 2
ROOM_FLOOR = 20


def task_for_phase(phase: str) -> str:
    return SUBMIT_TASK if phase == SUBMIT else POLL_TASK


class Dispatcher:
    def __init__(self, store: Store, publish: Callable[[list[tuple[str, str]]], None], *, lease: float, batch: int,
                 pace: int = 0, window: float = 0.0, backlog: Callable[[], int] | None = None,
                 max_backlog: int = 0, holder: Callable[[], str] = lambda: "", horizon: float = 0.0,
                 clock: Callable[[], float] = time.monotonic):
        self.store = store
        # This worker's step-watch id ('' without one): it holds what it claims until the
        # tasks are published, so if it dies in between they are handed out again in seconds.
        self.holder = holder
        self.publish = publish
        self.lease = lease
        self.batch = batch
        # Per site, fleet-wide: at most `pace` steps per `window` for each site (each has
        # its own token and API quota), so a backlog of due steps waits in the schedule
        # rather than as messages bouncing off the limiter, and one site's backlog never
        # spends another's budget.
        self.pace = pace
        self.window = window
        # Backpressure (backpressure.py): the step queue holds `horizon` seconds of what
        # the fleet drains, never more than `max_backlog` messages; the rest waits in the
        # schedule, where the claim is fair among sites and waiting costs nothing. Without
        # a horizon, `max_backlog` messages as the only bound.
        self.backlog = backlog
        self.max_backlog = max_backlog
        self.horizon = horizon
        self.clock = clock
        self.drain = backpressure.DrainRate()
        self._wake = threading.Event()  # wake(): claim now rather than at the next interval
        self._sweep_soon = False

    def wake(self, sweep: bool = False) -> None:
        """Claim at once; with ``sweep``, run the recovery sweep on this pass too (the step
        watch has just made a dead worker's steps due, or its unsettled requests)."""
        self._sweep_soon = self._sweep_soon or sweep
        self._wake.set()

    @classmethod
    def from_settings(cls, store: Store, publish: Callable[[list[tuple[str, str]]], None], settings: Settings,
                      backlog: Callable[[], int] | None = None) -> Dispatcher:
        # The rate limit is per token, i.e. per site: the store applies it to each site
        # with due work (it knows them; no token is read here).
        # A claim leases a step only until a worker receives it (the step watch then
        # stretches it to the full lease), so a message lost on its way comes back soon.
        return cls(store, publish, lease=settings.delivery_lease, batch=settings.dispatch_batch,
                   pace=settings.rate_limit, window=settings.rate_window,
                   backlog=backlog, max_backlog=settings.max_backlog, horizon=HORIZON * settings.dispatch_interval)

    @classmethod
    def for_celery(cls, app: Celery, store: Store, settings: Settings) -> Dispatcher:
        """Publishing step tasks through ``app``, held back by its step queue's depth."""
        return cls.from_settings(store, celery_publisher(app, settings.step_queue, settings.lease), settings,
                                 backlog=celery_backlog(app, settings.step_queue))

    def room(self) -> int:
        """How many steps may be handed out now: the batch, or less where the step queue
        already holds its share (backpressure.py)."""
        if self.backlog is None or not self.max_backlog:
            return self.batch
        depth = self.backlog()
        if not self.horizon:
            return max(0, min(self.batch, self.max_backlog - depth))
        rate = self.drain.observe(self.clock(), depth, self.store.published_count())
        return min(self.batch, backpressure.room(rate, depth, horizon=self.horizon, floor=ROOM_FLOOR,
                                                 ceiling=self.max_backlog))

    def dispatch_once(self) -> int:
        """Claim what is due and publish it; returns how many steps were handed out."""
        room = self.room()
        if room == 0:
            return 0
        holder = self.holder()
        claimed = self.store.claim_due(self.lease, room, self.pace, self.window, holder=holder)
        if not claimed:
            return 0
        try:
            self.publish(claimed)
        except Exception:
            # The broker is away: hand the claims back so they go out as soon as it returns
            # rather than a lease later. (A partly published batch is harmless: a step that
            # already ran is skipped as not due.)
            for generation_id, _ in claimed:
                try:
                    self.store.release(generation_id)
                except Exception:
                    break  # Redis is away too; the leases will expire by themselves
            raise
        try:
            self.store.count_published(len(claimed))
        except Exception as exc:  # the drain rate reads one look low; nothing else depends on it
            log.warning("could not count the published steps (%s)", type(exc).__name__)
        if holder:
            try:
                self.store.step_published(holder, [generation_id for generation_id, _ in claimed])
            except Exception as exc:  # kept holds cost an early, harmless re-run if this worker dies
                log.warning("could not drop the dispatcher's holds (%s)", type(exc).__name__)
        return len(claimed)

    def run(self, stop: threading.Event, interval: float, sweep: Callable[[], object] | None = None,
            sweep_every: float = 60.0) -> None:
        """Loop until ``stop`` is set; never dies of a broker or Redis outage.

        ``sweep`` (recovery) runs every ``sweep_every`` seconds, so a fleet without
        celery beat still finishes notifications whose notifier died.
        """
        failures = 0
        next_sweep = time.monotonic() + sweep_every
        while not stop.is_set():
            try:
                handed_out = self.dispatch_once()
                if sweep is not None and (self._sweep_soon or time.monotonic() >= next_sweep):
                    self._sweep_soon = False
                    next_sweep = time.monotonic() + sweep_every
                    sweep()
                failures = 0
            except Exception as exc:
                failures += 1
                log.warning("dispatch failed (%s: %s); retrying", type(exc).__name__, exc)
                stop.wait(min(interval * 2 ** min(failures, 5), 10.0))
                continue
            if handed_out < self.batch:
                self._wake.wait(interval)
                self._wake.clear()


def celery_publisher(app: Celery, queue: str, lease: float) -> Callable[[list[tuple[str, str]]], None]:
    """Publish claimed steps as plain tasks through one pooled producer per batch.

    A step expires two leases after it was handed out: by then the schedule has handed
    it out again, so a copy still queued behind a backlog is dropped on receipt instead
    of run as a no-op. (Two, not one: expiry is judged on the workers' clocks, which
    may be skewed; everything else here uses the Redis server's clock.)
    """
    def publish(claimed: list[tuple[str, str]]) -> None:
        options: dict[str, str | float] = {"queue": queue, "expires": 2 * lease}
        with app.producer_or_acquire() as producer:
            for generation_id, phase in claimed:
                app.send_task(task_for_phase(phase), args=[generation_id], producer=producer, **options)
    return publish


def celery_backlog(app: Celery, queue: str) -> Callable[[], int]:
    """How many step messages wait in the step queue, on any broker kombu speaks.

    The queue is declared the way the app's workers declare it (same arguments), which
    also makes a first look at a queue nobody has created yet answer 0, not an error.
    """
    def depth() -> int:
        entity = app.amqp.queues[queue]
        with app.pool.acquire(block=True) as conn:
            return int(entity.bind(conn.default_channel).queue_declare().message_count)
    return depth


_running: list[threading.Thread] = []  # this process's dispatcher threads (health checks)
# Who this process's dispatchers claim as: the step watch's worker id, once it runs
# (step_watch.py sets it; '' until then, when claims are held by nobody).
_holder_source: list[Callable[[], str]] = []


def claims_holder() -> str:
    """The id this process's dispatchers claim as ('' for nobody)."""
    return _holder_source[0]() if _holder_source else ""


def hold_claims_as(holder: Callable[[], str]) -> None:
    """Have this process's dispatchers claim as ``holder()`` (the step watch calls this)."""
    _holder_source[:] = [holder]
_dispatchers: list[Dispatcher] = []  # this process's running dispatchers (wake_dispatchers)


def wake_dispatchers(sweep: bool = False) -> None:
    """Have this process's dispatchers claim now instead of at their next interval (and,
    with ``sweep``, run the recovery sweep on that pass)."""
    for dispatcher in list(_dispatchers):
        dispatcher.wake(sweep)


def dispatcher_alive() -> bool:
    """True while this worker process runs a live dispatcher thread."""
    return any(thread.is_alive() for thread in _running)


# Celery ships no types: StartStopStep is Any to mypy, and so is the worker it hands us.
class DispatcherStep(bootsteps.StartStopStep):  # type: ignore[misc]  # subclassing the untyped Celery base
    """Runs a Dispatcher thread in every worker's main process (``init_app`` adds it), and
    has the worker consume the queue the dispatcher sends steps to (Settings.step_queue)
    besides the queues it was started with (``-Q``), so no worker of the app needs to
    be told of it."""

    requires: ClassVar[set[str]] = {"celery.worker.components:Pool"}

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        from .runtime import runtime_for

        # Before the consumer starts: the worker has selected its queues by now (-Q), and
        # the consumer subscribes to what the selection holds when it starts.
        worker.app.amqp.queues.select_add(runtime_for(worker.app).settings.step_queue)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._dispatcher: Dispatcher | None = None

    def start(self, worker: Any) -> None:
        from .callbacks import Notifier
        from .recovery import Recovery
        from .runtime import runtime_for

        runtime = runtime_for(worker.app)
        settings = runtime.settings
        dispatcher = Dispatcher.for_celery(worker.app, runtime.store, settings)
        dispatcher.holder = claims_holder
        notifier = Notifier.from_settings(runtime.store, worker.app, settings)
        recovery = Recovery(runtime.store, notifier.notify, stale=settings.lease)
        sweep = functools.partial(recovery.sweep, repair=False)  # the full scan is beat's job
        self._stop.clear()
        self._thread = threading.Thread(
            target=dispatcher.run, args=(self._stop, settings.dispatch_interval, sweep, settings.lease),
            name="subtitle-tasks-dispatcher", daemon=True)
        self._thread.start()
        _running.append(self._thread)
        _dispatchers.append(dispatcher)
        self._dispatcher = dispatcher
        log.info("dispatcher started (every %ss, lease %ss)", settings.dispatch_interval, settings.lease)

    def stop(self, worker: Any) -> None:
        self._stop.set()
        if self._dispatcher is not None:
            self._dispatcher.wake()  # out of its wait at once
            if self._dispatcher in _dispatchers:
                _dispatchers.remove(self._dispatcher)
        if self._thread is not None:
            self._thread.join(timeout=5)
            if self._thread in _running:
                _running.remove(self._thread)

    shutdown = stop
