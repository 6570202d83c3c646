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

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .sites import DEFAULT as DEFAULT_SITE
from .sites import Site, SiteError, SiteRegistry
from .sites import parse as parse_sites


class ConfigurationError(ValueError):
    """A setting is missing or malformed; the message names it."""


def _django_settings() -> Any:
    try:
        from django.conf import settings as django_settings
    except ImportError:
        return None
    try:
        if not django_settings.configured:
            if not os.environ.get("DJANGO_SETTINGS_MODULE"):
                return None
            # LazySettings loads on first attribute access; a project's celery.py usually
            # calls init_app before anything has touched settings.
            _ = django_settings.INSTALLED_APPS
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


def _share(name: str, raw: Any) -> float:
    value = _positive_float(name, raw)
    if value > 1:
        raise ConfigurationError(f"{name} must be a fraction between 0 and 1, got {raw!r}")
    return value


def _choice(name: str, raw: Any, choices: tuple[str, ...]) -> str:
    value = str(raw).strip().lower()
    if value not in choices:
        raise ConfigurationError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
    return value


POLL_POLICIES = ("learned", "exponential")  # schedule.py: the learned schedule, or today's backoff only


def _optional_str(name: str, raw: Any) -> str | None:
    if raw is None:
        return None
    value = str(raw).strip()
    return value or None


def parse_language_list(name: str, raw: Any) -> tuple[str, ...]:
    """Comma-separated (or a list of) language tags, each checked as request_subtitles checks one."""
    from . import validation  # here, not at the top: validation is the edge's, settings load first
    from .errors import InvalidSubtitleRequest

    items = raw.split(",") if isinstance(raw, str) else raw
    if not isinstance(items, (list, tuple)):
        raise ConfigurationError(f"{name} must be comma-separated language tags such as 'it,en', got {raw!r}")
    tags: list[str] = []
    for item in items:
        tag = item.strip() if isinstance(item, str) else item
        if tag == "":
            continue
        try:
            tags.append(validation.language_code(tag, check_supported=False))
        except InvalidSubtitleRequest as exc:
            raise ConfigurationError(f"{name}: {exc.message}") from None
        if tag.split("-")[0].lower() not in validation.SUPPORTED_LANGUAGES:
            raise ConfigurationError(f"{name}: Mux does not caption {tag!r}; supported: "
                                     f"{', '.join(sorted(validation.SUPPORTED_LANGUAGES))}")
    if len({t.lower() for t in tags}) != len(tags):
        raise ConfigurationError(f"{name} names a language twice: {raw!r}")
    return tuple(tags)


def _http_url(name: str, raw: Any) -> str:
    value = str(raw).strip().rstrip("/")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigurationError(f"{name} must be an http(s) URL, got {value!r}")
    return value


