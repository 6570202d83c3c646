"""Hostile input at the edge: every case is refused before a write, with the exact class.

Each case runs against a real Redis database of its own and checks DBSIZE before and
after: a refusal must leave nothing behind, not even a half-made generation.
"""

from __future__ import annotations

import pytest
import redis as redis_lib
from celery import Celery, chain, chord, group

from subtitle_tasks import (
    IdempotencyConflict,
    InvalidSubtitleRequest,
    JoinLimitReached,
    StateError,
    request_subtitles,
    runtime,
)
from subtitle_tasks.settings import load_settings
from subtitle_tasks.validation import SUPPORTED_LANGUAGES

PREFIX = "hostile"
app = Celery("hostile-test", set_as_current=False)


@app.task(name="hostile.publish")
def publish(track, pk):
    return pk


def sig(**fields):
    return {"task": "hostile.publish", "args": [1], **fields}


def opts(**options):
    return sig(options=options)


# (label, keyword arguments, expected exception, expected field)
BAD = "bad"
CASES = [
    # upload ids: full match only, URL-safe characters, a length cap
    ("upload None", dict(upload_id=None), InvalidSubtitleRequest, "upload_id"),
    ("upload int", dict(upload_id=5), InvalidSubtitleRequest, "upload_id"),
    ("upload empty", dict(upload_id=""), InvalidSubtitleRequest, "upload_id"),
    ("upload newline", dict(upload_id="abc\n"), InvalidSubtitleRequest, "upload_id"),
    ("upload CR", dict(upload_id="abc\r"), InvalidSubtitleRequest, "upload_id"),
    ("upload space", dict(upload_id="a b"), InvalidSubtitleRequest, "upload_id"),
    ("upload slash", dict(upload_id="a/b"), InvalidSubtitleRequest, "upload_id"),
    ("upload dotdot", dict(upload_id=".."), InvalidSubtitleRequest, "upload_id"),
    ("upload too long", dict(upload_id="x" * 129), InvalidSubtitleRequest, "upload_id"),
    ("upload unicode", dict(upload_id="vidéo"), InvalidSubtitleRequest, "upload_id"),
    ("upload NUL", dict(upload_id="a\x00"), InvalidSubtitleRequest, "upload_id"),
    ("upload comma", dict(upload_id="a,b"), InvalidSubtitleRequest, "upload_id"),
    # language tags: RFC 5646 syntax, a length cap, Mux's list unless told otherwise
    ("lang None", dict(language_code=None), InvalidSubtitleRequest, "language_code"),
    ("lang empty", dict(language_code=""), InvalidSubtitleRequest, "language_code"),
    ("lang newline", dict(language_code="it-IT\n"), InvalidSubtitleRequest, "language_code"),
    ("lang leading space", dict(language_code=" it-IT"), InvalidSubtitleRequest, "language_code"),
    ("lang 120,000 chars", dict(language_code="it-" + "a" * 120_000), InvalidSubtitleRequest, "language_code"),
    ("lang one letter", dict(language_code="e"), InvalidSubtitleRequest, "language_code"),
    ("lang a word", dict(language_code="italian"), InvalidSubtitleRequest, "language_code"),
    ("lang underscore", dict(language_code="it_IT"), InvalidSubtitleRequest, "language_code"),
    ("lang double dash", dict(language_code="it--IT"), InvalidSubtitleRequest, "language_code"),
    ("lang trailing dash", dict(language_code="it-"), InvalidSubtitleRequest, "language_code"),
    ("lang leading dash", dict(language_code="-it"), InvalidSubtitleRequest, "language_code"),
    ("lang repeated variant", dict(language_code="de-1996-1996"), InvalidSubtitleRequest, "language_code"),
    ("lang repeated extension", dict(language_code="en-a-bbb-a-ccc"), InvalidSubtitleRequest, "language_code"),
    ("lang empty private use", dict(language_code="en-x"), InvalidSubtitleRequest, "language_code"),
    ("lang private subtag too long", dict(language_code="en-x-abcdefghi"), InvalidSubtitleRequest, "language_code"),
    ("lang unsupported", dict(language_code="ja-JP"), InvalidSubtitleRequest, "language_code"),
    ("lang private use only", dict(language_code="x-twain"), InvalidSubtitleRequest, "language_code"),
    ("lang grandfathered", dict(language_code="i-klingon"), InvalidSubtitleRequest, "language_code"),
    ("lang NUL", dict(language_code="it\x00"), InvalidSubtitleRequest, "language_code"),
    ("lang non-ASCII", dict(language_code="ìt"), InvalidSubtitleRequest, "language_code"),
    ("lang Arabic digits region", dict(language_code="es-٤١٩"), InvalidSubtitleRequest, "language_code"),
    # names: no control characters, a length cap
    ("name empty", dict(name=""), InvalidSubtitleRequest, "name"),
    ("name blank", dict(name="   "), InvalidSubtitleRequest, "name"),
    ("name int", dict(name=5), InvalidSubtitleRequest, "name"),
    ("name too long", dict(name="a" * 256), InvalidSubtitleRequest, "name"),
    ("name NUL", dict(name="a\x00b"), InvalidSubtitleRequest, "name"),
    ("name ESC", dict(name="a\x1b[31mb"), InvalidSubtitleRequest, "name"),
    ("name newline", dict(name="a\nb"), InvalidSubtitleRequest, "name"),
    ("name bidi override", dict(name="a\u202eb"), InvalidSubtitleRequest, "name"),
    ("name line separator", dict(name="a\u2028b"), InvalidSubtitleRequest, "name"),
    ("name lone surrogate", dict(name="a\ud800"), InvalidSubtitleRequest, "name"),
    ("name C1 control", dict(name="a\x85b"), InvalidSubtitleRequest, "name"),
    # deadlines
    ("deadline zero", dict(deadline=0), InvalidSubtitleRequest, "deadline"),
    ("deadline negative", dict(deadline=-1), InvalidSubtitleRequest, "deadline"),
    ("deadline bool", dict(deadline=True), InvalidSubtitleRequest, "deadline"),
    ("deadline text", dict(deadline="10"), InvalidSubtitleRequest, "deadline"),
    ("deadline NaN", dict(deadline=float("nan")), InvalidSubtitleRequest, "deadline"),
    ("deadline inf", dict(deadline=float("inf")), InvalidSubtitleRequest, "deadline"),
    ("deadline 31 days", dict(deadline=31 * 86400), InvalidSubtitleRequest, "deadline"),
    # request ids
    ("rid empty", dict(request_id=""), InvalidSubtitleRequest, "request_id"),
    ("rid newline", dict(request_id="order-1\n"), InvalidSubtitleRequest, "request_id"),
    ("rid comma", dict(request_id="a,b"), InvalidSubtitleRequest, "request_id"),
    ("rid pipe", dict(request_id="a|b"), InvalidSubtitleRequest, "request_id"),
    ("rid space", dict(request_id="a b"), InvalidSubtitleRequest, "request_id"),
    ("rid too long", dict(request_id="r" * 129), InvalidSubtitleRequest, "request_id"),
    ("rid int", dict(request_id=5), InvalidSubtitleRequest, "request_id"),
    ("rid unicode", dict(request_id="é"), InvalidSubtitleRequest, "request_id"),
    # callbacks: structure
    ("cb a string", dict(on_ready="hostile.publish"), InvalidSubtitleRequest, "on_ready"),
    ("cb an int", dict(on_ready=42), InvalidSubtitleRequest, "on_ready"),
    ("cb no task", dict(on_ready={"args": [1]}), InvalidSubtitleRequest, "on_ready"),
    ("cb args not a list", dict(on_ready={"task": "x", "args": 5}), InvalidSubtitleRequest, "on_ready"),
    ("cb options not a dict", dict(on_ready={"task": "x", "options": 5}), InvalidSubtitleRequest, "on_ready"),
    ("cb kwargs a list", dict(on_error=sig(kwargs=[])), InvalidSubtitleRequest, "on_error"),
    ("cb kwargs int keys", dict(on_error=sig(kwargs={1: 2})), InvalidSubtitleRequest, "on_error"),
    ("cb unknown key", dict(on_ready=sig(extra=1)), InvalidSubtitleRequest, "on_ready"),
    ("cb empty task", dict(on_ready={"task": ""}), InvalidSubtitleRequest, "on_ready"),
    ("cb task with space", dict(on_ready={"task": "a b"}), InvalidSubtitleRequest, "on_ready"),
    ("cb task newline", dict(on_ready={"task": "a\n"}), InvalidSubtitleRequest, "on_ready"),
    ("cb immutable text", dict(on_ready=sig(immutable="yes")), InvalidSubtitleRequest, "on_ready"),
    ("cb NaN arg", dict(on_ready=sig(args=[float("nan")])), InvalidSubtitleRequest, "on_ready"),
    ("cb object arg", dict(on_ready=publish.s(object())), InvalidSubtitleRequest, "on_ready"),
    ("cb list holding junk", dict(on_ready=[publish.s(1), 7]), InvalidSubtitleRequest, "on_ready"),
    # callbacks: canvas is refused cleanly (dicts and objects)
    ("cb chain dict", dict(on_ready={"task": "celery.chain", "subtask_type": "chain", "kwargs": {"tasks": []}}),
     InvalidSubtitleRequest, "on_ready"),
    ("cb group dict", dict(on_ready={"task": "celery.group", "subtask_type": "group", "kwargs": {}}),
     InvalidSubtitleRequest, "on_ready"),
    ("cb chord dict", dict(on_ready={"task": "celery.chord", "subtask_type": "chord", "kwargs": {}}),
     InvalidSubtitleRequest, "on_ready"),
    ("cb chain", dict(on_ready=chain(publish.s(1), publish.si(None, 2))), InvalidSubtitleRequest, "on_ready"),
    ("cb group", dict(on_error=group(publish.s(1), publish.s(2))), InvalidSubtitleRequest, "on_error"),
    ("cb chord", dict(on_ready=chord([publish.s(1)], publish.s(2))), InvalidSubtitleRequest, "on_ready"),
    # callbacks: options outside the allow-list, and their values
    ("opt serializer", dict(on_ready=opts(serializer="pickle")), InvalidSubtitleRequest, "on_ready"),
    ("opt task_id", dict(on_ready=opts(task_id="mine")), InvalidSubtitleRequest, "on_ready"),
    ("opt link", dict(on_ready=opts(link=[sig()])), InvalidSubtitleRequest, "on_ready"),
    ("opt headers", dict(on_ready=opts(headers={"a": 1})), InvalidSubtitleRequest, "on_ready"),
    ("opt priority 999", dict(on_ready=opts(priority=999)), InvalidSubtitleRequest, "on_ready"),
    ("opt negative countdown", dict(on_ready=opts(countdown=-1)), InvalidSubtitleRequest, "on_ready"),
    ("opt expires text", dict(on_ready=opts(expires="soon")), InvalidSubtitleRequest, "on_ready"),
    # callbacks: routing names that would address a key of ours or kombu's
    ("queue our dispatched key", dict(on_ready=opts(queue=f"{PREFIX}:dispatched")), InvalidSubtitleRequest,
     "on_ready"),
    ("queue our due set", dict(on_ready=opts(queue=f"{PREFIX}:due")), InvalidSubtitleRequest, "on_ready"),
    ("queue our prefix", dict(on_ready=opts(queue=PREFIX)), InvalidSubtitleRequest, "on_ready"),
    ("queue kombu unacked", dict(on_ready=opts(queue="unacked")), InvalidSubtitleRequest, "on_ready"),
    ("queue kombu unacked_index", dict(on_ready=opts(queue="unacked_index")), InvalidSubtitleRequest, "on_ready"),
    ("exchange kombu binding", dict(on_ready=opts(exchange="_kombu.binding.celery")), InvalidSubtitleRequest,
     "on_ready"),
    ("queue result key", dict(on_ready=opts(queue="celery-task-meta-x")), InvalidSubtitleRequest, "on_ready"),
    ("routing key newline", dict(on_ready=opts(routing_key="a\nb")), InvalidSubtitleRequest, "on_ready"),
    ("queue priority separator", dict(on_ready=opts(queue="celery\x06\x163")), InvalidSubtitleRequest, "on_ready"),
    ("queue empty", dict(on_ready=opts(queue="")), InvalidSubtitleRequest, "on_ready"),
    # callbacks: caps
    ("21 signatures", dict(on_ready=[publish.s(i) for i in range(21)]), InvalidSubtitleRequest, "on_ready"),
    ("4,000 signatures", dict(on_error=[publish.s(i) for i in range(4000)]), InvalidSubtitleRequest, "on_error"),
    ("250 KB callback", dict(on_ready=publish.s("x" * 250_000)), InvalidSubtitleRequest, "on_ready"),
    ("over the total cap", dict(on_ready=[publish.s("y" * 3000) for _ in range(6)]), InvalidSubtitleRequest,
     "on_ready"),
    # sites: only configured aliases
    ("site unknown", dict(site="nope"), InvalidSubtitleRequest, "site"),
    ("site uppercase", dict(site="Shop"), InvalidSubtitleRequest, "site"),
    ("site int", dict(site=5), InvalidSubtitleRequest, "site"),
    ("site empty", dict(site=""), InvalidSubtitleRequest, "site"),
    ("site separator", dict(site="a#b"), InvalidSubtitleRequest, "site"),
    # idempotency: the same request id with other parameters
    ("same id, other upload", dict(request_id="known", upload_id="other-video"), IdempotencyConflict, "request_id"),
    ("same id, other name", dict(request_id="known", name="Another"), IdempotencyConflict, "request_id"),
    ("same id, other callbacks", dict(request_id="known", on_ready=publish.s(2)), IdempotencyConflict,
     "request_id"),
    ("same id, other deadline", dict(request_id="known", deadline=60), IdempotencyConflict, "request_id"),
    # fan-in: the generation in flight is full
    ("join past the cap", dict(upload_id="crowded"), JoinLimitReached, "upload_id"),
]

