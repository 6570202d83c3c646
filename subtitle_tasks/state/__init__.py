"""Where request and generation state lives (one small interface, Redis behind it)."""

from .base import (
    DONE,
    FAILED,
    FINISHING,
    JOB,
    OUTCOME_ERROR,
    OUTCOME_READY,
    READY,
    SUBMIT,
    TRACK,
    WAITING,
    BrokerWrites,
    Created,
    Generation,
    RequestRecord,
    RequestRow,
    Store,
)
from .redis import RedisStore
from .stub import MemoryStore

__all__ = [
    "DONE",
    "FAILED",
    "FINISHING",
    "JOB",
    "OUTCOME_ERROR",
    "OUTCOME_READY",
    "READY",
    "SUBMIT",
    "TRACK",
    "WAITING",
    "BrokerWrites",
    "Created",
    "Generation",
    "MemoryStore",
    "RedisStore",
    "RequestRecord",
    "RequestRow",
    "Store",
]
