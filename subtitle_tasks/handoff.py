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
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

from kombu import Producer

from .state import BrokerWrites
from .state.redis import database_index

log = logging.getLogger("subtitle_tasks.handoff")

# The Redis commands kombu's Redis transport ends a publish with; settle.lua runs these.
_SUPPORTED = {"lpush", "pexpire", "publish"}


class NotTransactional(RuntimeError):
    """The broker cannot take our callbacks inside the settle transaction."""


class _Collector:
    """kombu's publish-batch hook: records a publish's final Redis commands."""

    def __init__(self) -> None:
        self.commands: list[tuple[str, tuple]] = []

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


def _redis_channel(producer: Producer) -> Any | None:
    """The producer's kombu Redis channel, if it can capture publishes (kombu >= 5.7)."""
    try:
        from kombu.transport.redis import Channel as RedisChannel
    except ImportError:  # pragma: no cover - kombu[redis] is a dependency
        return None
    channel = producer.channel
    if isinstance(channel, RedisChannel) and hasattr(channel, "create_publish_batch"):
        return channel
    return None


def _server_id(client: Any) -> str:
    return str(client.info("server")["run_id"])


class Handoff:
    """Decides, per broker connection and state client, whether sends can be transactional."""

    def __init__(self) -> None:
        self._decisions: dict[tuple, int | None] = {}
        self._lock = threading.Lock()

    def broker_db(self, producer: Producer, store: Any) -> int | None:
        """The broker's database index when it shares the store's Redis server, else None."""
        channel = _redis_channel(producer)
        state_client = getattr(store, "client", None)  # a RedisStore's; the in-memory stub has none
        if channel is None or state_client is None:
            return None
        broker_client = channel.client
        key = (producer.connection.as_uri(), id(state_client))
        with self._lock:
            if key in self._decisions:
                return self._decisions[key]
        try:
            same_server = _server_id(broker_client) == _server_id(state_client)
        except Exception as exc:  # an outage: decide next time, publish-then-settle now
            log.warning("could not compare the broker's Redis with the state's (%s)", type(exc).__name__)
            return None
        decision = database_index(broker_client) if same_server else None
        with self._lock:
            self._decisions[key] = decision
        log.info("callbacks are handed to the broker %s",
                 "in the settle transaction" if decision is not None else "before settling (separate systems)")
        return decision

    @staticmethod
    def capture(producer: Producer, db: int, send: Callable[[Producer], None]) -> BrokerWrites:
        """Run ``send(p)`` against a producer that records its publishes as Redis writes.

        ``send`` must publish with ``retry=False``: kombu's retry revives a producer on a
        fresh (real) channel, which would publish for real.
        """
        channel = _redis_channel(producer)
        if channel is None:
            raise NotTransactional("the producer is not on a kombu Redis channel")
        collector = _Collector()
        capturing = Producer(_CapturingChannel(channel, collector), exchange=producer.exchange,
                             auto_declare=False, serializer=producer.serializer)
        send(capturing)
        prefix = getattr(channel, "global_keyprefix", "") or ""
        writes = []
        for name, args in collector.commands:
            if name not in _SUPPORTED:
                raise NotTransactional(f"kombu ended a publish with an unexpected {name!r}")
            key, value = args
            writes.append((name, prefix + str(key), str(value)))
        if not any(name in ("lpush", "publish") for name, _, _ in writes):
            raise NotTransactional("capturing the publish recorded no message")
        return BrokerWrites(db=db, commands=tuple(writes))


handoff = Handoff()