KNOWN = dict(upload_id="video-1", language_code="it-IT", name="Italiano", on_ready=publish.s(1))


@pytest.fixture(scope="module")
def edge(redis_server):
    """Settings on a database of its own, with one known request and one full generation."""
    url = redis_server.url.rsplit("/", 1)[0] + "/7"
    client = redis_lib.Redis.from_url(url)
    client.flushdb()
    runtime.configure(load_settings({"redis_url": url, "key_prefix": PREFIX, "max_joins": 3,
                                     "max_callback_bytes": 16384}, environ={}))
    request_subtitles(request_id="known", **KNOWN)
    for i in range(3):
        request_subtitles("crowded", "it-IT", request_id=f"crowd-{i}")
    yield client
    client.flushdb()
    client.close()


@pytest.mark.parametrize("label,kwargs,exc,field", CASES, ids=[c[0] for c in CASES])
def test_hostile_input_is_refused_before_any_write(edge, label, kwargs, exc, field):
    args = {**KNOWN, **kwargs}
    if "request_id" not in kwargs:
        args.pop("request_id", None)
    before = edge.dbsize()
    with pytest.raises(exc) as info:
        request_subtitles(**args)
    assert type(info.value) is exc
    assert info.value.field == field
    assert edge.dbsize() == before


def test_there_are_at_least_sixty_cases():
    assert len(CASES) >= 60


