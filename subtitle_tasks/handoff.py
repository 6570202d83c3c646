"""Handing callback messages to the broker, in the same transaction as settling when we can.

Two ways, chosen once per process and broker:

* **Transactional** (a Redis broker on the Redis server that holds our state; the
  default, since state defaults to the broker's Redis). Celery builds each callback's
  message as usual and kombu routes it, but the final Redis writes (``LPUSH queue
  message``) are captured instead of sent; ``Store.settle`` runs them inside the Lua
  script that marks the request settled. A worker killed at any instant leaves either
  a settled request with its callbacks queued, or neither: never a second send.
* **Publish, then settle** (RabbitMQ, or a broker on another Redis server). Two systems
  cannot share one transaction, so a process killed after the broker took the
  callbacks but before ``settle`` gets them sent again by recovery. Such a repeat
  carries the same task id, so a consumer keyed on ``self.request.id`` (or built on
  ``OnceTask``) acts once.

On the transactional path Celery's ``after_task_publish`` signal fires when the message
is built, a moment before the transaction queues it.

Tested kombu versions: ``TESTED_KOMBU`` (kombu >= 5.7, < 5.8). Capturing relies on
private parts of kombu's Redis transport that appeared in 5.7: ``Channel.
create_publish_batch(max_size)`` and the ``_publish_batch=`` keyword that
``basic_publish`` passes down to ``_put`` / ``_put_fanout``, which then record their
final commands on it instead of writing them. ``capture_support()`` checks, once per
process and channel class, that the installed kombu is in that range *and* that those
hooks are there with the expected signatures. This module never fails open:

* broker on the state's server, capture supported: transactional;
* broker on the state's server, capture NOT supported: ``HandoffUnsupported`` (falling
  back to publish-then-settle there would silently give up the exactly-once promise);
* broker elsewhere (or not Redis): publish-then-settle, the only way two systems allow.

To support a new kombu, run tests/test_handoff.py against it and widen ``TESTED_KOMBU``
(and the kombu bound in pyproject.toml) together.
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kombu.messaging import Producer

from .broker_compat import describe_range, in_range, kombu_version
from .state.base import BrokerWrites
from .state.redis import database_index

log = logging.getLogger("subtitle_tasks.handoff")

# kombu versions this capture was tested on: (inclusive lower, exclusive upper).
TESTED_KOMBU: tuple[tuple[int, ...], tuple[int, ...]] = ((5, 7), (5, 8))

# The Redis commands kombu's Redis transport ends a publish with; settle.lua runs these.
_SUPPORTED = {"lpush", "pexpire", "publish"}


class NotTransactional(RuntimeError):
    """This attempt to capture the callbacks for the settle transaction failed.

    The caller must treat it as a failed attempt: leave the request ``finishing`` (a
    later notify or the recovery sweep tries again). It must NOT publish the callbacks
    for real instead: the broker shares the state's server, so publishing there outside
    the transaction reopens the window in which a crash sends them twice.
    """


class HandoffUnsupported(RuntimeError):
    """The broker shares the state's Redis, but this kombu cannot capture publishes.

    Raised instead of quietly falling back to publish-then-settle. Install a kombu in
    ``TESTED_KOMBU`` (what pyproject.toml allows), or put the broker on another server.
    """


@dataclass(frozen=True)
class CaptureSupport:
    """Whether kombu's Redis channel can record a publish instead of writing it."""

    kombu_version: str
    problem: str | None = None  # None when supported; else why not

    @property
    def supported(self) -> bool:
        return self.problem is None


