"""Callbacks a worker took and died with: back on the queue within a lease.

On a Redis broker a message a worker has received but not finished sits in kombu's
``unacked`` hash; if the worker is SIGKILLed, kombu puts it back only after the
broker's ``visibility_timeout`` (an hour by default). For our callbacks (messages
carrying the ``subtitle_tasks_callback`` header) the workers of an app that called
``init_app`` keep a record in the state Redis instead::

    P:cbworkers        zset  worker -> its last heartbeat (server clock)
    P:cbworker:{w}     hash  broker (which broker's unacked hash its holds are in),
                             fence (holds received before it are restore-only)
    P:cbhold:{w}       hash  task id -> "delivery tag|once|received at|request|kind|index"

* ``task_received`` (worker main process, one Redis call): "worker w holds this
  delivery". The hold's ``w|tag`` rides along in the request to the pool child.
* ``task_prerun`` (pool child, one Redis call): the callback started; the hold goes.
  For an ``OnceTask`` the hold goes only at ``task_postrun``: one that dies mid-run is
  sent again and OnceTask still runs it once.
* Every worker beats every lease/4 (one thread) and sweeps as often (another, so a
  sweep waiting for the broker never delays a beat): a worker silent for a lease is
  dead, as judged only by a worker whose own beats have landed for that lease (after
  an outage of the state Redis everyone is silent and nobody is dead). Each of its
  holds is claimed by exactly one sweeper (an atomic compare-and-delete) and its
  message is *restored*: moved from the unacked hash back to its queue in one Redis
  transaction (as kombu's own restore does), so the same message and task id run at
  once and kombu never restores it a second time. If the message is no longer unacked,
  the child had accepted it (early ack) and died before starting, or an OnceTask died
  mid-run: it is *re-sent* (``Notifier.resend``, same task id). ``Recovery.sweep``
  (each worker's dispatcher) runs the same sweep.

Never sent twice by this: a hold is dropped when the callback starts (a started plain
callback is not sent again); a restore happens only while the unacked entry is still
the dead worker's delivery (its unacked-index time matches the hold's); nothing is
re-sent for a worker that was stopping or whose consumer reconnected since it received
(kombu puts those messages back itself), nor for a hold older than the visibility
timeout (kombu's own restore may have run). Kombu/Celery private shapes this leans on
are checked; anything unexpected disables the watch (logged once), which leaves the
broker's visibility timeout in charge, as before.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from celery import Celery, bootsteps, signals

from .callbacks import CALLBACK_HEADER
from .heartbeats import LandedBeats
from .once import OnceTask
from .settings import Settings

log = logging.getLogger("subtitle_tasks.callback_watch")

HOLD_KEY = "subtitle_tasks_hold"  # request-dict entry the received handler adds: "worker|tag"
MOVED_TOLERANCE = 1.0  # seconds between kombu's unacked-index time and our hold's for one delivery
PAUSE_AFTER_FAILURE = 5.0  # seconds the received handler stops recording after a Redis error
IDENTITY_TTL = 300.0  # seconds a process trusts the broker id it read

RESTORED, ABSENT, MOVED, UNKNOWN = "restored", "absent", "moved", "unknown"

_connected = False
_connect_lock = threading.Lock()
_worker: _Worker | None = None  # this worker process's watch (set by WatchStep)
_warned: set[str] = set()
_identities: weakref.WeakKeyDictionary[Celery, dict[str, tuple[float, str | None]]] = weakref.WeakKeyDictionary()


def _warn_once(key: str, message: str, *args: Any) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(message, *args)


# -- holds ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Hold:
    tag: str
    once: bool
    received_at: float  # the receiving worker's clock
    request_id: str
    kind: str
    index: int

    def encode(self) -> str:
        return f"{self.tag}|{int(self.once)}|{self.received_at:.6f}|{self.request_id}|{self.kind}|{self.index}"

    @classmethod
    def decode(cls, value: str) -> Hold | None:
        try:
            tag, once, received_at, header = value.split("|", 3)
            request_id, kind, index = header.rsplit("|", 2)
            return cls(tag, once == "1", float(received_at), request_id, kind, int(index))
        except ValueError:
            return None

    @classmethod
    def from_header(cls, tag: str, once: bool, received_at: float, header: str) -> Hold | None:
        return cls.decode(f"{tag}|{int(once)}|{received_at:.6f}|{header}")


def is_once(task: Any) -> bool:
    return isinstance(task, OnceTask)


def record_received(store: Any, worker_id: str, request: Any, now: float) -> bool:
    """The received handler's work: record a hold for one of our callbacks. True if recorded."""
    request_dict = request.request_dict
    header = request_dict.get(CALLBACK_HEADER)
    tag = getattr(request.message, "delivery_tag", None)
    if not header or not tag or "|" in str(tag):
        return False
    hold = Hold.from_header(str(tag), is_once(request.task), now, str(header))
    if hold is None:
        return False
    store.watch_hold(worker_id, request.id, hold.encode())
    request_dict[HOLD_KEY] = f"{worker_id}|{tag}"
    return True