@pytest.mark.parametrize("tag", ["en-US-x-twain", "zh-yue-HK", "sr-Latn-RS", "de-CH-1996", "es-419",
                                 "en-a-bbb-x-a-ccc", "pt-BR-u-ca-gregory", "it"])
def test_well_formed_tags_are_accepted(edge, tag):
    # Syntax is the point: Mux's list is checked where the primary language is on it.
    handle = request_subtitles("video-tags", tag, check_language=tag.split("-")[0] in SUPPORTED_LANGUAGES)
    assert subtitle_tasks_status(handle.id)["language_code"] == tag


def test_private_use_and_other_languages_pass_when_the_caller_insists(edge):
    for tag in ("x-twain", "i-klingon", "ja-JP"):
        request_subtitles("video-insist", tag, check_language=False)


def test_the_same_id_with_the_same_parameters_writes_nothing_and_returns_the_first(edge):
    before = edge.dbsize()
    handle = request_subtitles(request_id="known", **KNOWN)
    assert handle.id == "known" and edge.dbsize() == before


def test_a_refusing_redis_is_state_error_and_nothing_is_left_behind(edge):
    # A corrupted schedule key: the create script must notice before its first write.
    edge.delete(f"{PREFIX}:due")
    edge.set(f"{PREFIX}:due", "not a sorted set")
    try:
        before = edge.dbsize()
        with pytest.raises(StateError, match="due"):
            request_subtitles("video-corrupt", "it-IT", request_id="corrupt-1")
        assert edge.dbsize() == before
        assert not edge.exists(f"{PREFIX}:req:corrupt-1")
        assert edge.hget(f"{PREFIX}:active", "|video-corrupt|it-it") is None
    finally:
        edge.delete(f"{PREFIX}:due")


def subtitle_tasks_status(request_id):
    import subtitle_tasks

    return subtitle_tasks.status(request_id)


@pytest.mark.parametrize("label,kwargs,exc,field",
                         [c for c in CASES if c[2] is InvalidSubtitleRequest],
                         ids=lambda v: v if isinstance(v, str) else "")
def test_check_request_refuses_the_same_input_without_touching_redis(edge, label, kwargs, exc, field):
    import subtitle_tasks

    args = {**KNOWN, **kwargs}
    before = edge.dbsize()
    with pytest.raises(exc) as info:
        subtitle_tasks.check_request(**args)
    assert info.value.field == field and edge.dbsize() == before
