"""DatoCMSClient against an HTTP-level fake transport: no network, no sleeping."""

from __future__ import annotations

import io
import json
import logging
import pickle
import socket
import threading
import time
from collections import deque
from datetime import datetime, timezone
from typing import Any

import pytest
import requests
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict
from urllib3.exceptions import (
    ConnectTimeoutError,
    MaxRetryError,
    NameResolutionError,
    NewConnectionError,
    ReadTimeoutError,
)
from urllib3.exceptions import (
    ProtocolError as Urllib3ProtocolError,
)

from subtitle_tasks.datocms import (
    DatoCMSClient,
    DatoCMSError,
    Forbidden,
    InvalidRequest,
    InvalidType,
    JobFailed,
    MalformedResource,
    NetworkError,
    NotFound,
    PermanentError,
    ProtocolError,
    RateLimited,
    RateLimiter,
    RetryableError,
    SandboxImmutable,
    ServerError,
    TransientAPIError,
    Unauthorized,
    UnexpectedServerError,
    Upload,
    UploadTrack,
    parse_api_errors,
    parse_job_result,
)

TOKEN = "s3cr3t-t0ken-abcdef0123456789"
BASE = "https://site-api.datocms.com"


# ------------------------------------------------------------------ fakes


class FakeTransport(BaseAdapter):
    """Records every prepared request and replays scripted answers in order."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[requests.PreparedRequest] = []
        self.timeouts: list[Any] = []
        self.script: deque = deque()

    def reply(self, status: int = 200, json_body: Any = None, *, body: Any = None,
              headers: dict[str, str] | None = None, reason: str = "", delay: float = 0.0) -> FakeTransport:
        """Script one answer; ``body`` may be a file-like raw stream, ``delay``
        seconds pass before the headers "arrive"."""
        if body is None:
            body = b"" if json_body is None else json.dumps(json_body).encode()
        elif isinstance(body, str):
            body = body.encode()
        hdrs = {"Content-Type": "application/json"} if json_body is not None else {}
        hdrs.update(headers or {})
        self.script.append(("reply", status, body, hdrs, reason, delay))
        return self

    def fail(self, exc: BaseException) -> FakeTransport:
        self.script.append(("fail", exc))
        return self

    def send(self, request, stream=False, timeout=None, verify=True, cert=None, proxies=None):
        self.requests.append(request)
        self.timeouts.append(timeout)
        if not self.script:
            raise AssertionError(f"unexpected request {request.method} {request.url}")
        item = self.script.popleft()
        if item[0] == "fail":
            exc = item[1]
            if isinstance(exc, requests.RequestException) and exc.request is None:
                exc.request = request  # as requests does: the request rides along
            raise exc
        _, status, body, hdrs, reason, delay = item
        if delay:
            time.sleep(delay)
        response = requests.Response()
        response.status_code = status
        response.reason = reason
        # The client streams (stream=True) and reads the raw body itself.
        response.raw = body if hasattr(body, "read") else io.BytesIO(body)
        response.headers = CaseInsensitiveDict(hdrs)
        response.url = request.url
        response.request = request
        response.connection = self
        return response

    def close(self) -> None:
        pass


class FakeLimiter:
    def __init__(self, refuse: list[float] | None = None) -> None:
        self.acquired = 0
        self.penalties: list[float] = []
        self.refuse = deque(refuse or [])

    def acquire(self) -> None:
        self.acquired += 1
        if self.refuse:
            raise RateLimited("shared quota spent", retry_after=self.refuse.popleft())

    def penalize(self, seconds: float) -> None:
        self.penalties.append(seconds)


@pytest.fixture
def transport() -> FakeTransport:
    return FakeTransport()


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def make_client(transport, sleeps):
    def factory(**kwargs) -> DatoCMSClient:
        session = requests.Session()
        session.trust_env = False
        session.mount("https://", transport)
        session.mount("http://", transport)
        kwargs.setdefault("session", session)
        kwargs.setdefault("sleep", sleeps.append)
        kwargs.setdefault("rng", lambda: 1.0)
        return DatoCMSClient(TOKEN, **kwargs)

    return factory


@pytest.fixture
def client(make_client) -> DatoCMSClient:
    return make_client()


def api_error(code: str, *, transient: bool = False, details: dict | None = None, id: str = "err-1") -> dict:
    attributes: dict[str, Any] = {
        "code": code,
        "doc_url": f"https://www.datocms.com/docs/content-management-api/errors#{code}",
        "details": details or {},
    }
    if transient:
        attributes["transient"] = True
    return {"data": [{"id": id, "type": "api_error", "attributes": attributes}]}


def track_resource(status: str = "ready", *, track_id: str = "trk-1", upload_id: str | None = "up-1",
                   error: str | None = None) -> dict:
    obj: dict[str, Any] = {
        "type": "upload_track",
        "id": track_id,
        "attributes": {
            "type": "subtitles",
            "name": "Italiano",
            "language_code": "it-IT",
            "closed_captions": False,
            "status": status,
            "error": error,
        },
    }
    if upload_id is not None:
        obj["relationships"] = {"upload": {"data": {"type": "upload", "id": upload_id}}}
    return obj


def job_result(status: int, payload: Any, *, id: str = "34") -> dict:
    return {"data": {"type": "job_result", "id": id, "attributes": {"status": status, "payload": payload}}}


JOB_ACCEPTED = {"data": {"type": "job", "id": "4235"}}


def connect_refused() -> requests.ConnectionError:
    reason = NewConnectionError(None, "Failed to establish a new connection: [Errno 111] Connection refused")
    return requests.ConnectionError(MaxRetryError(None, "/x", reason))


def dns_failure() -> requests.ConnectionError:
    reason = NameResolutionError("site-api.datocms.com", None, socket.gaierror("Name or service not known"))
    return requests.ConnectionError(MaxRetryError(None, "/x", reason))


def connect_timeout() -> requests.ConnectTimeout:
    return requests.ConnectTimeout(MaxRetryError(None, "/x", ConnectTimeoutError(None, "connect timed out")))


def read_timeout() -> requests.ReadTimeout:
    return requests.ReadTimeout(ReadTimeoutError(None, "/x", "Read timed out. (read timeout=10)"))


def connection_dropped() -> requests.ConnectionError:
    return requests.ConnectionError(
        Urllib3ProtocolError("Connection aborted.", ConnectionResetError(104, "Connection reset by peer"))
    )


# --------------------------------------------------------------- requests


def test_generate_subtitles_sends_documented_request(client, transport):
    transport.reply(202, JOB_ACCEPTED)
    assert client.generate_subtitles("up-1", "it-IT", name="Italiano") == "4235"

    (req,) = transport.requests
    assert req.method == "POST"
    assert req.url == f"{BASE}/uploads/up-1/tracks/generate-subtitles"
    assert req.headers["Authorization"] == f"Bearer {TOKEN}"
    assert req.headers["Accept"] == "application/json"
    assert req.headers["X-Api-Version"] == "3"
    assert req.headers["Content-Type"] == "application/vnd.api+json"
    assert req.headers["User-Agent"].startswith("subtitle-tasks/")
    assert "X-Environment" not in req.headers
    assert json.loads(req.body) == {
        "data": {"type": "upload_track", "attributes": {"language_code": "it-IT", "name": "Italiano"}}
    }
    assert transport.timeouts == [10.0]


def test_name_is_optional_and_body_type_selectable(client, transport):
    transport.reply(202, JOB_ACCEPTED)
    client.generate_subtitles("up-1", "en", body_type="subtitles_generation")
    assert json.loads(transport.requests[0].body) == {
        "data": {"type": "subtitles_generation", "attributes": {"language_code": "en"}}
    }


def test_get_requests_have_no_body_or_content_type(client, transport):
    transport.reply(200, {"data": []})
    client.list_tracks("up-1")
    (req,) = transport.requests
    assert req.method == "GET"
    assert req.body is None
    assert "Content-Type" not in req.headers
    assert req.headers["X-Api-Version"] == "3"


def test_environment_header_base_url_and_timeout(make_client, transport):
    client = make_client(environment="sandbox-1", base_url="https://dato.example.test/api/", timeout=(2.0, 7.5))
    transport.reply(200, {"data": []})
    client.list_tracks("up-1")
    (req,) = transport.requests
    assert req.headers["X-Environment"] == "sandbox-1"
    assert req.url == "https://dato.example.test/api/uploads/up-1/tracks"
    assert transport.timeouts == [(2.0, 7.5)]


def test_path_segments_are_quoted(client, transport):
    transport.reply(202, JOB_ACCEPTED).reply(200, {"data": []}).reply(404, api_error("NOT_FOUND"))
    client.generate_subtitles("a/b c?d#e%f", "en")
    client.list_tracks("../admin")
    client.get_job_result("1/../2")
    urls = [r.url for r in transport.requests]
    assert urls == [
        f"{BASE}/uploads/a%2Fb%20c%3Fd%23e%25f/tracks/generate-subtitles",
        f"{BASE}/uploads/..%2Fadmin/tracks",
        f"{BASE}/job-results/1%2F..%2F2",
    ]


@pytest.mark.parametrize("bad", ["", ".", "..", None, 12.5])
def test_unusable_ids_are_refused_before_any_request(client, transport, bad):
    with pytest.raises(ValueError):
        client.generate_subtitles(bad, "en")
    with pytest.raises(ValueError):
        client.list_tracks(bad)
    with pytest.raises(ValueError):
        client.get_job_result(bad)
    assert transport.requests == []


def test_integer_job_id_is_accepted(client, transport):
    transport.reply(404, api_error("NOT_FOUND"))
    assert client.get_job_result(4235) is None
    assert transport.requests[0].url == f"{BASE}/job-results/4235"


@pytest.mark.parametrize(
    "kwargs",
    [dict(language_code=""), dict(language_code=None), dict(name=3), dict(body_type="")],
)
def test_invalid_generate_arguments(client, transport, kwargs):
    args = dict(upload_id="up-1", language_code="en") | kwargs
    upload_id, language_code = args.pop("upload_id"), args.pop("language_code")
    with pytest.raises(ValueError):
        client.generate_subtitles(upload_id, language_code, **args)
    assert transport.requests == []


def test_netrc_cannot_override_the_bearer_token(make_client, transport, tmp_path, monkeypatch):
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine site-api.datocms.com login someone password other\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    session = requests.Session()  # trust_env left on
    session.mount("https://", transport)
    client = make_client(session=session)
    transport.reply(200, {"data": []})
    client.list_tracks("up-1")
    assert transport.requests[0].headers["Authorization"] == f"Bearer {TOKEN}"


def test_redirects_are_not_followed(make_client, transport):
    client = make_client(max_inline_retries=0)
    transport.reply(302, body=b"", headers={"Location": "https://elsewhere.example/"})
    with pytest.raises(ProtocolError) as info:
        client.list_tracks("up-1")
    assert info.value.status == 302
    assert len(transport.requests) == 1


@pytest.mark.parametrize("method", ["post", "get"])
def test_redirect_to_another_host_sends_nothing_there(make_client, transport, method):
    # Retries allowed: a GET's ProtocolError is retried, but always at our own URL.
    client = make_client()
    for _ in range(3):
        transport.reply(302, body=b"", headers={"Location": "https://evil.example/steal?x=1"})
    with pytest.raises(ProtocolError) as info:
        if method == "post":
            client.generate_subtitles("up-1", "en")
        else:
            client.list_tracks("up-1")
    assert info.value.status == 302
    assert transport.requests  # at least the first call went out...
    for req in transport.requests:  # ...and every one to DatoCMS, none to evil.example
        assert req.url.startswith(f"{BASE}/"), req.url
        assert "evil.example" not in req.url
    assert len(transport.requests) == (1 if method == "post" else 3)


# ----------------------------------------------------------------- answers


def test_job_pending_returns_none(client, transport):
    transport.reply(404, api_error("NOT_FOUND", details={}))
    assert client.get_job_result("4235") is None
    assert transport.requests[0].url == f"{BASE}/job-results/4235"


def test_job_done_returns_track(client, transport):
    resource = track_resource("preparing")
    transport.reply(200, job_result(200, {"data": resource}))
    track = client.get_job_result("4235")
    assert isinstance(track, UploadTrack)
    assert track.id == "trk-1"
    assert track.upload_id == "up-1"
    assert track.track_type == "subtitles"
    assert track.name == "Italiano"
    assert track.language_code == "it-IT"
    assert track.closed_captions is False
    assert track.status == "preparing"
    assert track.is_preparing and not track.is_ready and not track.is_errored
    assert track.resource == resource


def test_job_failed_maps_payload(client, transport):
    payload = api_error("NOT_A_VIDEO", details={"upload_id": "up-1"}, id="job-err-9")
    transport.reply(200, job_result(422, payload))
    with pytest.raises(JobFailed) as info:
        client.get_job_result("4235")
    exc = info.value
    assert not isinstance(exc, (RetryableError, PermanentError))
    assert exc.status == 422
    assert exc.code == "NOT_A_VIDEO"
    assert exc.details == {"upload_id": "up-1"}
    assert exc.request_id == "job-err-9"
    assert exc.job_id == "4235"
    assert exc.transient is False
    assert exc.payload == payload
    assert str(exc).startswith("422 NOT_A_VIDEO: job 4235 failed")


def test_job_failed_with_null_payload(client, transport):
    transport.reply(200, job_result(500, None), headers={"X-Request-Id": "rq-77"})
    with pytest.raises(JobFailed) as info:
        client.get_job_result("4235")
    exc = info.value
    assert (exc.status, exc.code, exc.details, exc.payload, exc.request_id) == (500, None, {}, None, "rq-77")
    assert str(exc) == "500: job 4235 failed (request id rq-77)"


def test_job_failed_transient_flag(client, transport):
    transport.reply(200, job_result(503, api_error("MUX_ERROR", transient=True)))
    with pytest.raises(JobFailed) as info:
        client.get_job_result("4235")
    assert info.value.transient is True
    assert info.value.code == "MUX_ERROR"


@pytest.mark.parametrize(
    "body",
    [
        {"data": {"type": "job", "id": "1"}},
        {"data": {"type": "job_result", "id": "1", "attributes": {"status": "done"}}},
        {"data": None},
        [],
        job_result(200, None),
        job_result(200, {"data": {"type": "upload", "id": "x"}}),
        job_result(200, {"data": track_resource(status=None)}),
    ],
)
def test_job_result_with_unexpected_shape_is_protocol_error(client, transport, body):
    transport.reply(200, body)
    with pytest.raises(ProtocolError) as info:
        client.get_job_result("4235")
    assert isinstance(info.value, ServerError) and isinstance(info.value, RetryableError)
    assert info.value.outcome_unknown is False  # a GET


def test_404_with_another_code_is_not_pending(client, transport):
    transport.reply(404, api_error("INVALID_ENVIRONMENT"))
    with pytest.raises(NotFound):
        client.get_job_result("4235")


def test_list_tracks(client, transport):
    transport.reply(
        200,
        {"data": [track_resource("ready"),
                  track_resource("errored", track_id="trk-2", upload_id=None, error="no audio")]},
    )
    tracks = client.list_tracks("up-1")
    assert [t.id for t in tracks] == ["trk-1", "trk-2"]
    assert tracks[0].is_ready
    assert tracks[1].is_errored and tracks[1].error == "no audio"
    assert tracks[1].upload_id == "up-1"  # filled from the call when the relationship is absent


@pytest.mark.parametrize("body", [{"data": {}}, {"data": [{"type": "upload_track"}]}, {"meta": 1}])
def test_list_tracks_unexpected_shape(client, transport, body):
    transport.reply(200, body)
    with pytest.raises(ProtocolError):
        client.list_tracks("up-1")


@pytest.mark.parametrize(
    "body",
    [{"data": {"type": "job"}}, {"data": {"type": "upload", "id": "1"}}, {"data": []}, "<html>ok</html>"],
)
def test_malformed_submit_success_is_protocol_error_with_unknown_outcome(client, transport, body):
    if isinstance(body, str):
        transport.reply(202, body=body, headers={"Content-Type": "text/html"})
    else:
        transport.reply(202, body)
    with pytest.raises(ProtocolError) as info:
        client.generate_subtitles("up-1", "en")
    assert info.value.status == 202
    assert info.value.outcome_unknown is True
    assert len(transport.requests) == 1  # never re-POSTed inline


# ------------------------------------------------------------ error mapping


@pytest.mark.parametrize(
    "status, code, expected",
    [
        (400, "INVALID_JSON_BODY", InvalidRequest),
        (422, "INVALID_FIELD", InvalidRequest),
        (422, "INVALID_ATTRIBUTES", InvalidRequest),
        (422, "NOT_A_VIDEO", InvalidRequest),
        (422, "NO_PRIMARY_AUDIO_TRACK", InvalidRequest),
        (422, "INVALID_ENVIRONMENT", InvalidRequest),
        (422, "INVALID_TYPE", InvalidType),
        (400, "INVALID_TYPE", InvalidType),
        (401, "INVALID_AUTHORIZATION_HEADER", Unauthorized),
        (403, "INSUFFICIENT_PERMISSIONS", Forbidden),
        (404, "NOT_FOUND", NotFound),
        (409, "STALE_ITEM_VERSION", InvalidRequest),
        (412, "SOMETHING", InvalidRequest),
        (500, "INTERNAL_SERVER_ERROR", UnexpectedServerError),
        (501, "NOT_IMPLEMENTED", UnexpectedServerError),
        (505, "SOMETHING", UnexpectedServerError),
        (502, "BAD_GATEWAY", ServerError),
        (503, "MAINTENANCE_MODE", ServerError),
        (504, "GATEWAY_TIMEOUT", ServerError),
        (422, "IMMUTABLE_UPLOAD_TRACKS_IN_SANDBOX_ENVIRONMENT", SandboxImmutable),
    ],
)
def test_error_class_by_status_and_code(make_client, transport, status, code, expected):
    client = make_client(max_inline_retries=0)
    transport.reply(status, api_error(code, details={"field": "language_code"}, id="err-42"))
    with pytest.raises(expected) as info:
        client.generate_subtitles("up-1", "xx")
    exc = info.value
    assert type(exc) is expected
    assert exc.status == status
    assert exc.code == code
    assert exc.request_id == "err-42"
    assert exc.details == {"field": "language_code"}
    assert exc.method == "POST"
    assert exc.path == "/uploads/up-1/tracks/generate-subtitles"


def test_tree():
    assert issubclass(InvalidType, InvalidRequest)
    assert issubclass(SandboxImmutable, InvalidRequest)
    for cls in (InvalidRequest, Unauthorized, Forbidden, NotFound):
        assert issubclass(cls, PermanentError)
    for cls in (RateLimited, ServerError, ProtocolError, TransientAPIError, NetworkError):
        assert issubclass(cls, RetryableError)
    # the failures a caller bounds: faults, not load
    assert issubclass(UnexpectedServerError, ServerError) and issubclass(ProtocolError, UnexpectedServerError)
    assert not issubclass(JobFailed, (RetryableError, PermanentError))
    for cls in (RetryableError, PermanentError, JobFailed):
        assert issubclass(cls, DatoCMSError)


@pytest.mark.parametrize("status", [400, 404, 422, 500, 503])
def test_transient_flag_wins_over_status(make_client, transport, status):
    client = make_client(max_inline_retries=0)
    transport.reply(status, api_error("ENVIRONMENT_NOT_READY", transient=True))
    with pytest.raises(TransientAPIError) as info:
        client.list_tracks("up-1")
    assert info.value.status == status
    assert info.value.code == "ENVIRONMENT_NOT_READY"


def test_transient_entry_anywhere_in_the_list_counts(make_client, transport):
    client = make_client(max_inline_retries=0)
    body = api_error("INVALID_FIELD")
    body["data"].append(api_error("SERVICE_UNAVAILABLE", transient=True, id="err-2")["data"][0])
    transport.reply(422, body)
    with pytest.raises(TransientAPIError) as info:
        client.list_tracks("up-1")
    assert info.value.code == "SERVICE_UNAVAILABLE"


def test_html_502_is_server_error(make_client, transport):
    client = make_client(max_inline_retries=0)
    transport.reply(502, body="<html><body>Bad Gateway</body></html>", headers={"Content-Type": "text/html"})
    with pytest.raises(ServerError) as info:
        client.list_tracks("up-1")
    exc = info.value
    assert type(exc) is ServerError
    assert exc.status == 502 and exc.code is None
    assert "not JSON" in str(exc) and "text/html" in str(exc)


@pytest.mark.parametrize("status", [401, 403, 404, 422])
def test_non_json_body_on_any_error_status_is_server_error(make_client, transport, status):
    client = make_client(max_inline_retries=0)
    transport.reply(status, body="<html>Access denied</html>", headers={"Content-Type": "text/html"})
    with pytest.raises(ServerError) as info:
        client.list_tracks("up-1")
    assert info.value.status == status


def test_json_error_without_api_error_shape_maps_by_status(make_client, transport):
    client = make_client(max_inline_retries=0)
    transport.reply(401, {"error": "nope"})
    with pytest.raises(Unauthorized) as info:
        client.list_tracks("up-1")
    assert info.value.code is None


def test_429_uses_reset_header_and_penalizes_fleet(make_client, transport):
    limiter = FakeLimiter()
    client = make_client(rate_limiter=limiter)
    transport.reply(429, api_error("RATE_LIMIT_EXCEEDED"), headers={"X-RateLimit-Reset": "7", "X-Request-Id": "rq-1"})
    with pytest.raises(RateLimited) as info:
        client.generate_subtitles("up-1", "en")
    exc = info.value
    assert (exc.status, exc.code, exc.retry_after, exc.request_id) == (429, "RATE_LIMIT_EXCEEDED", 7.0, "rq-1")
    assert exc.outcome_unknown is False
    assert limiter.penalties == [7.0]
    assert limiter.acquired == 1


@pytest.mark.parametrize("reset", [None, "", "soon", "0", "-3"])
def test_429_without_usable_reset_defaults_to_one_second(make_client, transport, reset):
    limiter = FakeLimiter()
    client = make_client(rate_limiter=limiter, max_inline_retries=0)
    headers = {} if reset is None else {"X-RateLimit-Reset": reset}
    transport.reply(429, body="Too Many Requests", headers=headers)
    with pytest.raises(RateLimited) as info:
        client.list_tracks("up-1")
    assert info.value.retry_after == 1.0
    assert info.value.code == "RATE_LIMIT_EXCEEDED"
    assert limiter.penalties == [1.0]


def test_broken_penalize_does_not_hide_the_429(make_client, transport):
    class Broken(FakeLimiter):
        def penalize(self, seconds):
            raise RuntimeError("redis down")

    client = make_client(rate_limiter=Broken(), max_inline_retries=0)
    transport.reply(429, api_error("RATE_LIMIT_EXCEEDED"), headers={"X-RateLimit-Reset": "3"})
    with pytest.raises(RateLimited):
        client.list_tracks("up-1")


def test_retry_after_on_other_errors_comes_from_reset_header(make_client, transport):
    client = make_client(max_inline_retries=0)
    transport.reply(503, api_error("SERVICE_UNAVAILABLE", transient=True), headers={"X-RateLimit-Reset": "12"})
    with pytest.raises(TransientAPIError) as info:
        client.list_tracks("up-1")
    assert info.value.retry_after == 12.0


def test_request_id_header_wins_over_error_id(make_client, transport):
    client = make_client(max_inline_retries=0)
    transport.reply(422, api_error("INVALID_FIELD", id="err-id"), headers={"X-Request-Id": "hdr-id"})
    with pytest.raises(InvalidRequest) as info:
        client.generate_subtitles("up-1", "xx")
    assert info.value.request_id == "hdr-id"
    assert str(info.value).endswith("(request id hdr-id)")


def test_str_is_readable(make_client, transport):
    client = make_client(max_inline_retries=0)
    transport.reply(422, api_error("INVALID_FIELD", details={"field": "language_code", "code": "VALIDATION_FORMAT"},
                                   id="e1"))
    with pytest.raises(InvalidRequest) as info:
        client.generate_subtitles("up-1", "xx")
    assert str(info.value) == (
        '422 INVALID_FIELD: POST /uploads/up-1/tracks/generate-subtitles failed: '
        '{"code": "VALIDATION_FORMAT", "field": "language_code"} (request id e1)'
    )


# ---------------------------------------------------------- network errors


@pytest.mark.parametrize(
    "make_error, sent",
    [
        (connect_refused, False),
        (dns_failure, False),
        (connect_timeout, False),
        (read_timeout, True),
        (connection_dropped, True),
        (lambda: requests.exceptions.ChunkedEncodingError("body cut short"), True),
        (lambda: requests.exceptions.SSLError("bad record mac"), True),
    ],
)
def test_network_errors(make_client, transport, make_error, sent):
    client = make_client(max_inline_retries=0)
    transport.fail(make_error())
    with pytest.raises(NetworkError) as info:
        client.generate_subtitles("up-1", "en")
    exc = info.value
    assert exc.request_sent is sent
    assert exc.outcome_unknown is sent
    assert exc.status is None and exc.code is None and exc.request_id is None
    assert exc.__context__ is None and exc.__cause__ is None  # the transport error (with headers) is not chained


def test_network_error_on_get_is_never_outcome_unknown(make_client, transport):
    client = make_client(max_inline_retries=0)
    transport.fail(read_timeout())
    with pytest.raises(NetworkError) as info:
        client.list_tracks("up-1")
    assert info.value.request_sent is True
    assert info.value.outcome_unknown is False


def test_invalid_url_is_permanent(make_client, transport):
    client = make_client()
    transport.fail(requests.exceptions.InvalidURL("bad url"))
    with pytest.raises(PermanentError) as info:
        client.list_tracks("up-1")
    assert type(info.value) is PermanentError
    assert len(transport.requests) == 1


# ----------------------------------------------------------- inline retries


def test_get_retries_server_errors_with_backoff(client, transport, sleeps):
    transport.reply(500, api_error("INTERNAL")).reply(502, body="<html/>").reply(200, {"data": []})
    assert client.list_tracks("up-1") == []
    assert len(transport.requests) == 3
    assert sleeps == [0.5, 1.0]  # rng pinned to 1.0: the worst case of the backoff


def test_retries_are_capped(client, transport, sleeps):
    for _ in range(3):
        transport.reply(503, api_error("SERVICE_UNAVAILABLE", transient=True))
    with pytest.raises(TransientAPIError):
        client.list_tracks("up-1")
    assert len(transport.requests) == 3  # 1 + max_inline_retries (2)
    assert len(sleeps) == 2


def test_jitter_uses_injected_rng(make_client, transport, sleeps):
    client = make_client(rng=lambda: 0.0)
    transport.reply(500, api_error("X")).reply(200, {"data": []})
    client.list_tracks("up-1")
    assert sleeps == [0.25]


def test_permanent_errors_are_not_retried(client, transport, sleeps):
    transport.reply(422, api_error("INVALID_FIELD"))
    with pytest.raises(InvalidRequest):
        client.generate_subtitles("up-1", "xx")
    assert len(transport.requests) == 1 and sleeps == []


def test_connect_error_is_retried_even_for_post(client, transport, sleeps):
    transport.fail(connect_refused()).fail(connect_timeout()).reply(202, JOB_ACCEPTED)
    assert client.generate_subtitles("up-1", "en") == "4235"
    assert len(transport.requests) == 3
    assert sleeps == [0.5, 1.0]


@pytest.mark.parametrize("make_error", [read_timeout, connection_dropped])
def test_post_not_retried_once_request_may_have_been_sent(client, transport, sleeps, make_error):
    transport.fail(make_error())
    with pytest.raises(NetworkError) as info:
        client.generate_subtitles("up-1", "en")
    assert info.value.request_sent is True
    assert info.value.outcome_unknown is True
    assert len(transport.requests) == 1 and sleeps == []


@pytest.mark.parametrize("make_error", [read_timeout, connection_dropped])
def test_get_is_retried_after_read_errors(client, transport, sleeps, make_error):
    transport.fail(make_error()).reply(200, {"data": []})
    assert client.list_tracks("up-1") == []
    assert len(transport.requests) == 2


@pytest.mark.parametrize(
    "status, body",
    [
        (500, api_error("INTERNAL_SERVER_ERROR")),
        (502, "<html>bad gateway</html>"),
        (504, "<html>gateway timeout</html>"),
        (500, api_error("SOMETHING", transient=True)),
    ],
)
def test_post_not_retried_on_5xx_that_may_have_been_processed(client, transport, sleeps, status, body):
    if isinstance(body, str):
        transport.reply(status, body=body, headers={"Content-Type": "text/html"})
    else:
        transport.reply(status, body)
    with pytest.raises(RetryableError) as info:
        client.generate_subtitles("up-1", "en")
    assert info.value.outcome_unknown is True
    assert len(transport.requests) == 1 and sleeps == []


@pytest.mark.parametrize(
    "status, body, headers",
    [
        (503, api_error("SERVICE_UNAVAILABLE"), {}),
        (503, "<html>maintenance</html>", {"Content-Type": "text/html"}),
        (429, api_error("RATE_LIMIT_EXCEEDED"), {"X-RateLimit-Reset": "1"}),
        (422, api_error("ENVIRONMENT_NOT_READY", transient=True), {}),
    ],
)
def test_post_retried_when_server_surely_did_not_act(client, transport, sleeps, status, body, headers):
    if isinstance(body, str):
        transport.reply(status, body=body, headers=headers)
    else:
        transport.reply(status, body, headers=headers)
    transport.reply(202, JOB_ACCEPTED)
    assert client.generate_subtitles("up-1", "en") == "4235"
    assert len(transport.requests) == 2
    assert len(sleeps) == 1


def test_long_rate_limit_is_raised_not_slept(make_client, transport, sleeps):
    limiter = FakeLimiter()
    client = make_client(rate_limiter=limiter)
    transport.reply(429, api_error("RATE_LIMIT_EXCEEDED"), headers={"X-RateLimit-Reset": "2"})
    with pytest.raises(RateLimited) as info:
        client.list_tracks("up-1")
    assert info.value.retry_after == 2.0
    assert sleeps == [] and len(transport.requests) == 1
    assert limiter.penalties == [2.0]


def test_short_rate_limit_is_slept_inline_honouring_hint(make_client, transport, sleeps):
    limiter = FakeLimiter()
    client = make_client(rate_limiter=limiter, max_inline_wait=5.0)
    transport.reply(429, api_error("RATE_LIMIT_EXCEEDED"), headers={"X-RateLimit-Reset": "3"})
    transport.reply(200, {"data": []})
    assert client.list_tracks("up-1") == []
    assert sleeps == [3.0]
    assert limiter.acquired == 2 and limiter.penalties == [3.0]


def test_limiter_refusal_is_retried_or_raised(make_client, transport, sleeps):
    limiter = FakeLimiter(refuse=[0.2, 60.0])
    client = make_client(rate_limiter=limiter)
    with pytest.raises(RateLimited) as info:
        client.generate_subtitles("up-1", "en")
    assert info.value.retry_after == 60.0
    assert info.value.status is None
    assert transport.requests == []  # nothing was ever sent
    assert sleeps == [0.5]  # the short refusal was waited out, the long one raised
    assert limiter.penalties == []


def test_zero_inline_retries(make_client, transport, sleeps):
    client = make_client(max_inline_retries=0)
    transport.reply(500, api_error("X"))
    with pytest.raises(ServerError):
        client.list_tracks("up-1")
    assert sleeps == []


def test_max_inline_wait_zero_means_never_wait(make_client, transport, sleeps):
    client = make_client(max_inline_wait=0.0)
    transport.fail(connect_refused())
    with pytest.raises(NetworkError):
        client.list_tracks("up-1")
    assert sleeps == []


def test_should_retry_decision_table(client):
    net_unsent = NetworkError("x", request_sent=False)
    net_sent = NetworkError("x", request_sent=True)
    assert client._should_retry(net_unsent, "POST", 0)
    assert client._should_retry(net_sent, "GET", 0)
    assert not client._should_retry(net_sent, "POST", 0)
    assert not client._should_retry(net_unsent, "POST", 2)  # out of retries
    assert not client._should_retry(RateLimited("x", status=429, retry_after=1.5), "GET", 0)  # too long
    assert client._should_retry(RateLimited("x", status=429, retry_after=1.0), "POST", 0)
    assert not client._should_retry(ServerError("x", status=500), "POST", 0)
    assert client._should_retry(ServerError("x", status=503), "POST", 0)
    assert not client._should_retry(InvalidRequest("x", status=422), "GET", 0)
    assert not client._should_retry(JobFailed("x", status=500), "GET", 0)
    assert not client._should_retry(ProtocolError("x", status=200), "POST", 0)
    assert client._should_retry(ProtocolError("x", status=200), "GET", 0)


# -------------------------------------------------------- secrets and reprs


def every_error(make_client, transport) -> list[DatoCMSError]:
    """Provoke one of each exception, with the token planted where a careless
    client would copy it (server details, transport messages)."""
    leaky = {"header": f"Bearer {TOKEN}", "nested": [{"token": TOKEN}]}
    scripts = [
        lambda: transport.reply(400, api_error("INVALID_JSON_BODY", details=leaky)),
        lambda: transport.reply(422, api_error("INVALID_TYPE", details=leaky)),
        lambda: transport.reply(401, api_error("INVALID_AUTHORIZATION_HEADER", details=leaky)),
        lambda: transport.reply(403, api_error("INSUFFICIENT_PERMISSIONS", details=leaky)),
        lambda: transport.reply(404, api_error("NOT_FOUND", details=leaky)),
        lambda: transport.reply(429, api_error("RATE_LIMIT_EXCEEDED", details=leaky),
                                headers={"X-RateLimit-Reset": "9"}),
        lambda: transport.reply(500, api_error("X", details=leaky)),
        lambda: transport.reply(422, api_error("X", transient=True, details=leaky)),
        lambda: transport.reply(502, body=f"<html>{TOKEN}</html>"),
        lambda: transport.reply(202, {"data": {"type": f"job {TOKEN}"}}),
        lambda: transport.fail(requests.ReadTimeout(f"timed out sending Bearer {TOKEN}")),
        lambda: transport.fail(connect_refused()),
    ]
    client = make_client(max_inline_retries=0)
    caught: list[DatoCMSError] = []
    for script in scripts:
        script()
        try:
            client.generate_subtitles("up-1", "en")
        except DatoCMSError as exc:
            caught.append(exc)
    transport.reply(200, job_result(422, api_error("NOT_A_VIDEO", details=leaky)))
    try:
        client.get_job_result("1")
    except DatoCMSError as exc:
        caught.append(exc)
    return caught


def test_token_never_appears_in_exceptions(make_client, transport):
    caught = every_error(make_client, transport)
    kinds = {type(e) for e in caught}
    assert kinds >= {
        InvalidRequest, InvalidType, Unauthorized, Forbidden, NotFound, RateLimited,
        ServerError, TransientAPIError, ProtocolError, NetworkError, JobFailed,
    }
    for exc in caught:
        for text in (str(exc), repr(exc), repr(vars(exc)), repr(exc.args), pickle.dumps(exc).hex()):
            assert TOKEN not in text
            assert TOKEN.encode().hex() not in text
        assert exc.__context__ is None or TOKEN not in repr(exc.__context__)
    redacted = {"header": "Bearer [REDACTED]", "nested": [{"token": "[REDACTED]"}]}
    for exc in caught:
        if exc.code in ("INVALID_JSON_BODY", "NOT_A_VIDEO", "RATE_LIMIT_EXCEEDED"):
            assert exc.details == redacted
        if isinstance(exc, JobFailed):
            assert exc.payload["data"][0]["attributes"]["details"] == redacted
    timeout = next(e for e in caught if isinstance(e, NetworkError) and e.request_sent)
    assert "Bearer [REDACTED]" in str(timeout)


def test_token_not_in_client_repr_or_logs(make_client, transport, caplog):
    client = make_client(environment="sandbox")
    assert repr(client) == f"DatoCMSClient(base_url='{BASE}', environment='sandbox')"
    assert TOKEN not in repr(client) and TOKEN not in str(client)
    with caplog.at_level(logging.DEBUG, logger="subtitle_tasks.datocms"):
        every_error(make_client, transport)
        transport.reply(202, JOB_ACCEPTED, headers={"X-Request-Id": "rq-log"})
        client.generate_subtitles("up-1", "en")
    assert caplog.records
    assert all(TOKEN not in record.getMessage() for record in caplog.records)
    assert any("rq-log" in r.getMessage() and "202" in r.getMessage() for r in caplog.records)


def test_invalid_token_error_does_not_echo_it():
    with pytest.raises(ValueError) as info:
        DatoCMSClient(" secret-with-space ")
    assert "secret-with-space" not in str(info.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(base_url="ftp://x"),
        dict(base_url="site-api.datocms.com"),
        dict(environment=""),
        dict(environment="a\nb"),
        dict(timeout=0),
        dict(timeout=(1, -1)),
        dict(max_inline_retries=-1),
        dict(max_inline_wait=float("inf")),
    ],
)
def test_constructor_validation(kwargs):
    with pytest.raises(ValueError):
        DatoCMSClient(TOKEN, **kwargs)


def test_exceptions_pickle_with_attributes():
    exc = NetworkError("boom", request_sent=False, method="POST", path="/p", details={"exception": "X"})
    clone = pickle.loads(pickle.dumps(exc))
    assert type(clone) is NetworkError
    assert (clone.request_sent, clone.method, clone.details, str(clone)) == (False, "POST", {"exception": "X"}, "boom")
    failed = JobFailed("job 1 failed", job_id="1", transient=True, status=422, code="NOT_A_VIDEO", request_id="r")
    clone = pickle.loads(pickle.dumps(failed))
    assert (clone.job_id, clone.transient, clone.status, clone.code, str(clone)) == (
        "1", True, 422, "NOT_A_VIDEO", "422 NOT_A_VIDEO: job 1 failed (request id r)"
    )


# ------------------------------------------------------------- lifecycle


def test_close_only_closes_owned_session(make_client, transport):
    closed = []

    class Session(requests.Session):
        def close(self):
            closed.append(True)
            super().close()

    injected = Session()
    make_client(session=injected).close()
    assert closed == []

    own = DatoCMSClient(TOKEN)
    adapter = own._session.get_adapter(BASE)
    assert adapter.max_retries.total == 0
    with own:
        pass  # __exit__ closes


def test_fake_limiter_satisfies_protocol():
    assert isinstance(FakeLimiter(), RateLimiter)


# ------------------------------------------------------------- resources


def test_upload_track_from_resource_validation():
    with pytest.raises(MalformedResource):
        UploadTrack.from_resource({"type": "upload", "id": "1", "attributes": {}})
    with pytest.raises(MalformedResource):
        UploadTrack.from_resource({"type": "upload_track", "attributes": {"status": "ready", "type": "subtitles"}})
    with pytest.raises(MalformedResource):
        UploadTrack.from_resource({"type": "upload_track", "id": "1", "attributes": {"type": "subtitles"}})
    with pytest.raises(MalformedResource):
        UploadTrack.from_resource(
            track_resource() | {"attributes": {"status": "ready", "type": "subtitles", "closed_captions": "no"}})
    with pytest.raises(ValueError):  # MalformedResource is a ValueError
        UploadTrack.from_resource(None)


def test_upload_track_tolerates_unknown_status_and_is_hashable():
    track = UploadTrack.from_resource(track_resource(status="transcoding"))
    assert not (track.is_ready or track.is_errored or track.is_preparing)
    assert hash(track) == hash(UploadTrack.from_resource(track_resource(status="transcoding")))
    assert "resource" not in repr(track)


def test_parsers():
    assert parse_api_errors("<html>") == []
    assert parse_api_errors({"data": {"type": "job"}}) == []
    (entry,) = parse_api_errors(api_error("INVALID_FIELD", transient=True, details={"a": 1}, id="e"))
    assert (entry.id, entry.code, entry.transient, entry.details) == ("e", "INVALID_FIELD", True, {"a": 1})
    result = parse_job_result(job_result(201, {"data": track_resource()}))
    assert result.succeeded and result.upload_track().id == "trk-1"
    with pytest.raises(MalformedResource):
        parse_job_result(job_result(True, None))


# --------------------------------------- real transport, loopback only


def test_real_transport_classifies_loopback_failures():
    """The fakes above mimic requests' exceptions; check them once for real
    against 127.0.0.1 (no outside network): refused -> not sent, dropped after
    reading the request -> sent."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    closed_port = probe.getsockname()[1]
    probe.close()
    client = DatoCMSClient(TOKEN, base_url=f"http://127.0.0.1:{closed_port}", max_inline_retries=0, timeout=2.0)
    with pytest.raises(NetworkError) as info:
        client.generate_subtitles("up-1", "en")
    assert info.value.request_sent is False
    client.close()

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]

    def drop_after_reading():
        conn, _ = server.accept()
        conn.recv(65536)
        conn.close()

    thread = threading.Thread(target=drop_after_reading, daemon=True)
    thread.start()
    client = DatoCMSClient(TOKEN, base_url=f"http://127.0.0.1:{port}", max_inline_retries=0, timeout=5.0)
    try:
        with pytest.raises(NetworkError) as info:
            client.generate_subtitles("up-1", "en")
        assert info.value.request_sent is True
        assert info.value.outcome_unknown is True
    finally:
        thread.join(5)
        server.close()
        client.close()


