"""One frozen settings object, resolved in one documented order.

Each setting is looked up, first hit wins, in:

1. ``overrides`` passed to :func:`load_settings` (tests, ``init_app(app, **overrides)``);
2. the process environment (12-factor: the worker's token lives here);
3. Django settings with the same name, when Django is installed and configured;
4. the default below.

Values are validated once, at start, so a typo fails the worker (or the web request
that enqueues) with a message naming the variable, not an hour later in a poll.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit


class ConfigurationError(ValueError):
    """A setting is missing or malformed; the message names it."""


def _django_settings() -> Any:
    try:
        from django.conf import settings as django_settings  # type: ignore[import-not-found]
    except ImportError:
        return None
    try:
        if not django_settings.configured:
            if not os.environ.get("DJANGO_SETTINGS_MODULE"):
                return None
            # LazySettings loads on first attribute access; a project's celery.py usually
            # calls init_app before anything has touched settings.
            getattr(django_settings, "INSTALLED_APPS")
    except Exception:  # a half-configured Django must not break a plain Celery worker
        return None
    return django_settings


def _positive_float(name: str, raw: Any) -> float:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{name} must be a number of seconds, got {raw!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise ConfigurationError(f"{name} must be a positive number of seconds, got {raw!r}")
    return value


def _positive_int(name: str, raw: Any) -> int:
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{name} must be a whole number, got {raw!r}") from None
    if value <= 0:
        raise ConfigurationError(f"{name} must be positive, got {raw!r}")
    return value


def _optional_str(name: str, raw: Any) -> str | None:
    if raw is None:
        return None
    value = str(raw).strip()
    return value or None


def _http_url(name: str, raw: Any) -> str:
    value = str(raw).strip().rstrip("/")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigurationError(f"{name} must be an http(s) URL, got {value!r}")
    return value


def _redis_url(name: str, raw: Any) -> str | None:
    value = _optional_str(name, raw)
    if value is None:
        return None
    if urlsplit(value).scheme not in ("redis", "rediss", "unix"):
        raise ConfigurationError(f"{name} must be a redis://, rediss:// or unix:// URL, got a {urlsplit(value).scheme or 'schemeless'} URL")
    return value


def _broker_url(name: str, raw: Any) -> str | None:
    value = _optional_str(name, raw)
    if value is None:
        return None
    if "://" not in value:
        raise ConfigurationError(f"{name} must be a broker URL such as redis://host:6379/0 or amqp://user:pass@host//")
    return value


@dataclass(frozen=True)
class Settings:
    """Every knob in one place. Times are in seconds; floats are fine (tests run fast)."""

    api_token: str | None = field(default=None, repr=False)
    base_url: str = "https://site-api.datocms.com"
    environment: str | None = None
    broker_url: str | None = None
    redis_url: str | None = None
    poll_initial: float = 1.0
    poll_max: float = 60.0
    deadline: float = 2 * 60 * 60.0
    http_timeout: float = 10.0
    lease: float = 30.0
    dispatch_interval: float = 1.0
    dispatch_batch: int = 500
    max_backlog: int = 500
    retention: float = 7 * 24 * 60 * 60.0
    submit_grace: float = 300.0
    rate_limit: int = 55
    rate_window: float = 3.0
    queue: str | None = None  # None: the app's default queue (ours is "subtitle_tasks")
    callback_queue: str | None = None  # None: callbacks follow the app's routing
    key_prefix: str = "subtitle_tasks"

    @property
    def state_url(self) -> str | None:
        """Where request state lives: SUBTITLE_TASKS_REDIS_URL, else a Redis broker."""
        if self.redis_url:
            return self.redis_url
        if self.broker_url and urlsplit(self.broker_url).scheme in ("redis", "rediss"):
            return self.broker_url
        return None

    def require_state_url(self) -> str:
        url = self.state_url
        if url is None:
            raise ConfigurationError(
                "no Redis for request state: set SUBTITLE_TASKS_REDIS_URL "
                "(or use a redis:// CELERY_BROKER_URL, which it defaults to)"
            )
        return url

    def require_token(self) -> str:
        if not self.api_token:
            raise ConfigurationError("DATOCMS_API_TOKEN is not set in the worker's environment")
        return self.api_token


# setting attribute -> (environment / Django name, parser)
_SOURCES: dict[str, tuple[str, Callable[[str, Any], Any]]] = {
    "api_token": ("DATOCMS_API_TOKEN", _optional_str),
    "base_url": ("DATOCMS_BASE_URL", _http_url),
    "environment": ("DATOCMS_ENVIRONMENT", _optional_str),
    "broker_url": ("CELERY_BROKER_URL", _broker_url),
    "redis_url": ("SUBTITLE_TASKS_REDIS_URL", _redis_url),
    "poll_initial": ("SUBTITLE_TASKS_POLL_INITIAL", _positive_float),
    "poll_max": ("SUBTITLE_TASKS_POLL_MAX", _positive_float),
    "deadline": ("SUBTITLE_TASKS_DEADLINE", _positive_float),
    "http_timeout": ("SUBTITLE_TASKS_HTTP_TIMEOUT", _positive_float),
    "lease": ("SUBTITLE_TASKS_LEASE", _positive_float),
    "dispatch_interval": ("SUBTITLE_TASKS_DISPATCH_INTERVAL", _positive_float),
    "dispatch_batch": ("SUBTITLE_TASKS_DISPATCH_BATCH", _positive_int),
    "max_backlog": ("SUBTITLE_TASKS_MAX_BACKLOG", _positive_int),
    "retention": ("SUBTITLE_TASKS_RETENTION", _positive_float),
    "submit_grace": ("SUBTITLE_TASKS_SUBMIT_GRACE", _positive_float),
    "rate_limit": ("SUBTITLE_TASKS_RATE_LIMIT", _positive_int),
    "rate_window": ("SUBTITLE_TASKS_RATE_WINDOW", _positive_float),
    "queue": ("SUBTITLE_TASKS_QUEUE", _optional_str),
    "callback_queue": ("SUBTITLE_TASKS_CALLBACK_QUEUE", _optional_str),
    "key_prefix": ("SUBTITLE_TASKS_KEY_PREFIX", _optional_str),
}

ENVIRONMENT_NAMES = {attr: name for attr, (name, _) in _SOURCES.items()}


def load_settings(overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Resolve every setting (overrides > environment > Django settings > default) and validate."""
    overrides = dict(overrides or {})
    unknown = set(overrides) - set(_SOURCES)
    if unknown:
        raise ConfigurationError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    environ = os.environ if environ is None else environ
    django = _django_settings()
    defaults = Settings()
    values: dict[str, Any] = {}
    for attr, (name, parse) in _SOURCES.items():
        if attr in overrides:
            raw = overrides[attr]
        elif environ.get(name, "") != "":
            raw = environ[name]
        elif django is not None and getattr(django, name, None) not in (None, ""):
            raw = getattr(django, name)
        else:
            continue
        parsed = parse(name, raw)
        if parsed is not None:
            values[attr] = parsed
    settings = Settings(**values)
    _check_consistency(settings, defaults)
    return settings


def _check_consistency(settings: Settings, defaults: Settings) -> None:
    if settings.poll_max < settings.poll_initial:
        raise ConfigurationError(
            f"SUBTITLE_TASKS_POLL_MAX ({settings.poll_max}) is below SUBTITLE_TASKS_POLL_INITIAL ({settings.poll_initial})"
        )
    # A poll must finish inside its lease, or a second dispatcher would hand it out again.
    if settings.lease < 3 * settings.http_timeout:
        raise ConfigurationError(
            f"SUBTITLE_TASKS_LEASE ({settings.lease}) must be at least 3x SUBTITLE_TASKS_HTTP_TIMEOUT ({settings.http_timeout})"
        )