_unreleased: list[tuple[str, str, str]] = []  # (worker, task id, tag) this process could not release yet


def release(store: Any, hold_ref: str, task_id: str) -> None:
    """Drop a hold ("worker|tag") because its callback started (or, for OnceTask, ended).

    A failed release is kept and tried again at this process's next release: a hold
    left behind would make a later sweep send a callback that ran.
    """
    worker_id, _, tag = hold_ref.rpartition("|")
    pending = [*_unreleased[:], (worker_id, task_id, tag)]
    _unreleased.clear()
    for item in pending:
        try:
            store.watch_release(*item)
        except Exception as exc:
            _unreleased.append(item)
            log.warning("could not release callback hold %s (%s); will retry", item[1], type(exc).__name__)


# -- the broker side ----------------------------------------------------------------------

_REQUIRED = {"channel": ("unacked_key", "unacked_index_key", "_do_restore_message", "_lookup", "conn_or_acquire",
                         "visibility_timeout"),
             "qos": ("restore_by_tag", "_remove_from_indices")}


def redis_channel(channel: Any) -> Any | None:
    """``channel`` if it is a kombu Redis channel of the shape this module relies on, else None."""
    try:
        from kombu.transport.redis import Channel as RedisChannel
    except ImportError:  # pragma: no cover
        return None
    if not isinstance(channel, RedisChannel):
        return None
    missing = [f"Channel.{a}" for a in _REQUIRED["channel"] if not hasattr(channel, a)]
    missing += [f"QoS.{a}" for a in _REQUIRED["qos"] if not hasattr(type(channel).QoS, a)]
    if missing:
        _warn_once("shape", "kombu's Redis transport lacks %s: callbacks held by dead workers wait for the "
                            "visibility timeout", ", ".join(missing))
        return None
    return channel


def _key(client: Any, command: str, key: str) -> str:
    """``key`` as ``command`` must name it on ``client``: kombu's prefixing client adds its
    ``global_keyprefix`` by itself only for the commands it lists."""
    if command in getattr(client, "PREFIXED_SIMPLE_COMMANDS", ()):
        return key
    return (getattr(client, "global_keyprefix", "") or "") + key


def broker_id(channel: Any, key_prefix: str) -> str:
    """An id for the broker database (and kombu key prefix) ``channel`` talks to, kept in it
    as ``{key_prefix}:broker_id`` (a name no callback queue may take: validation.py)."""
    key = f"{key_prefix}:broker_id"
    with channel.conn_or_acquire() as client:
        client.setnx(_key(client, "SETNX", key), uuid.uuid4().hex)
        value = client.get(_key(client, "GET", key))
    return value.decode() if isinstance(value, bytes) else str(value)


