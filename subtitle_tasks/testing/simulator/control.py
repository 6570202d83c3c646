"""The control endpoints: how a test or another process drives and inspects a running simulator.

Paths under ``CONTROL_PREFIX``; no auth, no rate limit, no faults, not in the request log.

* ``GET  /_simulator/state``           accepted POSTs, request counts, jobs, config
* ``GET  /_simulator/requests``        the request log (``?limit=N`` for the last N)
* ``GET  /_simulator/jobs``            every job with its phase and track status
* ``POST /_simulator/config``          update the given config fields (JSON object);
                                       like ``configure()``, ``faults`` is replaced whole
* ``POST /_simulator/reset``           forget jobs, uploads, counters and the log
* ``POST /_simulator/uploads/{id}``    ``{"kind": "no-audio"}`` sets an upload's kind
* ``POST /_simulator/add-upload``      ``{"upload_id", "created_at" (ISO 8601 or Unix
                                       seconds) or "age" (seconds ago), "kind",
                                       "duration", "mux_ready", "environment"}``:
                                       ``add_upload()`` for another process
* ``POST /_simulator/complete-jobs``   finish every running job now (not stuck ones)
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any, Protocol
from urllib.parse import unquote

from .config import SimulatorConfig
from .replies import _json_reply, _Reply
from .routes import RequestRecord, _Request


class Controlled(Protocol):
    """What the control endpoints drive: the Simulator (core.py, which imports this module)."""

    def state(self) -> dict[str, Any]: ...
    def jobs(self) -> list[dict[str, Any]]: ...
    def requests(self) -> list[RequestRecord]: ...
    def configure(self, **fields: Any) -> SimulatorConfig: ...
    def reset(self) -> None: ...
    def complete_all_jobs(self, include_stuck: bool = False) -> int: ...
    def add_upload(self, upload_id: str, *, created_at: datetime | float | str | None = None,
                   age: float | None = None, kind: str = "video", duration: float | None = None,
                   mux_ready: bool = True, environment: str | None = None) -> dict[str, Any]: ...
    def set_upload(self, upload_id: str, kind: str) -> None: ...
    def upload_kind(self, upload_id: str) -> str: ...

CONTROL_PREFIX = "/_simulator/"
_CONTROL_UPLOAD = re.compile(r"/_simulator/uploads/([^/]+)")


def _serve_control(simulator: Controlled, request: _Request) -> _Reply:
    path, method = request.path, request.method
    try:
        if method == "GET" and path == "/_simulator/state":
            return _json_reply(200, simulator.state())
        if method == "GET" and path == "/_simulator/requests":
            return _json_reply(200, {"requests": _logged_requests(simulator, request.query)})
        if method == "GET" and path == "/_simulator/jobs":
            return _json_reply(200, {"jobs": simulator.jobs()})
        if method == "POST" and path == "/_simulator/config":
            new_config = simulator.configure(**_config_fields_from_json(_json_object(request.body)))
            return _json_reply(200, {"config": new_config.to_json()})
        if method == "POST" and path == "/_simulator/reset":
            simulator.reset()
            return _json_reply(200, {"ok": True})
        if method == "POST" and path == "/_simulator/complete-jobs":
            finished = simulator.complete_all_jobs(bool(_json_object(request.body).get("include_stuck")))
            return _json_reply(200, {"completed": finished})
        if method == "POST" and path == "/_simulator/add-upload":
            return _json_reply(200, {"upload": simulator.add_upload(**_add_upload_fields(_json_object(request.body)))})
        match = _CONTROL_UPLOAD.fullmatch(path)
        if method == "POST" and match:
            upload_id, kind = unquote(match.group(1)), _json_object(request.body).get("kind")
            simulator.set_upload(upload_id, str(kind))
            return _json_reply(200, {"upload_id": upload_id, "kind": simulator.upload_kind(upload_id)})
    except (TypeError, ValueError) as error:
        return _json_reply(400, {"error": str(error)})
    return _json_reply(404, {"error": f"no control endpoint {method} {path}"})


def _logged_requests(simulator: Controlled, query: dict[str, list[str]]) -> list[dict[str, Any]]:
    records = simulator.requests()
    limit = int(query.get("limit", ["0"])[0] or 0)
    if limit > 0:
        records = records[-limit:]
    return [record.to_json() for record in records]


def _json_object(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    document = json.loads(body)
    if not isinstance(document, dict):
        raise ValueError("body must be a JSON object")
    return document


def _config_fields_from_json(document: dict[str, Any]) -> dict[str, Any]:
    fields = dict(document)
    if "token" in fields:
        raise ValueError("the token cannot be changed over HTTP")
    for name in ("environments", "immutable_environments"):
        if isinstance(fields.get(name), list):
            fields[name] = frozenset(fields[name])
    return fields


def _add_upload_fields(document: dict[str, Any]) -> dict[str, Any]:
    """``POST /_simulator/add-upload``'s body as add_upload's arguments."""
    fields = dict(document)
    known = {"upload_id", "created_at", "age", "kind", "duration", "mux_ready", "environment"}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"unknown field(s) {unknown}; known: {sorted(known)}")
    if "upload_id" not in fields:
        raise ValueError("upload_id is required")
    return fields
