"""The command line as a user runs it: a real process, real Redis, a real worker, the simulator."""

from __future__ import annotations

import io
import json
import subprocess
import sys

from subtitle_tasks import progress
from tests.support.harness import ROOT


def _cli(harness, *args, timeout=60):
    return subprocess.run([sys.executable, "-m", "subtitle_tasks.cli", *args], env=harness.env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, check=False)


def test_request_wait_follows_each_language_and_exits_by_outcome(harness, sim):
    harness.worker()
    done = _cli(harness, "request", "video-cli", "it-IT", "en", "--name", "Auto", "--request-id", "cli-1", "--wait")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()  # not a terminal: plain lines, one per change
    assert any(line.startswith("it-IT") and "ready: track" in line for line in lines)
    assert any(line.startswith("en") and "ready: track" in line for line in lines)
    assert not any("\x1b[" in line for line in lines)
    shown = _cli(harness, "status", "cli-1.en", "--json")
    assert json.loads(shown.stdout)["state"] == "ready"
    failed = _cli(harness, "request", "errored-cli", "it-IT", "--wait", "--json")
    assert failed.returncode == 1
    assert json.loads(failed.stdout)[0]["error"]["code"] == "track_errored"


def test_refused_input_exits_2_and_writes_nothing(harness):
    refused = _cli(harness, "request", "bad id", "it-IT")
    assert refused.returncode == 2 and "refused: upload_id" in refused.stderr
    assert list(harness.redis.scan_iter(f"{harness.prefix}:*")) == []
    unknown = _cli(harness, "status", "nope")
    assert unknown.returncode == 1


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_the_block_is_redrawn_in_place():
    states = iter([
        [{"state": "waiting", "phase": "job", "language_code": "it", "job_id": "9", "created_at": 0.0,
          "attempts": 2, "next_poll_in": 4.0}],
        [{"state": "ready", "phase": "done", "language_code": "it", "track_id": "t1", "created_at": 0.0,
          "finished_at": 12.0}],
    ])
    current = {}

    def read(rid):
        if rid not in current or current[rid] is None:
            current[rid] = next(states)[0]
        value, current[rid] = current[rid], None
        return value

    out = _Terminal()
    code, final = progress.follow(["r1"], read, timeout=60, out=out, clock=lambda: 10.0, sleep=lambda s: None)
    text = out.getvalue()
    assert code == progress.EXIT_READY and final[0]["state"] == "ready"
    assert "job 9 running" in text and "2 polls" in text and "next in 4s" in text
    assert "\x1b[1F" in text and "ready: track t1" in text  # moved back up and overwrote


def test_timeout_exits_3():
    waiting = {"state": "waiting", "phase": "submit", "language_code": "en", "created_at": 0.0}
    clock = iter(range(0, 1000, 10))
    code, _ = progress.follow(["r"], lambda rid: waiting, timeout=25, out=io.StringIO(),
                              clock=lambda: float(next(clock)), sleep=lambda s: None)
    assert code == progress.EXIT_TIMEOUT