class KombuBroker:
    """Restores one delivery from kombu's unacked hash; one connection per sweep."""

    def __init__(self, app: Celery, key_prefix: str):
        self.app = app
        self.key_prefix = key_prefix
        self._conn: Any = None
        self._channel: Any = None

    def _open(self) -> Any | None:
        if self._conn is None:
            self._conn = self.app.connection_for_read()
            self._channel = redis_channel(self._conn.default_channel)
        return self._channel

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.release()
        self._conn = self._channel = None

    def identity(self) -> str | None:
        # Cached a while per app: a dead worker on another broker is looked at every sweep.
        known = _identities.setdefault(self.app, {})
        cached = known.get(self.key_prefix)
        if cached is not None and time.monotonic() - cached[0] < IDENTITY_TTL:
            return cached[1]
        channel = self._open()
        value = broker_id(channel, self.key_prefix) if channel is not None else None
        known[self.key_prefix] = (time.monotonic(), value)
        return value

    @property
    def visibility_timeout(self) -> float:
        channel = self._open()
        return float(channel.visibility_timeout) if channel is not None else 0.0

    def restore(self, tag: str, task_id: str, received_at: float) -> str:
        """Put delivery ``tag`` back on its queue if it is still the delivery received at ``received_at``."""
        from kombu.utils.encoding import bytes_to_str
        from kombu.utils.json import loads

        channel = self._open()
        if channel is None:
            return UNKNOWN
        outcome: list[str] = []

        def attempt(pipe: Any) -> None:
            outcome.clear()
            raw = pipe.hget(channel.unacked_key, tag)
            score = pipe.zscore(_key(pipe, "ZSCORE", channel.unacked_index_key), tag)
            pipe.multi()
            if raw is None:
                outcome.append(ABSENT)
                return
            if score is None or abs(float(score) - received_at) > MOVED_TOLERANCE:
                outcome.append(MOVED)  # redelivered since: another consumer's delivery now
                return
            try:
                payload, exchange, routing_key = loads(bytes_to_str(raw))  # type: ignore[no-untyped-call]  # kombu is untyped
                same = payload["headers"]["id"] == task_id
            except (ValueError, TypeError, KeyError):
                same = False
            if not same or not channel._lookup(exchange, routing_key):
                _warn_once("payload", "an unacked message did not look as expected (tag %s); left to the "
                                      "visibility timeout", tag)
                outcome.append(UNKNOWN)
                return
            queued = len(pipe)
            channel.qos._remove_from_indices(tag, pipe)
            channel._do_restore_message(payload, exchange, routing_key, pipe)
            if len(pipe) < queued + 3:  # zrem, hdel and at least one push
                raise _Abort()
            outcome.append(RESTORED)

        with channel.conn_or_acquire() as client:
            try:
                client.transaction(attempt, channel.unacked_key)
            except _Abort:
                _warn_once("restore", "kombu queued no restore for tag %s; left to the visibility timeout", tag)
                return UNKNOWN
        return outcome[0] if outcome else UNKNOWN


class _Abort(Exception):
    pass


# -- the sweep ------------------------------------------------------------------------------