# ------------------------------------------------------------ https only


@pytest.mark.parametrize(
    "base_url",
    ["http://site-api.datocms.com", "http://10.0.0.5:8080", "http://[2001:db8::1]", "http://simulator:8765",
     "http://localhost.example.com", "http://127.0.0.1.nip.io"],
)
def test_plain_http_to_a_remote_host_is_refused(base_url):
    with pytest.raises(ValueError) as info:
        DatoCMSClient(TOKEN, base_url=base_url)
    message = str(info.value)
    assert "https" in message and "allow_insecure_http" in message
    assert TOKEN not in message


@pytest.mark.parametrize(
    "base_url",
    ["http://127.0.0.1:8765", "http://127.9.8.7", "http://[::1]:9000", "http://localhost:1", "http://LOCALHOST",
     "https://site-api.datocms.com", "https://dato.example.test/api"],
)
def test_https_or_loopback_is_accepted(base_url):
    DatoCMSClient(TOKEN, base_url=base_url).close()


def test_allow_insecure_http_opts_in():
    client = DatoCMSClient(TOKEN, base_url="http://simulator:8765", allow_insecure_http=True)
    assert client.base_url == "http://simulator:8765"
    client.close()


# ------------------------------------------------------- size and time caps


class EndlessBody(io.RawIOBase):
    """A body that never ends (a 30 MB answer and beyond); counts what was read."""

    def __init__(self, delay: float = 0.0, chunk: int | None = None) -> None:
        self.read_bytes = 0
        self.delay = delay
        self.chunk = chunk

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.delay:
            time.sleep(self.delay)
        size = len(buffer) if self.chunk is None else min(self.chunk, len(buffer))
        buffer[:size] = b"x" * size
        self.read_bytes += size
        return size


