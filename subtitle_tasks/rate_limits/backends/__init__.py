"""Where shared budgets live: Redis for a fleet, a stub for tests and single processes."""

from .redis import RedisBackend
from .stub import StubBackend

__all__ = ["RedisBackend", "StubBackend"]
