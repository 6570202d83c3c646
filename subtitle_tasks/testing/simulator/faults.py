"""Faults the simulator injects into API answers, and the answers they give.

``config.faults`` maps a fault name to a probability (0..1). They are drawn
for each API request, before any other handling, from
``random.Random(config.seed)``; the first hit in this order wins:

* ``drop``       close the connection without answering
* ``html_502``   502 with an HTML gateway page (``text/html``)
* ``http_500``   500 ``INTERNAL_SERVER_ERROR`` api_error, not transient
* ``http_503``   503 ``SERVICE_UNAVAILABLE``, ``transient: true``
* ``transient``  409 ``ENVIRONMENT_NOT_READY``, ``transient: true`` (a 4xx on
                 purpose: only the ``transient`` flag says it may be retried)
* ``rate_429``   429 ``RATE_LIMIT_EXCEEDED`` from "platform load", reset 1 s
* ``huge_body``  200 with a JSON document of ``HUGE_BODY_BYTES`` (5 MiB) of
                 padding, which a careful client refuses to read whole
* ``redirect``   302 to the same path on ``REDIRECT_HOST`` (another host,
                 which never resolves); a client must not follow it
* ``drop_after_commit``  POST generate-subtitles only: the job is created
                 normally, then the connection is closed without the 202
* ``echo_token`` job results and track lists only: every track in a 200
                 answer is named ``"echo: Bearer <the request's token>"``, as a
                 careless server echoing credentials would (nothing else changes)

``slow`` is drawn on its own and combines with the others: the answer (or
the drop) comes ``slow_seconds`` late. A faulted request never creates a job,
except with ``drop_after_commit``. ``drop_after_commit`` and ``echo_token``
alter an answer that was handled normally; they are recorded only when they
changed something.
"""

from __future__ import annotations

import json

from .replies import _error_reply, _Reply
from .routes import _Request

# Order matters: it is the order faults are drawn in, and the first hit wins.
EXCLUSIVE_FAULTS = ("drop", "html_502", "http_500", "http_503", "transient", "rate_429", "huge_body", "redirect")
FAULT_NAMES = (*EXCLUSIVE_FAULTS, "slow", "drop_after_commit", "echo_token")
# Routes whose 200 answers hold upload_track resources (what echo_token alters).
TRACK_ROUTES = ("job_result", "upload_tracks")

# Size of the huge_body fault's answer: well past any sane client cap.
HUGE_BODY_BYTES = 5 << 20
# Where the redirect fault points: another host (.invalid never resolves).
REDIRECT_HOST = "https://elsewhere.invalid"

_GATEWAY_PAGE = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>gateway</center>\r\n"
    b"</body>\r\n</html>\r\n"
)


def _fault_reply(fault: str, request: _Request) -> _Reply:
    if fault == "drop":
        return _Reply(status=0, drop=True)
    if fault == "html_502":
        return _Reply(status=502, body=_GATEWAY_PAGE, content_type="text/html; charset=utf-8")
    if fault == "http_500":
        return _error_reply(500, "INTERNAL_SERVER_ERROR")
    if fault == "http_503":
        return _error_reply(503, "SERVICE_UNAVAILABLE", transient=True)
    if fault == "transient":
        return _error_reply(409, "ENVIRONMENT_NOT_READY", transient=True)
    if fault == "huge_body":
        return _Reply(status=200, body=_huge_document())
    if fault == "redirect":
        return _Reply(status=302, content_type="text/plain",
                      headers={"Location": REDIRECT_HOST + request.path})
    reply = _error_reply(429, "RATE_LIMIT_EXCEEDED", {"reason": "platform_load"})
    reply.headers["X-RateLimit-Reset"] = "1"
    return reply


def _echo_token(reply: _Reply, token: str | None) -> bool:
    """Name every track of a 200 answer after the bearer token; whether any was."""
    if reply.status != 200 or not token:
        return False
    document = json.loads(reply.body)
    data = document.get("data")
    if isinstance(data, dict) and data.get("type") == "job_result":
        payload = data["attributes"].get("payload") or {}
        data = payload.get("data")
    tracks = [item for item in (data if isinstance(data, list) else [data])
              if isinstance(item, dict) and item.get("type") == "upload_track"]
    for track in tracks:
        track["attributes"]["name"] = f"echo: Bearer {token}"
    if tracks:
        reply.body = json.dumps(document, separators=(",", ":")).encode()
    return bool(tracks)


def _huge_document() -> bytes:
    padding = HUGE_BODY_BYTES - len(b'{"data":null,"meta":{"padding":""}}')
    return b'{"data":null,"meta":{"padding":"' + b"x" * padding + b'"}}'
