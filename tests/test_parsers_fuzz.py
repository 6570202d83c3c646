"""Every response parser, fuzzed: arbitrary JSON and near-valid documents.

Whatever DatoCMS (or anything in front of it) answers, a parser either returns
a valid value or raises its documented exception: ``MalformedResource`` for
the resource parsers, a ``DatoCMSError`` subclass for the client. Never a
TypeError, KeyError, AttributeError or RecursionError, and never the token.
"""

from __future__ import annotations

import io
import json
import math
import pickle
from typing import Any

import requests
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict

from subtitle_tasks.datocms import (
    ApiErrorEntry,
    DatoCMSClient,
    DatoCMSError,
    JobFailed,
    JobResult,
    MalformedResource,
    PermanentError,
    RetryableError,
    Upload,
    UploadTrack,
    parse_api_errors,
    parse_job_result,
)

TOKEN = "fuzz-t0ken-9f8e7d6c5b4a"
FUZZ = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# ----------------------------------------------------------------- strategies

texts = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["", "upload_track", "job", "job_result", "api_error", "ready", "preparing", "errored",
                     "subtitles", "NOT_FOUND", "INVALID_TYPE", "type", "data.type", TOKEN]),
    st.builds(lambda a, b: f"{a}{TOKEN}{b}", st.text(max_size=4), st.text(max_size=4)),
)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True), texts,
)


def nested(leaves: st.SearchStrategy) -> st.SearchStrategy:
    return st.recursive(
        leaves,
        lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(texts, children, max_size=4)),
        max_leaves=24,
    )


any_json = nested(scalars)
# Handed to a parser directly (not off the wire), a value may also hold an int past
# int-to-str limits, whose repr() raises.
HUGE = 10 ** 5000
any_value = nested(st.one_of(scalars, st.builds(lambda: HUGE)))


# What a field holds when it is wrong: anything, or the near misses.
odd = st.one_of(any_json, st.sampled_from(["", None, 0, True, [], {}]), st.builds(lambda: HUGE))