def test_oversized_answer_is_protocol_error_without_reading_it_whole(make_client, transport):
    client = make_client(max_inline_retries=0, max_response_bytes=1000)
    endless = EndlessBody()
    transport.reply(202, body=endless, headers={"Content-Type": "application/json"})
    with pytest.raises(ProtocolError) as info:
        client.generate_subtitles("up-1", "en")
    exc = info.value
    assert "size cap" in str(exc) and "1000 bytes" in str(exc)
    assert exc.status == 202 and exc.outcome_unknown is True  # the POST may have been carried out
    assert endless.read_bytes == 1001  # one byte past the cap proves it too large


def test_declared_oversized_answer_is_not_read_at_all(make_client, transport):
    client = make_client(max_inline_retries=0)  # default cap: 1 MiB
    endless = EndlessBody()
    transport.reply(200, body=endless, headers={"Content-Length": str(30 * 1024 * 1024)})
    with pytest.raises(ProtocolError) as info:
        client.list_tracks("up-1")
    assert "size cap of 1048576 bytes" in str(info.value)
    assert info.value.outcome_unknown is False  # a GET
    assert endless.read_bytes == 0


def test_oversized_get_is_retried_like_any_protocol_error(make_client, transport, sleeps):
    client = make_client(max_response_bytes=64)
    transport.reply(200, {"data": [], "meta": {"padding": "x" * 100}})
    transport.reply(200, {"data": []})
    assert client.list_tracks("up-1") == []
    assert len(transport.requests) == 2 and len(sleeps) == 1


