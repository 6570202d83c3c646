"""An API request as the simulator reads it: its route, what its headers and body say, and
the ``RequestRecord`` the request log keeps of it."""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from email.message import Message
from typing import Any
from urllib.parse import unquote

_GENERATE = re.compile(r"/uploads/([^/]+)/tracks/generate-subtitles")
_TRACKS = re.compile(r"/uploads/([^/]+)/tracks")
_JOB_RESULT = re.compile(r"/job-results/([^/]+)")


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One API request as the simulator saw it. ``status`` is None when dropped."""

    time: float
    method: str
    path: str
    route: str
    status: int | None
    fault: str | None
    environment: str | None
    body_type: str | None
    authorized: bool
    content_type: str | None
    accept: str | None
    api_version: str | None
    user_agent: str | None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class _Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: Message  # http.client.HTTPMessage: case-insensitive lookups
    body: bytes
    authorized: bool = False
    rate_remaining: int | None = None  # set once the request took a rate-limit slot

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


def _match_api_route(method: str, path: str) -> tuple[str, str | None]:
    """Name the API route of a request, and the id in its path."""
    if path == "/uploads" and method == "GET":
        return "list_uploads", None
    for route, pattern, route_method in (
        ("generate_subtitles", _GENERATE, "POST"),
        ("upload_tracks", _TRACKS, "GET"),
        ("job_result", _JOB_RESULT, "GET"),
    ):
        match = pattern.fullmatch(path)
        if match and method == route_method:
            return route, unquote(match.group(1))
    return "unknown", None


def _bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def _body_type(body: bytes) -> str | None:
    """The JSON:API ``data.type`` of a request body, if it has one."""
    try:
        document = json.loads(body)
    except ValueError:
        return None
    data = document.get("data") if isinstance(document, dict) else None
    kind = data.get("type") if isinstance(data, dict) else None
    return kind if isinstance(kind, str) else None
