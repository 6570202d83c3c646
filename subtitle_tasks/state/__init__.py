"""Where request and generation state lives (one small interface, Redis behind it)."""

from .base import (  # noqa: F401
    DONE, FAILED, FINISHING, JOB, OUTCOME_ERROR, OUTCOME_READY, READY, SUBMIT, TRACK, WAITING,
    BrokerWrites, Created, Generation, RequestRecord, Store,
)
from .redis import RedisStore  # noqa: F401
from .stub import MemoryStore  # noqa: F401