def maybe(valid: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly the valid value, sometimes anything at all (so whole documents are
    often valid, often wrong in one place)."""
    return st.one_of(*[valid] * 7, odd)


def sometimes_missing(fields: dict[str, st.SearchStrategy]) -> st.SearchStrategy:
    """A dict with every field (usually), or each field present or absent."""
    return st.one_of(*[st.fixed_dictionaries(fields)] * 3, st.fixed_dictionaries({}, optional=fields))


ids = st.one_of(st.text(min_size=1, max_size=8), st.integers(0, 10 ** 6))

def track_fields(wrap) -> dict[str, st.SearchStrategy]:
    return {
        "type": wrap(st.just("upload_track")),
        "id": wrap(ids),
        "attributes": wrap(sometimes_missing({
            "type": wrap(st.sampled_from(["subtitles", "audio"])),
            "name": wrap(st.one_of(st.none(), texts)),
            "language_code": wrap(st.sampled_from(["it-IT", "en", None])),
            "closed_captions": wrap(st.one_of(st.none(), st.booleans())),
            "status": wrap(st.sampled_from(["preparing", "ready", "errored", "transcoding"])),
            "error": wrap(st.one_of(st.none(), texts)),
        }) if wrap is maybe else st.fixed_dictionaries({
            "type": st.sampled_from(["subtitles", "audio"]),
            "name": st.one_of(st.none(), texts),
            "language_code": st.sampled_from(["it-IT", "en", None]),
            "closed_captions": st.one_of(st.none(), st.booleans()),
            "status": st.sampled_from(["preparing", "ready", "errored", "transcoding"]),
            "error": st.one_of(st.none(), texts),
        })),
    }


valid_tracks = st.fixed_dictionaries(track_fields(lambda valid: valid), optional={
    "relationships": st.fixed_dictionaries({"upload": st.fixed_dictionaries({"data": st.fixed_dictionaries(
        {"type": st.just("upload"), "id": ids})})}),
})
near_valid_tracks = sometimes_missing({
    **track_fields(maybe),
    "relationships": maybe(st.fixed_dictionaries({
        "upload": maybe(st.fixed_dictionaries({"data": maybe(sometimes_missing({"type": st.just("upload"),
                                                                               "id": maybe(ids)}))})),
    })),
})
track_resources = st.one_of(valid_tracks, near_valid_tracks)

api_error_docs = st.fixed_dictionaries({
    "data": maybe(st.lists(maybe(sometimes_missing({
        "id": maybe(ids),
        "type": maybe(st.just("api_error")),
        "attributes": maybe(sometimes_missing({
            "code": maybe(st.sampled_from(["NOT_FOUND", "INVALID_TYPE", "INVALID_FIELD", "RATE_LIMIT_EXCEEDED",
                                           "IMMUTABLE_UPLOAD_TRACKS_IN_SANDBOX_ENVIRONMENT", "MUX_ERROR"])),
            "transient": maybe(st.booleans()),
            "details": maybe(st.dictionaries(st.sampled_from(["field", "fields", "attribute", "source", "x"]),
                                             maybe(st.sampled_from(["type", "data.type", "language_code"])),
                                             max_size=3)),
            "doc_url": maybe(texts),
        })),
    })), max_size=3)),
})

payloads = st.one_of(
    st.fixed_dictionaries({"data": valid_tracks}),
    st.fixed_dictionaries({"data": track_resources}),
    api_error_docs,
    st.none(),
    any_json,
)

job_result_docs = st.fixed_dictionaries({
    "data": maybe(sometimes_missing({
        "type": maybe(st.just("job_result")),
        "id": maybe(ids),
        "attributes": maybe(sometimes_missing({
            "status": maybe(st.one_of(st.sampled_from([200, 201, 202, 404, 422, 500]), st.integers(-5, 1000))),
            "payload": payloads,
        })),
    })),
})

valid_job_docs = st.fixed_dictionaries({"data": st.fixed_dictionaries({"type": st.just("job"), "id": ids})})
valid_job_result_docs = st.fixed_dictionaries({"data": st.fixed_dictionaries({
    "type": st.just("job_result"),
    "id": ids,
    "attributes": st.fixed_dictionaries({
        "status": st.sampled_from([200, 201, 202, 422, 500]),
        "payload": st.one_of(st.fixed_dictionaries({"data": valid_tracks}), api_error_docs, st.none()),
    }),
})})
valid_track_list_docs = st.fixed_dictionaries({"data": st.lists(valid_tracks, max_size=3)})
job_docs = st.fixed_dictionaries({"data": maybe(sometimes_missing({"type": maybe(st.just("job")),
                                                                   "id": maybe(ids)}))})
track_list_docs = st.fixed_dictionaries({"data": maybe(st.lists(track_resources, max_size=3))})

statuses = st.one_of(st.sampled_from([200, 201, 202]), st.sampled_from([302, 404, 409, 422, 429, 500, 502, 503]),
                     st.integers(0, 1000))
header_values = st.one_of(st.none(), texts,
                          st.sampled_from(["1", "0", "-1", "nan", "inf", "1e309", " 7 ", "2.5", "99999999999"]))
headers = st.just({}) | st.fixed_dictionaries({}, optional={
    "X-RateLimit-Reset": header_values,
    "X-Request-Id": header_values,
    "Content-Type": st.one_of(header_values, st.just("application/json")),
    "Content-Length": st.one_of(header_values, st.integers(-3, 1 << 40).map(str)),
})


_HUGE_MARK = "\u0000huge\u0000"


def _mark_huge(value: Any) -> Any:
    if value is HUGE:
        return _HUGE_MARK
    if isinstance(value, dict):
        return {key: _mark_huge(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_mark_huge(item) for item in value]
    return value


def dumps(document: Any) -> bytes:
    """JSON text; HUGE becomes a 5000-digit number, which json.loads refuses."""
    text = json.dumps(_mark_huge(document), allow_nan=True)
    return text.replace(json.dumps(_HUGE_MARK), "9" * 5000).encode()


def answers(valid: st.SearchStrategy, documents: st.SearchStrategy) -> st.SearchStrategy:
    """(status, headers, body): a plain success carrying a valid document, or a
    near-valid one, or anything at all."""
    success = st.sampled_from([200, 201, 202])
    return st.one_of(
        st.tuples(success, st.just({}), valid.map(dumps)),
        st.tuples(success, st.just({}), documents.map(dumps)),
        st.tuples(statuses, headers, encoded(documents)),
    )


def encoded(documents: st.SearchStrategy) -> st.SearchStrategy:
    """Bodies as bytes: the document as JSON, arbitrary JSON, junk or absurd nesting."""
    return st.one_of(
        documents.map(dumps),
        documents.map(dumps),
        documents.map(dumps),
        any_json.map(dumps),
        st.binary(max_size=64),
        st.integers(1, 3000).map(lambda depth: b"[" * depth + b"]" * depth),
        st.integers(1, 300).map(lambda depth: b'{"data":' * depth + b"1" + b"}" * depth),
    )


# ----------------------------------------------------------------- checks


def check_track(track: Any) -> None:
    assert type(track) is UploadTrack
    assert isinstance(track.id, str) and track.id
    assert isinstance(track.status, str) and track.status
    assert isinstance(track.track_type, str) and track.track_type
    assert track.upload_id is None or isinstance(track.upload_id, str)
    for value in (track.name, track.language_code, track.error):
        assert value is None or isinstance(value, str)
    assert track.closed_captions is None or isinstance(track.closed_captions, bool)
    assert isinstance(track.resource, dict)
    hash(track)
    repr(track)


def no_token(value: Any) -> None:
    assert TOKEN not in repr(value)


# ----------------------------------------------------------------- resource parsers


@FUZZ
@example({"data": [{"type": "api_error", "id": HUGE, "attributes": {"code": "X"}}]})
@given(st.one_of(any_value, api_error_docs))
def test_parse_api_errors_never_raises(body):
    entries = parse_api_errors(body)
    assert isinstance(entries, list)
    for entry in entries:
        assert type(entry) is ApiErrorEntry
        assert entry.id is None or (isinstance(entry.id, str) and entry.id)
        assert entry.code is None or (isinstance(entry.code, str) and entry.code)
        assert isinstance(entry.transient, bool) and isinstance(entry.details, dict)
        assert entry.doc_url is None or isinstance(entry.doc_url, str)


@FUZZ
@given(st.one_of(any_value, job_result_docs))
def test_parse_job_result_returns_a_result_or_malformed(body):
    try:
        result = parse_job_result(body)
    except MalformedResource as exc:
        str(exc)
        return
    assert type(result) is JobResult
    assert isinstance(result.id, str) and result.id
    assert type(result.status) is int and 100 <= result.status <= 599
    assert isinstance(result.succeeded, bool)
    assert isinstance(result.errors, list)


@FUZZ
@given(ids, st.integers(100, 599), st.one_of(payloads, any_value))
def test_job_result_upload_track_returns_a_track_or_malformed(job_id, status, payload):
    result = JobResult(id=str(job_id), status=status, payload=payload)
    try:
        track = result.upload_track()
    except MalformedResource as exc:
        str(exc)
        return
    check_track(track)


@FUZZ
@example({"type": "upload_track", "id": HUGE, "attributes": {"type": "subtitles", "status": "ready"}}, None)
@example({"type": "upload_track", "id": "t", "attributes": {"type": "subtitles", "status": "ready"},
          "relationships": {"upload": {"data": {"id": HUGE}}}}, None)
@example({"type": "upload_track", "id": "t", "attributes": {"type": "subtitles", "status": HUGE}}, None)
@given(st.one_of(any_value, track_resources), st.one_of(st.none(), st.text(min_size=1, max_size=5)))
def test_upload_track_from_resource_returns_a_track_or_malformed(obj, upload_id):
    try:
        track = UploadTrack.from_resource(obj, upload_id=upload_id)
    except MalformedResource as exc:
        str(exc)
        return
    check_track(track)


# ----------------------------------------------------------------- the client's answer handling


class OneAnswer(BaseAdapter):
    """Answers every request with the same status, headers and body."""

    def __init__(self, status: int, hdrs: dict[str, str], body: bytes) -> None:
        super().__init__()
        self.status, self.hdrs, self.body = status, hdrs, body

    def send(self, request, stream=False, timeout=None, verify=True, cert=None, proxies=None):
        response = requests.Response()
        response.status_code = self.status
        response.headers = CaseInsensitiveDict(self.hdrs)
        response.raw = io.BytesIO(self.body)
        response.reason = "Fuzzed"
        response.url = request.url
        response.request = request
        return response

    def close(self) -> None:
        pass


class RecordingLimiter:
    def __init__(self) -> None:
        self.penalties: list[float] = []

    def acquire(self) -> None:
        pass

    def penalize(self, seconds: float) -> None:
        self.penalties.append(seconds)


def drive(call, status: int, hdrs: dict[str, Any], body: bytes) -> Any:
    """Run one client call against a fixed answer; return its value or the DatoCMSError raised."""
    session = requests.Session()
    session.trust_env = False
    session.mount("https://", OneAnswer(status, {k: v for k, v in hdrs.items() if v is not None}, body))
    limiter = RecordingLimiter()
    client = DatoCMSClient(TOKEN, session=session, rate_limiter=limiter, max_inline_retries=0,
                           sleep=lambda _: None, max_response_bytes=4096)
    try:
        return call(client)
    except DatoCMSError as exc:
        # a documented class, with sane attributes, no token, picklable
        assert isinstance(exc, (RetryableError, PermanentError, JobFailed)), type(exc)
        assert exc.status == status or isinstance(exc, JobFailed) or exc.status is None
        assert isinstance(exc.details, dict) and isinstance(exc.outcome_unknown, bool)
        assert exc.retry_after is None or (math.isfinite(exc.retry_after) and exc.retry_after > 0)
        for penalty in limiter.penalties:
            assert math.isfinite(penalty) and penalty > 0
        for text in (str(exc), repr(exc), repr(vars(exc))):
            assert TOKEN not in text
        clone = pickle.loads(pickle.dumps(exc))
        assert type(clone) is type(exc)
        return exc


@FUZZ
@given(answers(valid_job_docs, job_docs))
def test_generate_subtitles_answer_handling(answer):
    status, hdrs, body = answer
    outcome = drive(lambda client: client.generate_subtitles("up-1", "it-IT"), status, hdrs, body)
    if not isinstance(outcome, DatoCMSError):
        assert isinstance(outcome, str) and outcome
        assert 200 <= status < 300


@FUZZ
@given(st.one_of(answers(valid_job_result_docs, job_result_docs),
                 st.tuples(st.just(404), headers, encoded(api_error_docs))))
def test_get_job_result_answer_handling(answer):
    status, hdrs, body = answer
    outcome = drive(lambda client: client.get_job_result("4235"), status, hdrs, body)
    if outcome is None:
        assert status == 404
    elif not isinstance(outcome, DatoCMSError):
        check_track(outcome)
        no_token(outcome.resource)
        assert 200 <= status < 300


@FUZZ
@given(answers(valid_track_list_docs, track_list_docs))
def test_list_tracks_answer_handling(answer):
    status, hdrs, body = answer
    outcome = drive(lambda client: client.list_tracks("up-1"), status, hdrs, body)
    if not isinstance(outcome, DatoCMSError):
        assert isinstance(outcome, list) and 200 <= status < 300
        for track in outcome:
            check_track(track)
            no_token(track.resource)



# ----------------------------------------------------------------- uploads (GET /uploads)

timestamps = st.one_of(
    st.sampled_from(["2026-03-01T10:00:00.250Z", "2026-03-01T12:00:00+02:00", "2026-03-01T10:00:00",
                     "2026-03-01", "9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+01:00", "",
                     "2026-13-01T00:00:00Z", "2026-03-01T10:00:00\u0661Z", "2026-03-01T10:00:00zz"]),
    st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
    texts,
)
numbers = st.one_of(st.none(), st.integers(-5, 10 ** 6), st.floats(allow_nan=True, allow_infinity=True),
                    st.builds(lambda: HUGE))


def upload_fields(wrap) -> dict[str, st.SearchStrategy]:
    return {
        "type": wrap(st.just("upload")),
        "id": wrap(ids),
        "attributes": wrap(sometimes_missing({
            "created_at": wrap(timestamps),
            "mime_type": wrap(st.sampled_from(["video/mp4", "image/png", None])),
            "is_image": wrap(st.one_of(st.none(), st.booleans())),
            "duration": wrap(numbers),
            "frame_rate": wrap(numbers),
            "mux_playback_id": wrap(st.one_of(st.none(), texts)),
            "mux_mp4_highest_res": wrap(st.sampled_from(["high", "medium", None])),
            "filename": wrap(st.one_of(st.none(), texts)),
            "format": wrap(st.one_of(st.none(), texts)),
        })),
    }


upload_resources = st.one_of(st.fixed_dictionaries(upload_fields(lambda valid: valid)),
                             sometimes_missing(upload_fields(maybe)))
valid_upload_list_docs = st.fixed_dictionaries({
    "data": st.lists(st.fixed_dictionaries({
        "type": st.just("upload"), "id": ids,
        "attributes": st.fixed_dictionaries({
            "created_at": st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
            "mime_type": st.just("video/mp4"), "duration": st.integers(0, 10 ** 5),
            "mux_playback_id": st.one_of(st.none(), st.text(min_size=1, max_size=8))}),
    }), max_size=3),
    "meta": st.fixed_dictionaries({"total_count": st.integers(0, 10 ** 6)}),
})
upload_list_docs = st.fixed_dictionaries({
    "data": maybe(st.lists(upload_resources, max_size=3)),
    "meta": maybe(sometimes_missing({"total_count": maybe(st.integers(-3, 10 ** 6))})),
})


def check_upload(upload: Any) -> None:
    assert type(upload) is Upload
    assert isinstance(upload.id, str) and upload.id
    assert upload.created_at.tzinfo is not None
    upload.created_at.timestamp()  # usable for the sweep's arithmetic
    for value in (upload.duration, upload.frame_rate):
        assert value is None or (type(value) is float and math.isfinite(value) and value >= 0)
    for value in (upload.mime_type, upload.mux_playback_id, upload.mux_mp4_highest_res, upload.filename,
                  upload.format):
        assert value is None or isinstance(value, str)
    assert upload.is_image is None or isinstance(upload.is_image, bool)
    assert isinstance(upload.is_video, bool) and isinstance(upload.on_mux, bool)
    hash(upload)
    repr(upload)


@FUZZ
@example({"type": "upload", "id": "u", "attributes": {"created_at": "2026-03-01T10:00:00Z", "duration": HUGE}})
@example({"type": "upload", "id": "u", "attributes": {"created_at": "9999-12-31T23:59:59-23:59"}})
@given(st.one_of(any_value, upload_resources))
def test_upload_from_resource_returns_an_upload_or_malformed(obj):
    try:
        upload = Upload.from_resource(obj)
    except MalformedResource as exc:
        str(exc)
        return
    check_upload(upload)


@FUZZ
@given(answers(valid_upload_list_docs, upload_list_docs))
def test_list_uploads_answer_handling(answer):
    status, hdrs, body = answer
    outcome = drive(lambda client: client.list_uploads(offset=0, limit=3), status, hdrs, body)
    if not isinstance(outcome, DatoCMSError):
        uploads, total = outcome
        assert 200 <= status < 300 and type(total) is int and total >= 0
        for upload in uploads:
            check_upload(upload)
            no_token(upload.resource)