class Watch:
    """Finds dead workers' holds and puts their callbacks back. Any number may run at once."""

    def __init__(self, store: Any, broker: Any, resend: Callable[[str, str, int], bool], *, stale: float,
                 limit: int = 1000, clock: Callable[[], float] = time.time):
        self.store = store
        self.broker = broker
        self.resend = resend
        self.stale = stale
        self.limit = limit
        self.clock = clock

    def sweep(self) -> dict[str, int]:
        dead = self.store.watch_dead(self.stale, self.limit)
        if not dead:
            return {}
        counts = {RESTORED: 0, "resent": 0}
        mine: str | None = None
        try:
            for worker_id, broker, fence in dead:
                if not broker:
                    # Never learnt its broker (so recorded nothing), or its registration expired.
                    self.store.watch_forget(worker_id, self.stale)
                    continue
                if mine is None:
                    mine = self.broker.identity() or ""
                if broker != mine:
                    continue  # on another broker: that broker's workers sweep it
                for task_id, value in self.store.watch_holds(worker_id).items():
                    outcome = self._recover(worker_id, task_id, value, fence)
                    if outcome in counts:
                        counts[outcome] += 1
                self.store.watch_forget(worker_id, self.stale)
        except Exception as exc:  # an outage: what is left stays recorded for the next sweep
            log.warning("callback watch sweep stopped (%s: %s)", type(exc).__name__, exc)
        summary = {f"callbacks_{k}": v for k, v in counts.items() if v}
        if summary:
            log.warning("callbacks held by dead workers put back: %s", summary)
        return summary

    def _recover(self, worker_id: str, task_id: str, value: str, fence: float | None) -> str:
        hold = Hold.decode(value)
        if hold is None:
            self.store.watch_release(worker_id, task_id, value.split("|", 1)[0])
            _warn_once("hold", "dropped an unreadable callback hold %r", value)
            return "dropped"
        if not self.store.watch_release(worker_id, task_id, hold.tag):
            return "taken"  # another sweeper has it
        try:
            where: str = self.broker.restore(hold.tag, task_id, hold.received_at)
        except Exception as exc:
            # Nothing was moved (the restore is one transaction): try again next sweep.
            self.store.watch_hold(worker_id, task_id, value)
            raise RuntimeError(f"restoring callback {task_id} failed: {exc!r}") from exc
        if where != ABSENT:
            return where
        # Acked, so the pool child had accepted it: it died before starting (the hold
        # would be gone otherwise) or, for an OnceTask, while running. Not if kombu may
        # have put it back itself: the worker was stopping or its consumer reconnected
        # after receiving it, or the visibility timeout has passed.
        if fence is not None and hold.received_at < fence:
            return "left"
        if self.clock() - hold.received_at > self.broker.visibility_timeout - self.stale:
            return "left"
        try:
            sent = self.resend(hold.request_id, hold.kind, hold.index)
        except Exception:
            if hold.once:  # a second send of an OnceTask is harmless; a lost one is not
                self.store.watch_hold(worker_id, task_id, value)
            raise
        return "resent" if sent else "gone"


def sweep(store: Any) -> dict[str, int]:
    """Recovery's hook: sweep, if this process is a watching worker whose own heartbeats
    have been landing for a lease (so a silent worker is silent, not our outage)."""
    worker = _worker
    if worker is None or not worker.may_sweep() or not hasattr(store, "watch_dead"):
        return {}
    try:
        return _sweep_with(store, worker.app, worker.settings)
    except Exception as exc:  # never in the way of the rest of recovery
        log.warning("callback watch sweep failed (%s: %s)", type(exc).__name__, exc)
        return {}


def _sweep_with(store: Any, app: Celery, settings: Settings) -> dict[str, int]:
    from .callbacks import Notifier

    if hasattr(Notifier, "from_settings"):
        notifier = Notifier.from_settings(store, app, settings)
    else:  # pragma: no cover
        notifier = Notifier(store, app, lock_ttl=settings.lease, default_queue=settings.callback_queue)
    broker = KombuBroker(app, settings.key_prefix)
    try:
        return Watch(store, broker, notifier.resend, stale=settings.lease).sweep()
    finally:
        broker.close()


# -- the worker side --------------------------------------------------------------------------

