"""Callback signatures: checked at the edge, stored compactly, rebuilt unchanged."""

from __future__ import annotations

import json

import pytest
from celery import Celery, signature

from subtitle_tasks.callbacks import expand, normalize
from subtitle_tasks.errors import InvalidSubtitleRequest

app = Celery("callbacks-test", set_as_current=False)


@app.task(name="app.publish")
def publish(track, pk):
    return pk


@pytest.mark.parametrize("sig", [
    publish.s(42),
    publish.si({"id": "t"}, 7),
    publish.s(1).set(queue="media", priority=3),
])
def test_a_stored_signature_is_rebuilt_unchanged(sig):
    stored = normalize("on_ready", sig)
    rebuilt = signature(expand(stored[0]), app=app)
    as_sent = json.loads(json.dumps(sig))  # what any JSON broker message carries
    assert json.loads(json.dumps(rebuilt)) == as_sent


def test_a_plain_signature_is_stored_in_under_64_bytes():
    # Redis keeps a hash compact only while every value is short.
    assert len(json.dumps(normalize("on_ready", publish.s(42)), separators=(",", ":"))) < 64


def test_lists_and_none():
    assert normalize("on_ready", None) == []
    assert [c["task"] for c in normalize("on_ready", [publish.s(1), publish.s(2)])] == ["app.publish"] * 2


@pytest.mark.parametrize("bad", ["app.publish", 42, {"args": [1]}, publish.s(object()),
                                 publish.s(1) | publish.si(None, 2)])
def test_anything_else_is_refused_at_the_edge(bad):
    with pytest.raises(InvalidSubtitleRequest) as info:
        normalize("on_error", bad)
    assert info.value.field == "on_error"
