"""What the simulator answers: a ``_Reply``, and the JSON:API error documents DatoCMS sends."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import Any

DOC_URL = "https://www.datocms.com/docs/content-management-api/errors"


@dataclass
class _Reply:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False


def _json_reply(status: int, document: Any, headers: dict[str, str] | None = None) -> _Reply:
    body = json.dumps(document, separators=(",", ":")).encode()
    return _Reply(status=status, body=body, headers=dict(headers or {}))


def _error_document(code: str, details: dict[str, Any] | None = None, transient: bool = False) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "code": code,
        "details": details or {},
        "doc_url": f"{DOC_URL}#{code}",
    }
    if transient:
        attributes["transient"] = True
    return {"data": [{"id": secrets.token_hex(6), "type": "api_error", "attributes": attributes}]}


def _error_reply(status: int, code: str, details: dict[str, Any] | None = None,
                 transient: bool = False) -> _Reply:
    return _json_reply(status, _error_document(code, details, transient))


def _not_found() -> _Reply:
    return _error_reply(404, "NOT_FOUND")