class _Worker:
    """One worker main process: its id, heartbeat thread and the received handler's store."""

    def __init__(self, app: Celery, hostname: str, settings: Settings, store: Any, fast_store: Any):
        self.app = app
        self.id = f"{uuid.uuid4().hex[:12]}@{hostname}"
        self.settings = settings
        self.store = store            # the runtime's (retrying) store: heartbeats and sweeps
        self.fast_store = fast_store  # short timeouts, no retries: the consumer loop's store
        self.broker: str | None = None
        self._learnt_at = 0.0
        self.fence = 0.0
        self.recording = False
        self.beats = LandedBeats()
        self._paused_until = 0.0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._off = threading.Event()
        self.threads: list[threading.Thread] = []

    # main thread, no I/O: signal handlers may run these
    def fence_now(self, stopping: bool = False) -> None:
        self.fence = float("inf") if stopping else max(self.fence, time.time())
        self._wake.set()

    def hold(self, request: Any) -> None:
        if not self.recording or time.monotonic() < self._paused_until:
            return
        try:
            record_received(self.fast_store, self.id, request, time.time())
        except Exception as exc:
            self._paused_until = time.monotonic() + PAUSE_AFTER_FAILURE
            log.warning("could not record a received callback (%s); not recording for %ss",
                        type(exc).__name__, PAUSE_AFTER_FAILURE)

    def start(self) -> None:
        # Two threads: the heartbeat must never wait behind a sweep (which may wait for
        # the broker), or a live worker would look dead.
        self.threads = [threading.Thread(target=target, name=f"subtitle-tasks-callback-{name}", daemon=True)
                        for name, target in (("watch-beat", self.run_beat), ("watch-sweep", self.run_sweep))]
        for thread in self.threads:
            thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self.fence_now(stopping=True)
        self._stop.set()
        self._wake.set()
        for thread in self.threads:
            if thread is not threading.current_thread():
                thread.join(timeout)

    def _learn_broker(self) -> bool:
        with self.app.connection_for_read() as conn:
            channel = conn.default_channel
            if redis_channel(channel) is None:
                if conn.transport.driver_type != "redis":
                    log.info("callback watch off: the %s broker redelivers a dead worker's messages itself",
                             conn.transport.driver_type)
                return False
            self.broker = broker_id(channel, self.settings.key_prefix)
        self._learnt_at = time.monotonic()
        return True

    def beat(self) -> None:
        known = self.store.watch_beat(self.id, self.broker, self.fence)
        if not known and self.recording:
            log.error("this worker missed its heartbeats for a lease and was presumed dead: callbacks it had "
                      "prefetched were put back and may run twice")
        self.recording = True

    def _interval(self) -> float:
        return max(0.05, self.settings.lease / 4)

    def may_sweep(self) -> bool:
        """Judge others dead only after our own beats have landed for a whole lease: after
        an outage of the state Redis every worker's last beat is old, none is dead."""
        return self.beats.steady_for(self.settings.lease)

    def run_beat(self) -> None:
        while not self._stop.is_set():
            if self.broker is not None:  # learnt by the sweep thread; until then nothing is recorded
                try:
                    self.beat()
                except Exception as exc:
                    self.beats.failed()
                    log.warning("callback watch heartbeat failed (%s: %s)", type(exc).__name__, exc)
                else:
                    self.beats.landed()
            elif self._off.is_set():
                return
            self._wake.wait(self._interval())
            self._wake.clear()
        try:  # the last word: stopping, so nothing of ours is re-sent, only restored
            if self.broker is not None:
                self.store.watch_beat(self.id, self.broker, float("inf"))
        except Exception:
            pass

    def run_sweep(self) -> None:
        while not self._stop.is_set():
            try:
                if self.broker is None:
                    if not self._learn_broker():
                        self._off.set()  # not a Redis broker (or not one we understand): nothing to watch
                        return
                    self._wake.set()  # beat now: recording starts with the first beat
                elif time.monotonic() - self._learnt_at > IDENTITY_TTL:
                    self._learn_broker()  # the broker db may have been replaced
                if self.may_sweep():
                    _sweep_with(self.store, self.app, self.settings)
            except Exception as exc:
                log.warning("callback watch sweep: %s: %s", type(exc).__name__, exc)
            self._stop.wait(self._interval())


class WatchStep(bootsteps.StartStopStep):  # type: ignore[misc]  # subclassing the untyped Celery base
    """Starts this worker's callback watch (``install`` adds it to the app's workers)."""

    requires: ClassVar[set[str]] = {"celery.worker.components:Pool"}

    def start(self, worker: Any) -> None:
        global _worker
        from .runtime import runtime_for

        runtime = runtime_for(worker.app)
        _worker = _Worker(worker.app, worker.hostname, runtime.settings, runtime.store, runtime.consumer_store)
        _worker.start()
        log.info("callback watch started (worker %s)", _worker.id)

    def stop(self, worker: Any) -> None:
        if _worker is not None:
            _worker.fence_now(stopping=True)

    shutdown = stop


