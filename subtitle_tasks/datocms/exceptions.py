"""Exceptions raised by :class:`subtitle_tasks.datocms.client.DatoCMSClient`.

The class of an exception tells the caller what to do; the attributes tell a
human what happened.

::

    DatoCMSError
    ├── RetryableError            try the same call again later
    │   ├── RateLimited           429 (or the shared limiter's quota is spent)
    │   ├── ServerError           5xx, or an answer that is not DatoCMS JSON
    │   │   └── UnexpectedServerError   the server looks broken, not busy: bound retries
    │   │       └── ProtocolError       a 2xx (or 3xx) we cannot understand or that is too large
    │   ├── TransientAPIError     an api_error flagged ``transient: true``
    │   └── NetworkError          connect error, timeout, dropped connection
    ├── PermanentError            the same call will fail the same way
    │   ├── InvalidRequest        400 / 422 / other 4xx: fix the input
    │   │   ├── InvalidType       422 INVALID_TYPE (or a field error on ``type``)
    │   │   └── SandboxImmutable  422 IMMUTABLE_UPLOAD_TRACKS_IN_SANDBOX_ENVIRONMENT
    │   ├── Unauthorized          401
    │   ├── Forbidden             403
    │   └── NotFound              404
    └── JobFailed                 the async job finished with a non-2xx status

Every exception carries ``message``, ``status``, ``code``, ``request_id``,
``details``, ``retry_after`` and ``outcome_unknown`` (see
:class:`DatoCMSError`).  None of them ever holds the API token: the client
redacts it from anything it copies out of a response or a transport error
before building the exception, and never chains the transport exception
(whose prepared request holds the ``Authorization`` header).

Exceptions survive ``pickle`` (Celery may serialise them) with all their
attributes.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "DatoCMSError",
    "Forbidden",
    "InvalidRequest",
    "InvalidType",
    "JobFailed",
    "NetworkError",
    "NotFound",
    "PermanentError",
    "ProtocolError",
    "RateLimited",
    "RetryableError",
    "SandboxImmutable",
    "ServerError",
    "TransientAPIError",
    "Unauthorized",
    "UnexpectedServerError",
]


class DatoCMSError(Exception):
    """Base class of every error raised by the DatoCMS client.

    Attributes:
        message: human-readable description (no token, ever).
        status: HTTP status of the answer, or ``None`` when there was no
            answer (network error, local rate limiter).  For
            :class:`JobFailed`, the status recorded in the job result.
        code: DatoCMS ``api_error`` code (``"INVALID_FIELD"``, ...) or ``None``.
        request_id: the ``X-Request-Id`` response header, else the
            ``api_error``'s ``id``, else ``None``.  Quote it to DatoCMS support.
        details: the ``api_error``'s ``details`` object (``{}`` when absent).
        retry_after: seconds the server asked us to wait (``X-RateLimit-Reset``),
            or ``None``.
        outcome_unknown: ``True`` when the failed call was a POST that may have
            been carried out by the server anyway (read timeout, connection
            dropped after sending, 5xx other than 503, unreadable 2xx).  The
            caller should reconcile (look for the result) before POSTing again.
        method, path: the HTTP call that failed, when there was one.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
        details: dict[str, Any] | None = None,
        retry_after: float | None = None,
        outcome_unknown: bool = False,
        method: str | None = None,
        path: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.request_id = request_id
        self.details = dict(details) if details else {}
        self.retry_after = retry_after
        self.outcome_unknown = outcome_unknown
        self.method = method
        self.path = path

    def __str__(self) -> str:
        head = " ".join(str(part) for part in (self.status, self.code) if part is not None)
        text = f"{head}: {self.message}" if head else self.message
        if self.request_id:
            text += f" (request id {self.request_id})"
        return text

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(message={self.message!r}, status={self.status!r}, "
            f"code={self.code!r}, request_id={self.request_id!r})"
        )

    def __reduce__(self) -> tuple[type[DatoCMSError], tuple[str], dict[str, Any]]:
        # Exception's default pickling replays ``cls(*self.args)`` and loses
        # keyword-only attributes; rebuild from the message and restore the
        # instance dict instead.
        return (type(self), (self.message,), self.__dict__.copy())


class RetryableError(DatoCMSError):
    """The call may succeed if made again later.

    Long waits are the caller's business (reschedule the task); the client
    only retries inline for delays up to its ``max_inline_wait``.
    """


