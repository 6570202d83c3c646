"""Steps a worker took and died with: handed out again within seconds, not a lease later.

The dispatcher hands each due step out with a lease (dispatcher.py). Without this
module, a step whose worker died came due again only when the lease ran out
(SUBTITLE_TASKS_LEASE, 30 s), and the generation's lock, held in the dead worker's
name, blocked it that long too. With it, on any broker::

    P:stepworkers     zset  worker -> its last heartbeat (server clock)
    P:stephold:{w}    hash  generation id -> when worker w received its step
    P:stepclaim:{w}   hash  generation id -> when w's dispatcher claimed it (until published)

* A claim leases a step only for SUBTITLE_TASKS_DELIVERY_LEASE (6 s): a message lost
  on its way (a worker killed between taking it off the queue and recording it, a
  broker hiccup) comes back after that. The claiming worker holds its claims until
  their tasks are published (P:stepclaim).
* ``task_received`` (worker main process, one Redis call): worker w holds this step,
  prefetched or running, and its lease is stretched to the full lease (step_hold.lua).
  w's id rides along in the request to the pool child, which takes the generation's
  lock, and the notify lock of any request it finishes, in w's name (``w/...``).
* ``task_postrun`` (pool child): the step is over; the hold goes.
* The pool child died running it (``task_failure`` with ``WorkerLostError`` in the
  main process): the step is released at once.
* Every worker beats every SUBTITLE_TASKS_HEARTBEAT; one whose own beats have landed
  for SUBTITLE_TASKS_DEAD_AFTER (2 s) then releases what every worker silent that long
  held or claimed (one script, step_release.lua): its locks are broken, each step still
  leased and unsettled is due now, a generation it had ended has its requests still
  ``finishing`` due for recovery now; and its own dispatcher is woken to hand them out
  and run recovery.

Judging a live worker dead (a long stall) costs little, which is why the threshold
can be seconds: a step is idempotent under its lock. A poll run twice is one more
GET. A submit checks its lock before marking the POST and marks it in a script that
checks the lock again (``Store.advance(fence=...)``), and marks before sending: so a
step whose lock was broken never POSTs, and the new holder of one that had marked
reconciles (finds the track) instead of POSTing again. A notification is settled in
one script that checks the request is still ``finishing``. Callbacks already handed
to an app's workers are not this module's: callback_watch judges those with a lease.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, ClassVar

from celery import Celery, bootsteps, signals

from .heartbeats import LandedBeats
from .metrics import Recorder

log = logging.getLogger("subtitle_tasks.step_watch")

OWNER_KEY = "subtitle_tasks_step_owner"  # request-dict entry: the worker that received the step
STEP_TASKS = frozenset({"subtitle_tasks.submit", "subtitle_tasks.poll"})
PAUSE_AFTER_FAILURE = 5.0  # seconds the received handler stops recording after a Redis error

_connected = False
_connect_lock = threading.Lock()
_watch: StepWatch | None = None  # this worker main process's watch (StepWatchStep)


class StepWatch:
    """One worker main process: its id, the holds it records, its beat-and-release thread."""

    def __init__(self, store: Any, fast_store: Any, *, hostname: str, heartbeat: float, dead_after: float,
                 lease: float = 0.0,
                 on_released: Callable[[], object] = lambda: None, clock: Callable[[], float] = time.monotonic,
                 app: Any = None):
        self.id = f"{uuid.uuid4().hex[:12]}@{hostname}"
        self.app = app  # the signal handlers act only for this app's tasks
        self.store = store            # the runtime's (retrying) store: beats and releases
        self.fast_store = fast_store  # short timeouts, no retries: the consumer loop's store
        self.heartbeat = heartbeat
        self.dead_after = dead_after
        self.lease = lease  # a received step's claim is stretched to this (step_hold.lua)
        self.on_released = on_released
        self.clock = clock
        self.beats = LandedBeats(clock)
        self._paused_until = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.metrics = Recorder(store)

    # -- the consumer thread: no more than one Redis call, never raises ----------------
    def hold(self, request: Any) -> None:
        if self.clock() < self._paused_until:
            return
        generation_id = _generation_of(request)
        if generation_id is None:
            return
        try:
            self.fast_store.step_hold(self.id, generation_id, time.time(), self.lease)
        except Exception as exc:
            self._paused_until = self.clock() + PAUSE_AFTER_FAILURE
            log.warning("could not record a received step (%s); not recording for %ss", type(exc).__name__,
                        PAUSE_AFTER_FAILURE)
            return
        request.request_dict[OWNER_KEY] = self.id

    # -- the beat thread -----------------------------------------------------------------
    def beat(self) -> None:
        if not self.store.step_beat(self.id) and self.beats.since is not None:
            log.error("this worker missed its heartbeats for %ss and was presumed dead: steps it held were handed "
                      "out again (a duplicate poll at worst)", self.dead_after)

    def may_release(self) -> bool:
        """Judge others dead only after our own beats have landed for ``dead_after`` (heartbeats.py)."""
        return self.beats.steady_for(self.dead_after)

    def tick(self) -> int:
        """One beat, then one release of dead workers' steps; returns how many were made due."""
        try:
            self.beat()
        except Exception as exc:
            self.beats.failed()
            log.warning("step watch heartbeat failed (%s: %s)", type(exc).__name__, exc)
            return 0
        self.beats.landed()
        if not self.may_release():
            return 0
        released, dead = self.store.release_dead_steps(self.dead_after)
        if dead:
            self.metrics.steps_released("dead_worker", released, workers=len(dead))
            log.warning("workers silent for %ss are presumed dead: %s; %d of their steps are due again",
                        self.dead_after, ", ".join(dead[:10]), released)
        if released:
            self.on_released()
        return int(released)

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception as exc:  # an outage: the holds stay recorded for the next tick
                log.warning("step watch: %s: %s", type(exc).__name__, exc)
            self._stop.wait(self.heartbeat)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="subtitle-tasks-step-watch", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 2.0) -> None:
        """The worker is shutting down, its pool done: stop beating, hand back what is left
        (steps prefetched and never run) and leave the registry."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        try:
            released = self.store.release_worker_steps(self.id)
            if released:
                self.metrics.steps_released("shutdown", released)
                self.on_released()
        except Exception as exc:  # then the others release them once this worker is silent
            log.warning("step watch could not hand back its steps at shutdown (%s)", type(exc).__name__)


def current_id() -> str:
    """This worker process's step-watch id ('' where none runs): its dispatcher's claims
    are held under it until published (dispatcher.hold_claims_as)."""
    watch = _watch
    return watch.id if watch is not None else ""


def _generation_of(request: Any) -> str | None:
    """The generation id a step request carries (its one argument), or None."""
    args = getattr(request, "args", None)
    if isinstance(args, (list, tuple)) and len(args) == 1 and isinstance(args[0], str):
        return args[0]
    return None


def owner_of(task: Any) -> str:
    """The worker that received this step (the lock's owner), or '' without a step watch."""
    try:
        value = task.request.get(OWNER_KEY)
    except Exception:
        return ""
    return value if isinstance(value, str) else ""


class StepWatchStep(bootsteps.StartStopStep):  # type: ignore[misc]  # subclassing the untyped Celery base
    """Starts this worker's step watch (``install`` adds it to the app's workers)."""

    requires: ClassVar[set[str]] = {"celery.worker.components:Pool"}

    def start(self, worker: Any) -> None:
        global _watch
        from .dispatcher import hold_claims_as, wake_dispatchers
        from .runtime import runtime_for

        runtime = runtime_for(worker.app)
        settings = runtime.settings
        _watch = StepWatch(runtime.store, runtime.consumer_store, hostname=worker.hostname,
                           heartbeat=settings.heartbeat, dead_after=settings.dead_after, lease=settings.lease,
                           on_released=lambda: wake_dispatchers(sweep=True), app=worker.app)
        hold_claims_as(current_id)
        _watch.start()
        log.info("step watch started (worker %s, dead after %ss)", _watch.id, settings.dead_after)

    # No stop(): the beat must go on while a warm shutdown lets the pool finish its steps,
    # or the others would judge this worker dead and run those steps beside it. The
    # worker_shutdown signal (sent once the pool is done) closes the watch.


# -- signal handlers: never raise, one Redis call at most --------------------------------

def _on_task_received(sender: Any = None, request: Any = None, **_: Any) -> None:
    watch = _watch
    if watch is None or request is None or getattr(request, "name", None) not in STEP_TASKS:
        return
    if getattr(sender, "app", None) is watch.app:
        watch.hold(request)


def _store_of(task: Any) -> Any:
    from .runtime import runtime_for

    return runtime_for(getattr(task, "app", None)).store


def _on_task_postrun(sender: Any = None, task: Any = None, args: Any = None, **_: Any) -> None:
    # In the pool child: the step is over (done, skipped or raised); its hold goes.
    task = task or sender
    if getattr(task, "name", None) not in STEP_TASKS:
        return
    owner = owner_of(task)
    generation_id = args[0] if isinstance(args, (list, tuple)) and args else None
    if not owner or not isinstance(generation_id, str):
        return
    try:
        _store_of(task).step_unhold(owner, generation_id)
    except Exception as exc:  # the hold outlives the step: a later release costs one early poll
        log.warning("could not drop the hold on step %s (%s)", generation_id, type(exc).__name__)


def _on_task_failure(sender: Any = None, exception: Any = None, args: Any = None, **_: Any) -> None:
    # Only the main process has a watch (pool children forget it): there a failure of a
    # step means its pool child died running it. Release it now rather than a lease later.
    watch = _watch
    if watch is None or getattr(sender, "name", None) not in STEP_TASKS:
        return
    if type(exception).__name__ != "WorkerLostError":
        return
    generation_id = args[0] if isinstance(args, (list, tuple)) and args else None
    if not isinstance(generation_id, str):
        return
    try:
        if watch.store.release_lost_steps(watch.id, [generation_id]):
            watch.metrics.steps_released("lost_child", 1)
            watch.on_released()
    except Exception as exc:
        log.warning("could not release step %s of a lost pool child (%s)", generation_id, type(exc).__name__)


def _on_task_revoked(sender: Any = None, request: Any = None, **_: Any) -> None:
    # Expired or revoked before it ran (main process): this delivery is over.
    watch = _watch
    if watch is None or request is None or getattr(request, "name", None) not in STEP_TASKS:
        return
    generation_id = _generation_of(request)
    if generation_id is None:
        return
    try:
        watch.store.step_unhold(watch.id, generation_id)
    except Exception as exc:  # the hold outlives the delivery: a later release costs one early poll
        log.warning("could not drop the hold on step %s (%s)", generation_id, type(exc).__name__)


def _on_worker_shutdown(**_: Any) -> None:
    if _watch is not None:
        _watch.close()


def _forget_after_fork() -> None:
    global _watch
    _watch = None  # a pool child: its parent's thread did not come along, nor does its watch


os.register_at_fork(after_in_child=_forget_after_fork)


def install(app: Celery, report: Any = None) -> None:
    """Watch the steps this app's workers hold (``init_app`` calls it)."""
    global _connected
    with _connect_lock:
        if not _connected:
            signals.task_received.connect(_on_task_received, weak=False)
            signals.task_postrun.connect(_on_task_postrun, weak=False)
            signals.task_failure.connect(_on_task_failure, weak=False)
            signals.task_revoked.connect(_on_task_revoked, weak=False)
            signals.worker_shutdown.connect(_on_worker_shutdown, weak=False)
            _connected = True
    if StepWatchStep not in app.steps["worker"]:
        app.steps["worker"].add(StepWatchStep)
        if report is not None:
            report.changes.append("watching the steps this app's workers hold (a worker that dies holding one has "
                                  "it handed out again within seconds)")