class WatchConsumerStep(bootsteps.StartStopStep):  # type: ignore[misc]  # subclassing the untyped Celery base
    """On a consumer restart Celery drops what it had received and kombu may put it back:
    those holds become restore-only."""

    def stop(self, consumer: Any) -> None:
        if _worker is not None:
            _worker.fence_now()

    shutdown = stop


# -- signal handlers: never raise, one Redis call at most ------------------------------------

def _on_task_received(sender: Any = None, request: Any = None, **_: Any) -> None:
    worker = _worker
    if worker is None or request is None:
        return
    try:
        if getattr(sender, "app", None) is worker.app:
            worker.hold(request)
    except Exception:  # pragma: no cover - hold() catches its own
        pass


def _hold_ref(task: Any) -> str | None:
    try:
        value = task.request.get(HOLD_KEY)
    except Exception:
        return None
    return value if isinstance(value, str) and value else None


def _release_for(task: Any, task_id: str | None) -> None:
    hold_ref = _hold_ref(task)
    if hold_ref is None or task_id is None:
        return
    try:
        from .runtime import runtime_for

        release(runtime_for(getattr(task, "app", None)).store, hold_ref, task_id)
    except Exception as exc:
        log.warning("could not release callback hold %s (%s)", task_id, type(exc).__name__)


def _on_task_prerun(sender: Any = None, task_id: str | None = None, task: Any = None, **_: Any) -> None:
    if task is not None and not is_once(task):
        _release_for(task, task_id)


def _on_task_postrun(sender: Any = None, task_id: str | None = None, task: Any = None, **_: Any) -> None:
    if task is not None and is_once(task):
        _release_for(task, task_id)


def _on_task_ended(sender: Any = None, request: Any = None, task_id: str | None = None, **_: Any) -> None:
    # Revoked or expired before it ran, failed (in the main process too: its pool child
    # was lost), or retried under a new message: this delivery is over, whatever its
    # worker does next.
    try:
        context = request if request is not None else getattr(sender, "request", None)
        hold_ref = context.get(HOLD_KEY) if context is not None else None
        task_id = task_id or getattr(context, "id", None)
        if isinstance(hold_ref, str) and hold_ref and task_id:
            from .runtime import runtime_for

            release(runtime_for(getattr(sender, "app", None)).store, hold_ref, task_id)
    except Exception as exc:
        log.warning("could not release a finished callback's hold (%s)", type(exc).__name__)


def _on_worker_shutting_down(**_: Any) -> None:
    if _worker is not None:
        _worker.fence_now(stopping=True)  # a signal handler: no I/O here, the thread writes it


def _on_worker_shutdown(**_: Any) -> None:
    if _worker is not None:
        _worker.stop()


def _forget_worker_after_fork() -> None:
    global _worker
    _worker = None  # a pool child: its parent's threads did not come along, nor does its watch


os.register_at_fork(after_in_child=_forget_worker_after_fork)


def install(app: Celery, report: Any = None) -> None:
    """Watch this app's workers' callbacks (``init_app`` calls it)."""
    global _connected
    with _connect_lock:
        if not _connected:
            signals.task_received.connect(_on_task_received, weak=False)
            signals.task_prerun.connect(_on_task_prerun, weak=False)
            signals.task_postrun.connect(_on_task_postrun, weak=False)
            for ended in (signals.task_revoked, signals.task_failure, signals.task_retry):
                ended.connect(_on_task_ended, weak=False)
            signals.worker_shutting_down.connect(_on_worker_shutting_down, weak=False)
            signals.worker_shutdown.connect(_on_worker_shutdown, weak=False)
            _connected = True
    if WatchStep not in app.steps["worker"]:
        app.steps["worker"].add(WatchStep)
        app.steps["consumer"].add(WatchConsumerStep)
        if report is not None:
            report.changes.append("watching callbacks this app's workers hold (a worker that dies holding one "
                                  "has it put back within a lease)")
