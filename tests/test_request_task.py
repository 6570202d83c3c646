"""subtitle_tasks.request: asking for subtitles with a message (beat, send_task), real workers."""

from __future__ import annotations

import time

import subtitle_tasks
from tests.support.callbacks import record


def _send(harness, **kwargs):
    app = harness.app()
    return app.send_task("subtitle_tasks.request", kwargs=kwargs, queue=harness.env["SUBTITLE_TASKS_QUEUE"])


def test_a_service_with_only_the_broker_asks_for_two_languages(harness, sim):
    worker = harness.worker()
    _send(harness, upload_id="video-msg", language_codes=["it-IT", "en"], request_id="nightly-1",
          name="Auto", on_ready=dict(record.s("ready", "msg")))
    calls = harness.wait_for_calls(2)
    assert sorted(c["task_id"] for c in calls) == ["nightly-1.en-ready-0", "nightly-1.it-IT-ready-0"]
    assert subtitle_tasks.status("nightly-1.en")["state"] == "ready"
    assert sorted(p[2] for p in sim.accepted_posts()) == ["en", "it-IT"]
    # The same message again (a beat firing twice) asks for nothing new.
    _send(harness, upload_id="video-msg", language_codes=["it-IT", "en"], request_id="nightly-1",
          name="Auto", on_ready=dict(record.s("ready", "msg")))
    harness.wait_for_calls(2, settle=2.0)
    assert len(harness.calls()) == 2 and sum(sim.accepted_posts().values()) == 2
    assert "Traceback" not in worker.log()


def test_bad_arguments_end_in_on_error_and_a_log_line_never_a_silent_drop(harness):
    worker = harness.worker()
    _send(harness, upload_id="bad id\n", language_codes="it-IT", on_error=dict(record.s("error", "bad")))
    [call] = harness.wait_for_calls(1)
    assert call["kind"] == "error" and call["tag"] == "bad"
    assert call["payload"]["code"] == "invalid_arguments" and call["payload"]["field"] == "upload_id"
    # A refusal with no usable on_error still leaves a clear line in the worker's log.
    _send(harness, upload_id="video-ok", language_codes=["it-IT", "it-it"])
    expected = "refused: language_code: the same language is asked for twice"
    end = time.monotonic() + 20
    while expected not in worker.log() and time.monotonic() < end:
        time.sleep(0.1)
    assert expected in worker.log()
    assert list(harness.redis.scan_iter(f"{harness.prefix}:req:*")) == []  # nothing half-made
