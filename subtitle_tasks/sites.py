"""Sites: the DatoCMS projects one fleet serves, each with its own token and quota.

A site is named by an alias; requests, generations, logs and error dicts carry the
alias, never a token. Configured as ``SUBTITLE_TASKS_SITES`` (JSON), a file named by
``SUBTITLE_TASKS_SITES_FILE`` (re-read when it changes, so a site can be added
without a restart), or ``init_app(app, sites={...})``::

    {"shop": {"token_file": "/run/secrets/shop-token"},
     "blog": {"token_env": "BLOG_DATOCMS_TOKEN", "environment": "staging"}}

Each entry names where its token is (``token_env`` or ``token_file``, read only where
a DatoCMS client is built, i.e. in workers) and optionally ``environment`` and
``base_url``. The site without an alias (``DEFAULT``) is the one ``DATOCMS_API_TOKEN``,
``DATOCMS_BASE_URL`` and ``DATOCMS_ENVIRONMENT`` describe, as before sites existed.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeGuard
from urllib.parse import urlsplit

DEFAULT = ""  # the alias of the site the DATOCMS_* variables describe
_ALIAS = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
_ENTRY_KEYS = frozenset({"token_env", "token_file", "environment", "base_url"})


class SiteError(ValueError):
    """A site entry is malformed, or its token cannot be read; the message names the site."""


@dataclass(frozen=True)
class Site:
    alias: str
    base_url: str
    environment: str | None = None
    token_env: str | None = None
    token_file: str | None = None
    token: str | None = field(default=None, repr=False)  # the default site's DATOCMS_API_TOKEN

    @property
    def label(self) -> str:
        """How logs and error dicts name it."""
        return self.alias or "default"

    def read_token(self) -> str:
        """The site's API token; messages never include it or the file's content."""
        name = f"site {self.label!r}"
        if self.token_file:
            try:
                with open(self.token_file, encoding="utf-8") as handle:
                    token = handle.read().strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise SiteError(f"{name}: token file {self.token_file!r} cannot be read "
                                f"({type(exc).__name__})") from None
            if not token:
                raise SiteError(f"{name}: token file {self.token_file!r} is empty")
            return token
        token = os.environ.get(self.token_env, "").strip() if self.token_env else (self.token or "")
        if not token:
            where = f"environment variable {self.token_env}" if self.token_env else \
                "DATOCMS_API_TOKEN or DATOCMS_API_TOKEN_FILE"
            raise SiteError(f"{name}: no API token ({where} is not set in the worker's environment)")
        return token


def valid_alias(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and bool(_ALIAS.fullmatch(value))


def parse(raw: Any, *, default_base_url: str, source: str = "SUBTITLE_TASKS_SITES") -> dict[str, Site]:
    """A JSON object (text or mapping) of alias -> entry, validated; raises SiteError."""
    if isinstance(raw, (str, bytes)):
        try:
            raw = json.loads(raw)
        except ValueError as exc:
            raise SiteError(f"{source} is not valid JSON ({exc})") from None
    if not isinstance(raw, Mapping):
        raise SiteError(f"{source} must be a JSON object of alias -> site")
    sites = {}
    for alias, entry in raw.items():
        if not valid_alias(alias):
            raise SiteError(f"{source}: site alias {alias!r} must be 1-32 of a-z, 0-9, '_' and '-'")
        if not isinstance(entry, Mapping) or set(entry) - _ENTRY_KEYS:
            raise SiteError(f"{source}: site {alias!r} must be an object with keys among "
                            f"{', '.join(sorted(_ENTRY_KEYS))}")
        if bool(entry.get("token_env")) == bool(entry.get("token_file")):
            raise SiteError(f"{source}: site {alias!r} needs exactly one of token_env and token_file")
        for key in _ENTRY_KEYS:
            if entry.get(key) is not None and not isinstance(entry[key], str):
                raise SiteError(f"{source}: site {alias!r}: {key} must be a string")
        base_url = (entry.get("base_url") or default_base_url).strip().rstrip("/")
        if urlsplit(base_url).scheme not in ("http", "https") or not urlsplit(base_url).netloc:
            raise SiteError(f"{source}: site {alias!r}: base_url must be an http(s) URL")
        sites[alias] = Site(alias, base_url, entry.get("environment") or None, entry.get("token_env") or None,
                            entry.get("token_file") or None)
    return sites


class SiteRegistry:
    """The sites of one configuration: fixed ones, plus a file re-read when it changes."""

    def __init__(self, default: Site, fixed: Mapping[str, Site], path: str | None = None):
        self.default = default
        self._fixed = dict(fixed)
        self._path = path
        self._lock = threading.Lock()
        self._loaded: dict[str, Site] = {}
        self._stamp: tuple[float, int] | None = None
        if path:
            self._reload()

    def get(self, alias: str | None) -> Site | None:
        """The site named ``alias`` (None or "" for the default), or None when unknown."""
        if not alias:
            return self.default
        site = self._fixed.get(alias) or self._loaded.get(alias)
        if site is None and self._path and self._reload():
            site = self._loaded.get(alias)  # a site added since: no restart needed
        return site

    def aliases(self) -> list[str]:
        return sorted({*self._fixed, *self._loaded})

    def _reload(self) -> bool:
        """Re-read the sites file if it changed; True when it did."""
        assert self._path is not None
        try:
            info = os.stat(self._path)
        except FileNotFoundError:
            # Not there (yet): an optional mount with no sites. Looked for again when an
            # unknown alias is asked for.
            stamp: tuple[float, int] | None = None
            with self._lock:
                changed, self._loaded, self._stamp = self._stamp is not None, {}, None
            return changed
        except OSError as exc:
            raise SiteError(f"SUBTITLE_TASKS_SITES_FILE {self._path!r} cannot be read ({type(exc).__name__})") \
                from None
        stamp = (info.st_mtime, info.st_size)
        with self._lock:
            if stamp == self._stamp:
                return False
            with open(self._path, encoding="utf-8") as handle:
                self._loaded = parse(handle.read(), default_base_url=self.default.base_url,
                                     source="SUBTITLE_TASKS_SITES_FILE")
            self._stamp = stamp
            return True