def _flag(name: str, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ConfigurationError(f"{name} must be true or false, got {raw!r}")


def is_loopback_host(host: str | None) -> bool:
    """True for localhost and loopback addresses: traffic that never leaves the machine."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _redis_url(name: str, raw: Any) -> str | None:
    value = _optional_str(name, raw)
    if value is None:
        return None
    if urlsplit(value).scheme not in ("redis", "rediss", "unix"):
        raise ConfigurationError(f"{name} must be a redis://, rediss:// or unix:// URL, "
                                 f"got a {urlsplit(value).scheme or 'schemeless'} URL")
    return value


def _broker_url(name: str, raw: Any) -> str | None:
    value = _optional_str(name, raw)
    if value is None:
        return None
    if "://" not in value:
        raise ConfigurationError(f"{name} must be a broker URL such as redis://host:6379/0 or amqp://user:pass@host//")
    return value


STEP_QUEUE = "subtitle_tasks"  # our tasks' queue when SUBTITLE_TASKS_QUEUE is unset


@dataclass(frozen=True)
class Settings:
    """Every knob in one place. Times are in seconds; floats are fine (tests run fast)."""

    api_token: str | None = field(default=None, repr=False)
    api_token_file: str | None = None  # a mounted secret (Docker, Kubernetes); read by workers only
    base_url: str = "https://site-api.datocms.com"
    allow_insecure_http: bool = False  # http:// to a non-loopback host: the token would travel in clear
    environment: str | None = None
    broker_url: str | None = None
    redis_url: str | None = None
    poll_initial: float = 1.0
    poll_max: float = 60.0
    poll_policy: str = "learned"  # "exponential": capped exponential backoff only, as before schedule.py
    poll_target: float = 6.5  # learned schedule: 95 % of ready tracks seen within this many seconds
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
    rate_share: float = 0.8  # of the plan the server announces (X-RateLimit-Limit); the rest is the editors'
    queue: str | None = None  # None: STEP_QUEUE, a queue of our own (step_queue)
    callback_queue: str | None = None  # None: callbacks follow the app's routing
    key_prefix: str = "subtitle_tasks"
    max_callback_bytes: int = 16384  # on_ready + on_error as JSON, per request
    max_joins: int = 100  # requests sharing one generation
    callback_attempts: int = 5  # publish attempts before a callback is given up as undeliverable
    max_server_errors: int = 8  # consecutive 5xx/unreadable answers before a generation fails
    max_response_bytes: int = 1048576  # an API answer larger than this is refused unread
    sites: Mapping[str, Site] = field(default_factory=dict)  # alias -> site, besides the default one
    sites_file: str | None = None  # a JSON file of more sites, re-read when it changes
    metrics_port: int | None = None  # serve /metrics and /stats.json from each worker on this port
    log_format: str = "text"  # "json": one JSON object per log line, with the request's context
    # -- the sweep (sweep.py) --
    auto_languages: tuple[str, ...] = ()  # tags a sweep asks for on new videos; empty: sweeps are off
    sweep_share: float = 0.25  # of a site's per-window API budget one sweep may spend
    # -- the step watch (step_watch.py) --
    heartbeat: float = 0.5  # how often each worker says it is alive
    # A handed-out step no worker has received by then is handed out again. Unset: 6 s,
    # or the lease when that is shorter (a test fleet's 3 s lease, say).
    delivery_lease: float = 6.0
    dead_after: float = 2.0  # a worker silent this long is dead: its held steps are due again now

    @property
    def step_queue(self) -> str:
        """The queue our tasks (the steps above all) are sent to: SUBTITLE_TASKS_QUEUE, else
        :data:`STEP_QUEUE`. Never the app's default queue, where a burst of the app's own
        tasks (a thousand callbacks of a sweep) would queue ahead of every step; init_app
        makes every worker of the app consume it besides its own queues."""
        return self.queue or STEP_QUEUE

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

    def default_site(self) -> Site:
        """The site DATOCMS_API_TOKEN(_FILE), DATOCMS_BASE_URL and DATOCMS_ENVIRONMENT describe."""
        return Site(DEFAULT_SITE, self.base_url, self.environment, token_file=self.api_token_file,
                    token=self.api_token)

    def site_registry(self) -> SiteRegistry:
        return SiteRegistry(self.default_site(), self.sites, self.sites_file)

    def require_token(self) -> str:
        """The default site's API token (DATOCMS_API_TOKEN or the file DATOCMS_API_TOKEN_FILE names).

        Read when a DatoCMS client is built (workers), so a web process needs neither.
        Messages never include the token or the file's content.
        """
        try:
            return self.default_site().read_token()
        except SiteError as exc:
            raise ConfigurationError(str(exc)) from None


# setting attribute -> (environment / Django name, parser)
_SOURCES: dict[str, tuple[str, Callable[[str, Any], Any]]] = {
    "api_token": ("DATOCMS_API_TOKEN", _optional_str),
    "api_token_file": ("DATOCMS_API_TOKEN_FILE", _optional_str),
    "base_url": ("DATOCMS_BASE_URL", _http_url),
    "allow_insecure_http": ("DATOCMS_ALLOW_INSECURE_HTTP", _flag),
    "environment": ("DATOCMS_ENVIRONMENT", _optional_str),
    "broker_url": ("CELERY_BROKER_URL", _broker_url),
    "redis_url": ("SUBTITLE_TASKS_REDIS_URL", _redis_url),
    "poll_initial": ("SUBTITLE_TASKS_POLL_INITIAL", _positive_float),
    "poll_max": ("SUBTITLE_TASKS_POLL_MAX", _positive_float),
    "poll_policy": ("SUBTITLE_TASKS_POLL_POLICY", lambda name, raw: _choice(name, raw, POLL_POLICIES)),
    "poll_target": ("SUBTITLE_TASKS_POLL_TARGET", _positive_float),
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
    "rate_share": ("SUBTITLE_TASKS_RATE_SHARE", _share),
    "queue": ("SUBTITLE_TASKS_QUEUE", _optional_str),
    "callback_queue": ("SUBTITLE_TASKS_CALLBACK_QUEUE", _optional_str),
    "key_prefix": ("SUBTITLE_TASKS_KEY_PREFIX", _optional_str),
    "max_callback_bytes": ("SUBTITLE_TASKS_MAX_CALLBACK_BYTES", _positive_int),
    "max_joins": ("SUBTITLE_TASKS_MAX_JOINS", _positive_int),
    "callback_attempts": ("SUBTITLE_TASKS_CALLBACK_ATTEMPTS", _positive_int),
    "max_server_errors": ("SUBTITLE_TASKS_MAX_SERVER_ERRORS", _positive_int),
    "max_response_bytes": ("SUBTITLE_TASKS_MAX_RESPONSE_BYTES", _positive_int),
    "sites": ("SUBTITLE_TASKS_SITES", lambda name, raw: raw),  # parsed once base_url is known
    "sites_file": ("SUBTITLE_TASKS_SITES_FILE", _optional_str),
    "metrics_port": ("SUBTITLE_TASKS_METRICS_PORT", _positive_int),
    "log_format": ("SUBTITLE_TASKS_LOG_FORMAT", lambda name, raw: _choice(name, raw, ("text", "json"))),
    # -- the sweep (sweep.py) --
    "auto_languages": ("SUBTITLE_TASKS_AUTO_LANGUAGES", parse_language_list),
    "sweep_share": ("SUBTITLE_TASKS_SWEEP_SHARE", _share),
    # -- the step watch (step_watch.py) --
    "heartbeat": ("SUBTITLE_TASKS_HEARTBEAT", _positive_float),
    "delivery_lease": ("SUBTITLE_TASKS_DELIVERY_LEASE", _positive_float),
    "dead_after": ("SUBTITLE_TASKS_DEAD_AFTER", _positive_float),
}

# Plain characters only: the prefix is matched literally in the broker-key checks.
_KEY_PREFIX = re.compile(r"[A-Za-z0-9_.-]{1,64}")

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
    if "sites" in values:
        try:
            values["sites"] = parse_sites(values["sites"], default_base_url=values.get("base_url", defaults.base_url))
        except SiteError as exc:
            raise ConfigurationError(str(exc)) from None
    if "delivery_lease" not in values:
        values["delivery_lease"] = min(defaults.delivery_lease, values.get("lease", defaults.lease))
    settings = Settings(**values)
    _check_consistency(settings, defaults)
    return settings


def _check_consistency(settings: Settings, defaults: Settings) -> None:
    if settings.api_token and settings.api_token_file:
        raise ConfigurationError("set DATOCMS_API_TOKEN or DATOCMS_API_TOKEN_FILE, not both")
    for name, url in [("DATOCMS_BASE_URL", settings.base_url),
                      *((f"site {alias!r} base_url", site.base_url) for alias, site in settings.sites.items())]:
        base = urlsplit(url)
        if base.scheme != "https" and not settings.allow_insecure_http and not is_loopback_host(base.hostname):
            raise ConfigurationError(
                f"{name} {url!r} is not https: the API token would travel in clear; "
                "use https, a loopback address, or set DATOCMS_ALLOW_INSECURE_HTTP=1 on purpose"
            )
    if settings.key_prefix and not _KEY_PREFIX.fullmatch(settings.key_prefix):
        raise ConfigurationError(
            f"SUBTITLE_TASKS_KEY_PREFIX must be 1-64 letters, digits, '_', '.' or '-', got {settings.key_prefix!r}")
    if settings.poll_max < settings.poll_initial:
        raise ConfigurationError(
            f"SUBTITLE_TASKS_POLL_MAX ({settings.poll_max}) is below "
            f"SUBTITLE_TASKS_POLL_INITIAL ({settings.poll_initial})"
        )
    if settings.delivery_lease > settings.lease:
        raise ConfigurationError(
            f"SUBTITLE_TASKS_DELIVERY_LEASE ({settings.delivery_lease}) must not exceed SUBTITLE_TASKS_LEASE "
            f"({settings.lease})")
    # A worker must miss a few beats before it is judged dead (step watch).
    if settings.dead_after < 3 * settings.heartbeat:
        raise ConfigurationError(
            f"SUBTITLE_TASKS_DEAD_AFTER ({settings.dead_after}) must be at least 3x SUBTITLE_TASKS_HEARTBEAT "
            f"({settings.heartbeat})")
    # A poll must finish inside its lease, or a second dispatcher would hand it out again.
    if settings.lease < 3 * settings.http_timeout:
        raise ConfigurationError(
            f"SUBTITLE_TASKS_LEASE ({settings.lease}) must be at least 3x "
            f"SUBTITLE_TASKS_HTTP_TIMEOUT ({settings.http_timeout})"
        )