class RateLimited(RetryableError):
    """429 ``RATE_LIMIT_EXCEEDED``, or the fleet-wide limiter refused a slot.

    ``retry_after`` is always set: ``X-RateLimit-Reset`` seconds, 1.0 when the
    header is missing or unusable.
    """


class ServerError(RetryableError):
    """A 5xx answer, or an error answer whose body is not DatoCMS JSON
    (typically an HTML page from a gateway or load balancer)."""


class UnexpectedServerError(ServerError):
    """A server failure that looks like a fault rather than load.

    A 500, 501 or 505+ not flagged ``transient`` (502/503/504 are gateways
    and overload, which pass), or a :class:`ProtocolError`.  Retryable, since
    a deploy or a flaky node may fix it, but waiting rarely does: a caller
    should give up after a bounded number of these in a row instead of
    retrying until its deadline.
    """


class ProtocolError(UnexpectedServerError):
    """A success (2xx) or redirect (3xx) answer we cannot understand, or an
    answer larger than the client's ``max_response_bytes``.

    Most likely a proxy, gateway or captive portal answered instead of
    DatoCMS, so it is retryable like any server error.  A POST that gets one
    has ``outcome_unknown=True``: the job may well have been created.
    """


class TransientAPIError(RetryableError):
    """An ``api_error`` that DatoCMS itself flagged ``transient: true``
    (``ENVIRONMENT_NOT_READY``, ``SERVICE_UNAVAILABLE``, ...), whatever the
    HTTP status."""


class NetworkError(RetryableError):
    """No usable HTTP answer: connect failure, timeout, dropped connection.

    ``request_sent`` is ``False`` only when the request certainly never left
    (DNS failure, connection refused, connect timeout).  When it is ``True``
    the server may have received -- and acted on -- the request.
    """

    def __init__(self, message: str, *, request_sent: bool = True, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.request_sent = request_sent


class PermanentError(DatoCMSError):
    """Repeating the same call cannot help; something must change first.

    Raised as-is (not a subclass) for local misconfiguration that prevents
    sending at all, such as an unusable base URL.
    """


class InvalidRequest(PermanentError):
    """DatoCMS refused the input: 400, 422 and 4xx codes without a class of
    their own (``INVALID_FIELD``, ``INVALID_ATTRIBUTES``, ``NOT_A_VIDEO``,
    ``NO_PRIMARY_AUDIO_TRACK``, ``INVALID_ENVIRONMENT``, ...)."""


class InvalidType(InvalidRequest):
    """The JSON:API ``type`` of the body was refused: ``INVALID_TYPE``, or a
    422 field/attribute error whose ``details`` name ``type``.

    The generate-subtitles endpoint is experimental and its expected body
    type has changed before (``upload_track`` vs ``subtitles_generation``);
    a caller may retry once with the other type.
    """


class SandboxImmutable(InvalidRequest):
    """``IMMUTABLE_UPLOAD_TRACKS_IN_SANDBOX_ENVIRONMENT``: the target sandbox
    environment does not allow changing upload tracks.  Only targeting
    another environment (or the primary one) can help."""

    API_CODE = "IMMUTABLE_UPLOAD_TRACKS_IN_SANDBOX_ENVIRONMENT"


class Unauthorized(PermanentError):
    """401: the API token is missing, malformed, expired or revoked."""


class Forbidden(PermanentError):
    """403: the token is valid but lacks a permission."""


class NotFound(PermanentError):
    """404: no such upload (or resource).

    ``get_job_result`` does not raise this for the ``NOT_FOUND`` answer that
    means "job still running"; it returns ``None`` instead.
    """


class JobFailed(DatoCMSError):
    """A job finished, but the operation it ran failed.

    ``status`` is the HTTP status the job recorded (``attributes.status``);
    ``code``, ``details`` and ``transient`` come from the first ``api_error``
    of the job's payload (``None`` / ``{}`` / ``False`` when the payload is
    ``null`` or not an error document).  ``payload`` is the raw payload and
    ``job_id`` the job.  Neither retryable nor permanent by class: the job is
    over; whether submitting a new one can help depends on ``code`` and
    ``transient``.
    """

    def __init__(
        self,
        message: str,
        *,
        job_id: str | None = None,
        transient: bool = False,
        payload: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(message, **kwargs)
        self.job_id = job_id
        self.transient = transient
        self.payload = payload
