"""Faithfulness check: DatoCMS's official Node client, unmodified, against the simulator.

tests/js pins ``@datocms/cma-client-node`` (package-lock.json); ``generate.mjs`` calls
``client.uploadTracks.generateSubtitles`` and prints the outcome as JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from subtitle_tasks.testing import Simulator
from subtitle_tasks.testing.simulator import BODY_TYPES

pytestmark = pytest.mark.js

JS_DIR = Path(__file__).resolve().parent / "js"
TOKEN = "js-client-token"
ENVIRONMENT = "js-sandbox"
# What the locked client version sends; a client upgrade that changes it fails here on purpose.
LOCKED_CLIENT_BODY_TYPE = "subtitles_generation"


@pytest.fixture(scope="module")
def node() -> str:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are needed to run the official DatoCMS client")
    if not (JS_DIR / "node_modules" / "@datocms" / "cma-client-node").is_dir():
        installed = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=JS_DIR,
                                   capture_output=True, text=True, timeout=300, check=False)
        if installed.returncode != 0:
            pytest.fail(f"npm ci failed in {JS_DIR}:\n{installed.stdout}\n{installed.stderr}")
    return node


@pytest.fixture
def js_simulator(datocms_simulator_factory):
    def start(**config_fields: Any) -> Simulator:
        return datocms_simulator_factory(token=TOKEN, job_seconds=0.5, preparing_seconds=0,
                                         environments={ENVIRONMENT}, **config_fields)
    return start


def run_official_client(node: str, sim: Simulator, upload_id: str) -> dict[str, Any]:
    environment = {
        **os.environ,
        "DATOCMS_BASE_URL": sim.url,
        "DATOCMS_API_TOKEN": TOKEN,
        "DATOCMS_ENVIRONMENT": ENVIRONMENT,
        "UPLOAD_ID": upload_id,
        "LANGUAGE_CODE": "it-IT",
        "TRACK_NAME": "Italiano",
    }
    completed = subprocess.run([node, "generate.mjs"], cwd=JS_DIR, env=environment,
                               capture_output=True, text=True, timeout=60, check=False)
    assert completed.returncode == 0, f"node failed:\n{completed.stdout}\n{completed.stderr}"
    return json.loads(completed.stdout.strip().splitlines()[-1])


def sent_body_type(sim: Simulator) -> str | None:
    posts = [record for record in sim.requests() if record.route == "generate_subtitles"]
    assert len(posts) == 1
    return posts[0].body_type


def test_official_client_gets_the_track_the_simulator_made(node: str, js_simulator) -> None:
    sim = js_simulator()
    outcome = run_official_client(node, sim, "js-upload-1")

    assert outcome["ok"], outcome
    (job,) = sim.jobs()
    track = outcome["track"]
    assert track["id"] == job["track_id"]
    assert track["language_code"] == "it-IT" and track["name"] == "Italiano"
    assert track["status"] == "ready" and track["error"] is None
    assert track["upload"] == {"type": "upload", "id": "js-upload-1"}
    assert sim.accepted_posts() == Counter({(ENVIRONMENT, "js-upload-1", "it-IT"): 1})

    post, *polls = sim.requests()
    assert (post.method, post.path, post.status) == ("POST", "/uploads/js-upload-1/tracks/generate-subtitles", 202)
    assert post.body_type == LOCKED_CLIENT_BODY_TYPE
    assert post.content_type.startswith("application/json")
    assert polls and all(poll.path == f"/job-results/{job['id']}" for poll in polls)
    assert polls[-1].status == 200
    for record in (post, *polls):
        assert record.authorized
        assert record.api_version == "3"
        assert record.accept == "application/json"
        assert record.environment == ENVIRONMENT


@pytest.mark.parametrize("insisted", BODY_TYPES)
def test_official_client_against_a_server_insisting_on_one_type(node: str, js_simulator, insisted: str) -> None:
    sim = js_simulator(insist_type=insisted)
    outcome = run_official_client(node, sim, "js-upload-3")
    if sent_body_type(sim) == insisted:
        assert outcome["ok"], outcome
        return
    assert outcome["ok"] is False and outcome["status"] == 422
    assert [error["attributes"]["code"] for error in outcome["errors"]] == ["INVALID_TYPE"]
    assert sim.jobs() == []


def test_official_client_raises_the_failed_job_error(node: str, js_simulator) -> None:
    sim = js_simulator()
    outcome = run_official_client(node, sim, "no-audio-js")
    assert outcome["ok"] is False and outcome["status"] == 422
    assert [error["attributes"]["code"] for error in outcome["errors"]] == ["NO_PRIMARY_AUDIO_TRACK"]