def _accepts_var_keyword(func: Any) -> bool:
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _hook_problem(channel_cls: type) -> str | None:
    """What is missing from ``channel_cls`` for capturing, or None."""
    create = getattr(channel_cls, "create_publish_batch", None)
    if not callable(create):
        return f"{channel_cls.__qualname__}.create_publish_batch is missing"
    try:
        names = list(inspect.signature(create).parameters)
    except (TypeError, ValueError):
        names = None
    if names != ["self", "max_size"]:
        return f"{channel_cls.__qualname__}.create_publish_batch has parameters {names}, expected ['self', 'max_size']"
    publish: Any = getattr(channel_cls, "basic_publish", None)  # None: inspect refuses it below
    try:
        names = list(inspect.signature(publish).parameters)[:4]
    except (TypeError, ValueError):
        names = None
    if names != ["self", "message", "exchange", "routing_key"] or not _accepts_var_keyword(publish):
        return f"{channel_cls.__qualname__}.basic_publish cannot pass _publish_batch= through (signature changed)"
    for name in ("_put", "_put_fanout"):
        method = getattr(channel_cls, name, None)
        if method is None or not _accepts_var_keyword(method):
            return f"{channel_cls.__qualname__}.{name} takes no _publish_batch= keyword"
        try:
            source = inspect.getsource(method)
        except (OSError, TypeError):
            continue  # no source installed: the version range and signatures stand in for it
        if "_publish_batch" not in source:
            return f"{channel_cls.__qualname__}.{name} ignores _publish_batch= (it would publish for real)"
    return None


@functools.cache
def capture_support(channel_cls: type | None = None) -> CaptureSupport:
    """Decide, once per process and channel class, whether publishes can be captured.

    ``channel_cls`` defaults to kombu's Redis ``Channel``. Tests reset the decision
    with ``capture_support.cache_clear()``.
    """
    import kombu

    version = str(getattr(kombu, "__version__", "unknown"))
    if not in_range(kombu_version(), TESTED_KOMBU):
        return CaptureSupport(version, f"kombu {version} is outside the tested range {describe_range(TESTED_KOMBU)}")
    if channel_cls is None:
        try:
            from kombu.transport.redis import Channel as RedisChannel
        except ImportError as exc:  # pragma: no cover - kombu[redis] is a dependency
            return CaptureSupport(version, f"kombu's Redis transport cannot be imported ({exc})")
        channel_cls = RedisChannel
    problem = _hook_problem(channel_cls)
    if problem is not None:
        return CaptureSupport(version, f"kombu {version}: {problem}")
    return CaptureSupport(version)


def _redis_channel(producer: Producer) -> Any | None:
    """The producer's kombu Redis channel, or None (another transport)."""
    try:
        from kombu.transport.redis import Channel as RedisChannel
    except ImportError:  # pragma: no cover - kombu[redis] is a dependency
        return None
    channel = producer.channel
    return channel if isinstance(channel, RedisChannel) else None


def _unsupported_message(support: CaptureSupport) -> str:
    return (f"the Celery broker is a Redis on the same server as the subtitle_tasks state, but callbacks "
            f"cannot be queued in the settle transaction: {support.problem}. Needs kombu "
            f"{describe_range(TESTED_KOMBU)} (installed: {support.kombu_version}); refusing to fall back to "
            f"publish-then-settle, which could send a callback twice. Install a tested kombu, or put the "
            f"broker on another server.")


def _server_id(client: Any) -> str:
    return str(client.info("server")["run_id"])