def test_answer_exactly_at_the_cap_is_read(make_client, transport):
    body = json.dumps({"data": []}).encode()
    client = make_client(max_response_bytes=len(body))
    transport.reply(200, body=body)
    assert client.list_tracks("up-1") == []


def test_trickling_body_hits_the_call_budget(make_client, transport):
    client = make_client(max_inline_retries=0, max_call_seconds=0.2)
    trickle = EndlessBody(delay=0.02, chunk=1)
    transport.reply(202, body=trickle, headers={"Content-Type": "application/json"})
    started = time.monotonic()
    with pytest.raises(NetworkError) as info:
        client.generate_subtitles("up-1", "en")
    assert time.monotonic() - started < 2.0
    exc = info.value
    assert "timed out" in str(exc) and "max_call_seconds" in str(exc)
    assert exc.request_sent is True and exc.outcome_unknown is True
    assert 0 < trickle.read_bytes < 100


def test_headers_after_the_budget_are_a_timeout(make_client, transport):
    client = make_client(max_inline_retries=0, max_call_seconds=0.05)
    transport.reply(200, {"data": []}, delay=0.1)
    with pytest.raises(NetworkError) as info:
        client.list_tracks("up-1")
    assert info.value.request_sent is True and "timed out" in str(info.value)


def test_call_budget_holds_against_a_real_trickling_server():
    """requests' timeout is per socket read: a server sending one byte every
    50 ms never trips a 5 s read timeout. The budget must end the call."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    stop = threading.Event()

    def trickle():
        conn, _ = server.accept()
        try:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n")
            while not stop.is_set():
                conn.sendall(b" ")
                time.sleep(0.05)
        except OSError:
            pass  # the client hung up, as it should
        finally:
            conn.close()

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    client = DatoCMSClient(TOKEN, base_url=f"http://127.0.0.1:{port}", max_inline_retries=0, timeout=5.0,
                           max_call_seconds=0.5)
    try:
        started = time.monotonic()
        with pytest.raises(NetworkError) as info:
            client.list_tracks("up-1")
        assert time.monotonic() - started < 3.0
        assert "max_call_seconds" in str(info.value)
    finally:
        stop.set()
        thread.join(5)
        server.close()
        client.close()


def test_connection_dropped_mid_body_is_network_error(make_client, transport):
    class Dropping(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, buffer) -> int:
            raise ConnectionResetError(104, "Connection reset by peer")

    client = make_client(max_inline_retries=0)
    transport.reply(202, body=Dropping())
    with pytest.raises(NetworkError) as info:
        client.generate_subtitles("up-1", "en")
    assert info.value.request_sent is True and info.value.outcome_unknown is True


@pytest.mark.parametrize("depth", [65, 500, 100_000])
def test_absurdly_nested_success_is_protocol_error(make_client, transport, depth):
    client = make_client(max_inline_retries=0)
    transport.reply(200, body=b"[" * depth + b"]" * depth)
    with pytest.raises(ProtocolError):
        client.list_tracks("up-1")


def test_cap_arguments_are_validated():
    for kwargs in (dict(max_response_bytes=0), dict(max_response_bytes=True), dict(max_response_bytes=1.5),
                   dict(max_call_seconds=0), dict(max_call_seconds=float("inf")), dict(max_call_seconds="30")):
        with pytest.raises(ValueError):
            DatoCMSClient(TOKEN, **kwargs)


# ------------------------------------------------- token echoed by the server


def test_token_echoed_in_a_job_result_is_redacted_before_parsing(client, transport):
    resource = track_resource("ready")
    resource["attributes"]["name"] = TOKEN
    resource["meta"] = {"debug": f"Authorization: Bearer {TOKEN}", TOKEN: [TOKEN]}
    transport.reply(200, job_result(200, {"data": resource}))
    track = client.get_job_result("4235")
    assert track.name == "[REDACTED]"
    stored = json.dumps(track.resource)
    assert TOKEN not in stored
    assert track.resource["meta"] == {"debug": "Authorization: Bearer [REDACTED]", "[REDACTED]": ["[REDACTED]"]}


def test_token_echoed_in_a_track_list_is_redacted(client, transport):
    resource = track_resource("preparing")
    resource["attributes"]["name"] = f"echo {TOKEN} echo"
    transport.reply(200, {"data": [resource]})
    (track,) = client.list_tracks("up-1")
    assert track.name == "echo [REDACTED] echo"
    assert TOKEN not in json.dumps(track.resource)


def test_token_in_response_headers_or_reason_never_reaches_exceptions(make_client, transport):
    client = make_client(max_inline_retries=0)
    transport.reply(500, {"data": []}, headers={"X-Request-Id": f"rq-{TOKEN}"}, reason=f"Oops {TOKEN}")
    with pytest.raises(ServerError) as info:
        client.list_tracks("up-1")
    exc = info.value
    assert TOKEN not in repr(vars(exc)) and TOKEN not in str(exc)
    assert exc.request_id == "rq-[REDACTED]"


# ------------------------------------------------------ refused body type


@pytest.mark.parametrize(
    "code, details",
    [
        ("INVALID_TYPE", {}),
        ("INVALID_FIELD", {"field": "type"}),
        ("INVALID_FIELD", {"field": "data.type", "code": "VALIDATION_INCLUSION"}),
        ("INVALID_ATTRIBUTES", {"attribute": "type"}),
        ("INVALID_ATTRIBUTES", {"fields": ["name", "type"]}),
        ("INVALID_FIELD", {"source": {"pointer": "/data/type"}}),
        ("INVALID_FIELD", {"field": "Type"}),
        ("SOMETHING_NEW", {"field": "data[type]"}),
        ("SOMETHING_NEW", {"errors": [{"attribute": "type", "message": "is invalid"}]}),
    ],
)
def test_422_pointing_at_the_type_is_invalid_type(make_client, transport, code, details):
    client = make_client(max_inline_retries=0)
    transport.reply(422, api_error(code, details=details))
    with pytest.raises(InvalidType) as info:
        client.generate_subtitles("up-1", "en")
    assert info.value.code == code and info.value.details == details


@pytest.mark.parametrize(
    "status, code, details",
    [
        (422, "INVALID_FIELD", {"field": "language_code", "code": "VALIDATION_FORMAT", "message": "bad type"}),
        (422, "INVALID_FIELD", {"field": "data.attributes.language_code"}),
        (422, "INVALID_ATTRIBUTES", {"extraneous_attributes": ["type"]}),
        (422, "INVALID_FIELD", {"field": "data.attributes.type"}),  # a track attribute, not the body type
        (422, "INVALID_FIELD", {"field": "types"}),
        (422, "INVALID_FIELD", {"type": "field"}),
        (422, "INVALID_FIELD", {"field": ["language_code"], "got": "type"}),
        (409, "STALE", {"field": "type"}),  # not 422, not a field error code
    ],
)
def test_other_field_errors_are_not_invalid_type(make_client, transport, status, code, details):
    client = make_client(max_inline_retries=0)
    transport.reply(status, api_error(code, details=details))
    with pytest.raises(InvalidRequest) as info:
        client.generate_subtitles("up-1", "en")
    assert type(info.value) is InvalidRequest


def test_type_error_anywhere_in_the_list_decides(make_client, transport):
    client = make_client(max_inline_retries=0)
    body = api_error("INVALID_FIELD", details={"field": "language_code"})
    body["data"].append(api_error("INVALID_FIELD", details={"field": "type"}, id="err-2")["data"][0])
    transport.reply(422, body)
    with pytest.raises(InvalidType) as info:
        client.generate_subtitles("up-1", "en")
    assert info.value.details == {"field": "type"} and info.value.request_id == "err-2"


# -------------------------------------------- end to end, against the simulator


@pytest.fixture
def sim_client(datocms_simulator_factory):
    def factory(environment: str | None = None, **config) -> tuple[Any, DatoCMSClient]:
        sim = datocms_simulator_factory(**config)
        return sim, DatoCMSClient(TOKEN, base_url=sim.url, environment=environment, max_inline_retries=0)

    return factory


def test_simulator_sandbox_refusal_is_sandbox_immutable(sim_client):
    sim, client = sim_client(environment="frozen", immutable_environments={"frozen"})
    with pytest.raises(SandboxImmutable) as info:
        client.generate_subtitles("up-1", "it-IT")
    exc = info.value
    assert (exc.status, exc.code) == (422, "IMMUTABLE_UPLOAD_TRACKS_IN_SANDBOX_ENVIRONMENT")
    assert isinstance(exc, InvalidRequest) and exc.outcome_unknown is False
    assert sim.jobs() == []
    _, other = sim_client(environment="open", immutable_environments={"frozen"})
    assert other.generate_subtitles("up-1", "it-IT")


def test_simulator_echoed_token_is_never_stored(sim_client):
    sim, client = sim_client(preparing_seconds=0, faults={"echo_token": 1.0})
    job_id = client.generate_subtitles("up-1", "it-IT", name="Italiano")
    sim.complete_all_jobs()
    track = client.get_job_result(job_id)
    (listed,) = client.list_tracks("up-1")
    for found in (track, listed):
        assert found.name == "echo: Bearer [REDACTED]"
        assert TOKEN not in json.dumps(found.resource)
    assert [r.fault for r in sim.requests()] == [None, "echo_token", "echo_token"]


def test_simulator_huge_body_is_refused_quickly(sim_client):
    sim, client = sim_client(faults={"huge_body": 1.0})
    started = time.monotonic()
    with pytest.raises(ProtocolError) as info:
        client.list_tracks("up-1")
    assert "size cap" in str(info.value)
    assert time.monotonic() - started < 5
    sim.configure(faults={})
    assert client.list_tracks("up-1") == []  # the client recovers on a fresh connection


def test_simulator_redirect_is_not_followed(sim_client):
    sim, client = sim_client(faults={"redirect": 1.0})
    with pytest.raises(ProtocolError) as info:
        client.generate_subtitles("up-1", "it-IT")
    assert info.value.status == 302 and info.value.outcome_unknown is True
    assert len(sim.requests()) == 1 and sim.jobs() == []


# ------------------------------------------------------------- rate-limit headers feed the limiter


class ObservingLimiter(FakeLimiter):
    def __init__(self, refuse: list[float] | None = None) -> None:
        super().__init__(refuse)
        self.observed: list[tuple[int | None, int | None]] = []

    def observe(self, limit, remaining) -> None:
        self.observed.append((limit, remaining))


def rate_headers(limit: str, remaining: str, **extra: str) -> dict[str, str]:
    return {"X-RateLimit-Limit": limit, "X-RateLimit-Remaining": remaining, **extra}


def test_every_answer_is_observed_errors_and_429_included(make_client, transport):
    limiter = ObservingLimiter()
    client = make_client(rate_limiter=limiter, max_inline_retries=0)
    transport.reply(200, {"data": []}, headers=rate_headers("30", "12"))
    transport.reply(404, api_error("NOT_FOUND"), headers=rate_headers("30", "11"))
    transport.reply(429, api_error("RATE_LIMIT_EXCEEDED"),
                    headers=rate_headers(" 30 ", "0", **{"X-RateLimit-Reset": "2"}))
    assert client.list_tracks("up-1") == []
    with pytest.raises(NotFound):
        client.list_tracks("up-1")
    with pytest.raises(RateLimited):
        client.list_tracks("up-1")
    assert limiter.observed == [(30, 12), (30, 11), (30, 0)]
    assert limiter.penalties == [2.0]


def test_each_inline_retry_is_observed(make_client, transport):
    limiter = ObservingLimiter()
    client = make_client(rate_limiter=limiter)
    transport.reply(503, api_error("SERVICE_UNAVAILABLE", transient=True), headers=rate_headers("60", "5"))
    transport.reply(200, {"data": []}, headers=rate_headers("60", "4"))
    assert client.list_tracks("up-1") == []
    assert limiter.observed == [(60, 5), (60, 4)] and limiter.acquired == 2


def test_an_answer_whose_body_fails_is_still_observed(make_client, transport):
    limiter = ObservingLimiter()
    client = make_client(rate_limiter=limiter, max_inline_retries=0, max_response_bytes=1000)
    transport.reply(200, body=EndlessBody(), headers=rate_headers("60", "9", **{"Content-Type": "application/json"}))
    with pytest.raises(ProtocolError):
        client.list_tracks("up-1")
    assert limiter.observed == [(60, 9)]


@pytest.mark.parametrize(
    "headers, expected",
    [
        (rate_headers("60", "abc"), [(60, None)]),
        (rate_headers("-1", "3"), [(None, 3)]),
        (rate_headers("1.5", "1e3"), []),
        (rate_headers("", "٣"), []),               # a non-ASCII digit is not a count
        (rate_headers("99999999999", "0"), [(None, 0)]),
        ({}, []),                                   # nothing to learn: not called
    ],
)
def test_unusable_rate_limit_headers_are_passed_as_none(make_client, transport, headers, expected):
    limiter = ObservingLimiter()
    client = make_client(rate_limiter=limiter)
    transport.reply(200, {"data": []}, headers=headers)
    client.list_tracks("up-1")
    assert limiter.observed == expected


def test_limiter_without_observe_is_fine(make_client, transport):
    limiter = FakeLimiter()
    assert not hasattr(limiter, "observe") and isinstance(limiter, RateLimiter)
    client = make_client(rate_limiter=limiter)
    transport.reply(200, {"data": []}, headers=rate_headers("60", "1"))
    assert client.list_tracks("up-1") == []
    assert isinstance(ObservingLimiter(), RateLimiter)


def test_broken_observe_hides_neither_the_answer_nor_the_429(make_client, transport, caplog):
    class Broken(ObservingLimiter):
        def observe(self, limit, remaining):
            raise RuntimeError("redis down")

    limiter = Broken()
    client = make_client(rate_limiter=limiter, max_inline_retries=0)
    transport.reply(200, {"data": []}, headers=rate_headers("60", "1"))
    transport.reply(429, api_error("RATE_LIMIT_EXCEEDED"),
                    headers=rate_headers("60", "0", **{"X-RateLimit-Reset": "3"}))
    with caplog.at_level(logging.WARNING, logger="subtitle_tasks.datocms.client"):
        assert client.list_tracks("up-1") == []
        with pytest.raises(RateLimited):
            client.list_tracks("up-1")
    assert limiter.penalties == [3.0]
    assert "observe(60, 0) failed" in caplog.text


def test_announced_plan_lowers_a_shared_limiters_budget(make_client, transport):
    from subtitle_tasks.rate_limits import SharedRateLimiter, StubBackend

    limiter = SharedRateLimiter(StubBackend(), "k", limit=55, window=3.0, share=0.8, max_wait=0)
    client = make_client(rate_limiter=limiter)
    transport.reply(200, {"data": []}, headers=rate_headers("30", "29"))
    client.list_tracks("up-1")
    snap = limiter.snapshot()
    assert (snap["plan"], snap["effective_limit"], snap["used"], snap["foreign"]) == (30, 24, 1, 0)


# ------------------------------------------------------------- listing uploads (GET /uploads)


def upload_resource(upload_id: str = "up-1", created_at: Any = "2026-03-01T10:00:00.250Z", **attributes: Any) -> dict:
    return {
        "id": upload_id,
        "type": "upload",
        "attributes": {
            "size": 444, "path": f"/45/1-{upload_id}.mp4", "filename": f"{upload_id}.mp4",
            "url": f"https://www.datocms-assets.com/45/1-{upload_id}.mp4", "format": "mp4", "mime_type": "video/mp4",
            "md5": "873c296d0f2b7ee569f2d7ddaebc0d33", "duration": 62, "frame_rate": 30, "is_image": False,
            "mux_playback_id": "a1B2c3D4e5F6g7H8i9", "mux_mp4_highest_res": "high", "created_at": created_at,
            "some_future_attribute": {"ignored": True},
            **attributes,
        },
    }


def test_list_uploads_sends_the_documented_query(client, transport):
    from urllib.parse import parse_qs, urlsplit

    transport.reply(200, {"data": [upload_resource("a"), upload_resource("b")], "meta": {"total_count": 7}})
    uploads, total = client.list_uploads(offset=5, limit=2)
    sent = transport.requests[0]
    parts = urlsplit(sent.url)
    assert sent.method == "GET" and parts.path == "/uploads" and sent.body is None
    assert parse_qs(parts.query) == {"filter[fields][type][eq]": ["video"], "order_by": ["_created_at_DESC"],
                                     "page[offset]": ["5"], "page[limit]": ["2"]}
    assert [u.id for u in uploads] == ["a", "b"] and total == 7
    first = uploads[0]
    assert first.created_at == datetime(2026, 3, 1, 10, 0, 0, 250000, tzinfo=timezone.utc)
    assert (first.duration, first.frame_rate, first.mux_playback_id) == (62.0, 30.0, "a1B2c3D4e5F6g7H8i9")
    assert first.is_video and first.on_mux and first.resource["id"] == "a"

    transport.reply(200, {"data": [], "meta": {"total_count": 0}})
    assert client.list_uploads(video_only=False, newest_first=False) == ([], 0)
    query = parse_qs(urlsplit(transport.requests[1].url).query)
    assert "filter[fields][type][eq]" not in query and query["order_by"] == ["_created_at_ASC"]
    assert query["page[offset]"] == ["0"] and query["page[limit]"] == ["100"]


@pytest.mark.parametrize("kwargs", [{"limit": 0}, {"limit": 501}, {"limit": True}, {"offset": -1}, {"offset": 1.5}])
def test_list_uploads_refuses_bad_pages_before_any_request(client, transport, kwargs):
    with pytest.raises(ValueError):
        client.list_uploads(**kwargs)
    assert transport.requests == []


@pytest.mark.parametrize("body", [
    {"data": {}, "meta": {"total_count": 1}},
    {"data": [], "meta": {}},
    {"data": [], "meta": {"total_count": True}},
    {"data": [], "meta": {"total_count": -1}},
    {"data": [{"type": "upload", "id": "x"}], "meta": {"total_count": 1}},
    {"data": [upload_resource(created_at="2026-03-01T10:00:00")], "meta": {"total_count": 1}},  # no offset
    {"data": [upload_resource(duration="62")], "meta": {"total_count": 1}},
    {"data": [upload_resource(mux_playback_id=7)], "meta": {"total_count": 1}},
    {"data": [upload_resource() | {"type": "upload_track"}], "meta": {"total_count": 1}},
])
def test_list_uploads_unexpected_shape_is_protocol_error(client, transport, body):
    transport.reply(200, body)
    with pytest.raises(ProtocolError) as info:
        client.list_uploads()
    assert info.value.outcome_unknown is False  # a GET


def test_upload_from_resource():
    upload = Upload.from_resource(upload_resource(created_at="2026-03-01T12:00:00+02:00", mux_playback_id=None))
    assert upload.created_at.timestamp() == datetime(2026, 3, 1, 10, tzinfo=timezone.utc).timestamp()
    assert upload.is_video and not upload.on_mux
    image = Upload.from_resource(upload_resource(mime_type="image/png", is_image=True, duration=None))
    assert not image.is_video and image.duration is None
    # Without a MIME type a Mux playback id says "video".
    assert Upload.from_resource(upload_resource(mime_type=None)).is_video
    assert hash(upload) == hash(Upload.from_resource(upload_resource(created_at="2026-03-01T10:00:00Z",
                                                                     mux_playback_id=None)))
    assert "resource" not in repr(upload)
    for bad in (None, upload_resource(created_at=None), upload_resource(created_at="yesterday"),
                upload_resource(duration=-1), upload_resource(is_image="no"), upload_resource() | {"id": ""},
                upload_resource(created_at="2026-03-01T10:00:00\u0661Z")):
        with pytest.raises(MalformedResource):
            Upload.from_resource(bad)


def test_list_uploads_against_the_simulator(sim_client):
    sim, client = sim_client()
    for n in range(3):
        sim.add_upload(f"clip-{n}", age=60 * (n + 1))
    sim.add_upload("photo", kind="image")
    uploads, total = client.list_uploads(limit=2)
    assert [u.id for u in uploads] == ["clip-0", "clip-1"] and total == 3
    assert [u.id for u in client.list_uploads(offset=2)[0]] == ["clip-2"]
    assert client.list_uploads(video_only=False, newest_first=False)[0][-1].id == "photo"
    assert all(u.created_at.tzinfo is not None for u in uploads)