class Handoff:
    """Decides, per broker connection and state client, whether sends can be transactional."""

    def __init__(self) -> None:
        # (broker URI, id of the state's client) -> broker db, refusal, or None (separate systems)
        self._decisions: dict[tuple[str, int], int | HandoffUnsupported | None] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _result(decision: int | HandoffUnsupported | None) -> int | None:
        if isinstance(decision, HandoffUnsupported):
            raise HandoffUnsupported(*decision.args)
        return decision

    def broker_db(self, producer: Producer, store: object) -> int | None:
        """The broker's database index when it shares the store's Redis server, else None.

        None means "another system": publish, then settle. Raises
        ``HandoffUnsupported`` when the broker shares the store's server but this kombu
        cannot capture publishes, and lets a Redis error out while the two servers
        cannot be compared (undecided is not "separate systems").
        """
        channel = _redis_channel(producer)
        state_client = getattr(store, "client", None)  # a RedisStore's; the in-memory stub has none
        if channel is None or state_client is None:
            return None
        broker_client = channel.client
        key = (producer.connection.as_uri(), id(state_client))
        with self._lock:
            if key in self._decisions:
                return self._result(self._decisions[key])
        try:
            same_server = _server_id(broker_client) == _server_id(state_client)
        except Exception as exc:
            # An outage: decide next time. Not "separate systems": if they are one
            # server, publishing now would give up the transaction.
            log.warning("could not compare the broker's Redis with the state's (%s); not sending now",
                        type(exc).__name__)
            raise
        decision: int | HandoffUnsupported | None = None
        if same_server:
            channel_cls: type = type(channel)  # type[Any] would not pass as Hashable to the cache
            support = capture_support(channel_cls)
            if support.supported:
                decision = database_index(broker_client)
            else:
                decision = HandoffUnsupported(_unsupported_message(support))
        with self._lock:
            self._decisions[key] = decision
        if isinstance(decision, HandoffUnsupported):
            log.error("%s", decision)
        else:
            log.info("callbacks are handed to the broker %s",
                     "in the settle transaction" if decision is not None else "before settling (separate systems)")
        return self._result(decision)

    @staticmethod
    def capture(producer: Producer, db: int, send: Callable[[Producer], None]) -> BrokerWrites:
        """Run ``send(p)`` against a producer that records its publishes as Redis writes.

        ``send`` must publish with ``retry=False``: kombu's retry revives a producer on a
        fresh (real) channel, which would publish for real.

        Raises ``HandoffUnsupported`` if this kombu cannot capture (see ``broker_db``),
        and ``NotTransactional`` if the capture went wrong: nothing recorded, or a
        command settle cannot run. Either way the attempt failed; the caller must not
        publish for real instead (see ``NotTransactional``).
        """
        channel = _redis_channel(producer)
        if channel is None:
            raise NotTransactional("the producer is not on a kombu Redis channel")
        channel_cls: type = type(channel)  # type[Any] would not pass as Hashable to the cache
        support = capture_support(channel_cls)
        if not support.supported:
            raise HandoffUnsupported(_unsupported_message(support))
        collector = _Collector()
        # kombu leaves Producer.__init__ unannotated.
        capturing = Producer(_CapturingChannel(channel, collector), exchange=producer.exchange,  # type: ignore[no-untyped-call]
                             auto_declare=False, serializer=producer.serializer)
        send(capturing)
        prefix = getattr(channel, "global_keyprefix", "") or ""
        writes: list[tuple[str, str, str]] = []
        for name, args in collector.commands:
            if name not in _SUPPORTED:
                raise NotTransactional(f"kombu ended a publish with an unexpected {name!r}")
            key, value = args
            writes.append((name, prefix + str(key), str(value)))
        if not any(name in ("lpush", "publish") for name, _, _ in writes):
            raise NotTransactional("capturing the publish recorded no message")
        return BrokerWrites(db=db, commands=tuple(writes))


class _Collector:
    """kombu's publish-batch hook: records a publish's final Redis commands."""

    def __init__(self) -> None:
        self.commands: list[tuple[str, tuple[Any, ...]]] = []

    def add(self, name: str, *args: Any) -> None:
        self.commands.append((name, args))


class _CapturingChannel:
    """A kombu Redis channel whose publishes are recorded instead of written.

    Declarations and routing lookups go to the real channel: they are idempotent and
    must exist before the message does.
    """

    def __init__(self, channel: Any, collector: _Collector):
        self._channel = channel
        self._collector = collector

    def basic_publish(self, message: Any, *args: Any, **kwargs: Any) -> Any:
        return self._channel.basic_publish(message, *args, _publish_batch=self._collector, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._channel, name)


handoff = Handoff()
