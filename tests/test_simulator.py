"""The DatoCMS simulator over real HTTP: protocol, upload kinds, faults, bookkeeping, CLI."""

from __future__ import annotations

import http.client
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from subtitle_tasks.testing import Simulator, SimulatorConfig
from subtitle_tasks.testing.simulator import FAULT_NAMES, UPLOAD_KINDS

REPO_ROOT = Path(__file__).resolve().parent.parent
TOKEN = "test-token-123"
API_HEADERS = {"Authorization": f"Bearer {TOKEN}", "X-Api-Version": "3"}


# --------------------------------------------------------------------------- helpers


def api_session(**extra_headers: str) -> requests.Session:
    session = requests.Session()
    session.headers.update(API_HEADERS)
    session.headers.update(extra_headers)
    return session


def generate_body(body_type: str = "upload_track", language_code: Any = "it-IT",
                  name: str | None = "Italiano") -> dict[str, Any]:
    attributes: dict[str, Any] = {"language_code": language_code}
    if name is not None:
        attributes["name"] = name
    return {"data": {"type": body_type, "attributes": attributes}}


def post_generate(sim: Simulator, upload_id: str = "upload-1", session: requests.Session | None = None,
                  **body_fields: Any) -> requests.Response:
    session = session or api_session()
    return session.post(f"{sim.url}/uploads/{upload_id}/tracks/generate-subtitles",
                        json=generate_body(**body_fields))


def get_job_result(sim: Simulator, job_id: str, session: requests.Session | None = None) -> requests.Response:
    return (session or api_session()).get(f"{sim.url}/job-results/{job_id}")


def get_tracks(sim: Simulator, upload_id: str, session: requests.Session | None = None) -> requests.Response:
    return (session or api_session()).get(f"{sim.url}/uploads/{upload_id}/tracks")


def start_job(sim: Simulator, upload_id: str = "upload-1", **body_fields: Any) -> str:
    response = post_generate(sim, upload_id, **body_fields)
    assert response.status_code == 202, response.text
    return response.json()["data"]["id"]


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def finished_result(sim: Simulator, job_id: str) -> dict[str, Any]:
    def result_if_done() -> dict[str, Any] | None:
        response = get_job_result(sim, job_id)
        return response.json() if response.status_code == 200 else None
    return wait_until(result_if_done)


def track_statuses(sim: Simulator, upload_id: str) -> list[str]:
    response = get_tracks(sim, upload_id)
    assert response.status_code == 200, response.text
    return [track["attributes"]["status"] for track in response.json()["data"]]


def error_attributes(response: requests.Response) -> dict[str, Any]:
    assert response.headers["Content-Type"] == "application/json"
    errors = response.json()["data"]
    assert isinstance(errors, list) and errors
    assert errors[0]["type"] == "api_error" and errors[0]["id"]
    return errors[0]["attributes"]


def error_code(response: requests.Response) -> str:
    return error_attributes(response)["code"]


def control(sim: Simulator, method: str, path: str, body: Any = None) -> requests.Response:
    return requests.request(method, f"{sim.url}/_simulator/{path}", json=body, timeout=5)


# --------------------------------------------------------------------------- headers and auth


def test_missing_or_empty_authorization_is_401(datocms_simulator: Simulator) -> None:
    for authorization in (None, "", "Bearer", "Bearer  ", "Basic abc"):
        headers = {"X-Api-Version": "3"}
        if authorization is not None:
            headers["Authorization"] = authorization
        response = requests.get(f"{datocms_simulator.url}/job-results/1", headers=headers)
        assert response.status_code == 401
        assert error_code(response) == "INVALID_AUTHORIZATION_HEADER"


def test_any_token_is_accepted_unless_one_is_configured(datocms_simulator_factory) -> None:
    open_sim = datocms_simulator_factory()
    assert post_generate(open_sim).status_code == 202

    locked_sim = datocms_simulator_factory(token=TOKEN)
    wrong = api_session(Authorization="Bearer someone-else")
    response = post_generate(locked_sim, session=wrong)
    assert response.status_code == 401
    assert error_code(response) == "INVALID_AUTHORIZATION_HEADER"
    assert post_generate(locked_sim).status_code == 202
    assert locked_sim.accepted_posts() == Counter({(None, "upload-1", "it-IT"): 1})


def test_api_version_3_is_required(datocms_simulator: Simulator) -> None:
    for version in (None, "2"):
        session = api_session()
        if version is None:
            del session.headers["X-Api-Version"]
        else:
            session.headers["X-Api-Version"] = version
        response = post_generate(datocms_simulator, session=session)
        assert response.status_code == 422
        assert error_code(response) == "INVALID_API_VERSION"
    assert datocms_simulator.jobs() == []


def test_environment_is_recorded_and_checked_when_configured(datocms_simulator_factory) -> None:
    sim = datocms_simulator_factory(environments={"sandbox-a"})
    assert post_generate(sim, session=api_session(**{"X-Environment": "sandbox-a"})).status_code == 202
    assert post_generate(sim).status_code == 202  # no header: the primary environment

    response = post_generate(sim, session=api_session(**{"X-Environment": "sandbox-zzz"}))
    assert response.status_code == 422
    assert error_code(response) == "INVALID_ENVIRONMENT"

    assert [record.environment for record in sim.requests()] == ["sandbox-a", None, "sandbox-zzz"]
    assert sim.accepted_posts() == Counter({("sandbox-a", "upload-1", "it-IT"): 1,
                                            (None, "upload-1", "it-IT"): 1})


def test_immutable_sandbox_refuses_generating_tracks(datocms_simulator_factory) -> None:
    sim = datocms_simulator_factory(job_seconds=0, immutable_environments={"frozen"})
    frozen = api_session(**{"X-Environment": "frozen"})
    response = post_generate(sim, "upload-1", session=frozen)
    assert response.status_code == 422
    attributes = error_attributes(response)
    assert attributes["code"] == "IMMUTABLE_UPLOAD_TRACKS_IN_SANDBOX_ENVIRONMENT"
    assert attributes["details"] == {"environment": "frozen"} and "transient" not in attributes
    assert sim.jobs() == []
    # reads still work there; other environments and the primary one are unaffected
    assert get_tracks(sim, "upload-1", session=frozen).status_code == 200
    assert post_generate(sim, session=api_session(**{"X-Environment": "open"})).status_code == 202
    assert post_generate(sim).status_code == 202
    # the upload and body are checked first
    assert post_generate(sim, "missing-1", session=frozen).status_code == 404
    assert error_code(post_generate(sim, session=frozen, language_code="??")) == "INVALID_FIELD"


def test_immutable_environments_are_configurable_over_http(datocms_simulator: Simulator) -> None:
    sim = datocms_simulator
    assert sim.config.immutable_environments == frozenset()
    answer = control(sim, "POST", "config", {"immutable_environments": ["frozen", "ice"]})
    assert answer.status_code == 200 and answer.json()["config"]["immutable_environments"] == ["frozen", "ice"]
    assert sim.config.immutable_environments == frozenset({"frozen", "ice"})
    assert post_generate(sim, session=api_session(**{"X-Environment": "ice"})).status_code == 422
    assert control(sim, "POST", "config", {"immutable_environments": "frozen"}).status_code == 400
    assert control(sim, "POST", "config", {"immutable_environments": [""]}).status_code == 400


def test_every_answer_has_request_id_and_rate_limit_headers(datocms_simulator: Simulator) -> None:
    responses = [
        post_generate(datocms_simulator),
        get_job_result(datocms_simulator, "nope"),
        requests.get(f"{datocms_simulator.url}/job-results/1"),  # 401
        api_session().get(f"{datocms_simulator.url}/no-such-endpoint"),
    ]
    request_ids = {response.headers["X-Request-Id"] for response in responses}
    assert len(request_ids) == len(responses)
    for response in responses:
        assert response.headers["X-RateLimit-Limit"] == "60"
        assert int(response.headers["X-RateLimit-Remaining"]) >= 0
        assert "Retry-After" not in response.headers
    assert error_code(responses[3]) == "NOT_FOUND"


# --------------------------------------------------------------------------- the happy path


def test_post_answers_202_with_a_job(datocms_simulator: Simulator) -> None:
    response = post_generate(datocms_simulator)
    assert response.status_code == 202
    assert response.headers["Content-Type"] == "application/json"
    document = response.json()
    assert document["data"]["type"] == "job"
    assert isinstance(document["data"]["id"], str) and document["data"]["id"]


def test_vnd_api_content_type_is_accepted(datocms_simulator: Simulator) -> None:
    response = api_session().post(
        f"{datocms_simulator.url}/uploads/u/tracks/generate-subtitles",
        data=json.dumps(generate_body()),
        headers={"Content-Type": "application/vnd.api+json"},
    )
    assert response.status_code == 202


def test_job_result_is_404_until_done_then_a_preparing_track(datocms_simulator: Simulator) -> None:
    job_id = start_job(datocms_simulator, "upload-7", language_code="it-IT", name="Italiano")
    running = get_job_result(datocms_simulator, job_id)
    assert running.status_code == 404
    assert error_code(running) == "NOT_FOUND"

    result = finished_result(datocms_simulator, job_id)["data"]
    assert result["type"] == "job_result" and result["id"] == job_id
    assert result["attributes"]["status"] == 200
    track = result["attributes"]["payload"]["data"]
    assert track["type"] == "upload_track"
    assert track["attributes"] == {
        "type": "subtitles", "name": "Italiano", "language_code": "it-IT",
        "closed_captions": False, "status": "preparing", "error": None,
    }
    assert track["relationships"] == {"upload": {"data": {"type": "upload", "id": "upload-7"}}}


def test_track_list_shows_the_track_once_done_then_ready(datocms_simulator: Simulator) -> None:
    job_id = start_job(datocms_simulator, "upload-9")
    assert track_statuses(datocms_simulator, "upload-9") == []
    track_id = finished_result(datocms_simulator, job_id)["data"]["attributes"]["payload"]["data"]["id"]

    wait_until(lambda: track_statuses(datocms_simulator, "upload-9") == ["ready"])
    tracks = get_tracks(datocms_simulator, "upload-9").json()["data"]
    assert [track["id"] for track in tracks] == [track_id]
    assert tracks[0]["attributes"]["error"] is None


def test_zero_preparing_seconds_gives_a_ready_job_result(datocms_simulator_factory) -> None:
    sim = datocms_simulator_factory(job_seconds=0.05, preparing_seconds=0)
    job_id = start_job(sim)
    payload = finished_result(sim, job_id)["data"]["attributes"]["payload"]
    assert payload["data"]["attributes"]["status"] == "ready"


def test_tracks_are_kept_per_environment(datocms_simulator_factory) -> None:
    sim = datocms_simulator_factory(job_seconds=0, preparing_seconds=0)
    sandbox = api_session(**{"X-Environment": "sandbox"})
    assert post_generate(sim, "shared-upload", session=sandbox).status_code == 202
    assert get_tracks(sim, "shared-upload").json()["data"] == []
    assert len(get_tracks(sim, "shared-upload", session=sandbox).json()["data"]) == 1


# --------------------------------------------------------------------------- body validation


@pytest.mark.parametrize("body_type", ["upload_track", "subtitles_generation"])
def test_both_body_types_are_accepted_by_default(datocms_simulator: Simulator, body_type: str) -> None:
    assert post_generate(datocms_simulator, body_type=body_type).status_code == 202
    assert datocms_simulator.requests()[-1].body_type == body_type


@pytest.mark.parametrize("insisted", ["upload_track", "subtitles_generation"])
def test_insist_type_rejects_the_other_type(datocms_simulator_factory, insisted: str) -> None:
    sim = datocms_simulator_factory(insist_type=insisted)
    other = "subtitles_generation" if insisted == "upload_track" else "upload_track"
    rejected = post_generate(sim, body_type=other)
    assert rejected.status_code == 422
    assert error_code(rejected) == "INVALID_TYPE"
    assert sim.jobs() == []
    assert post_generate(sim, body_type=insisted).status_code == 202


@pytest.mark.parametrize("raw_body, code", [
    (b"not json", "INVALID_JSON_BODY"),
    (b"", "INVALID_JSON_BODY"),
    (b"[1, 2]", "INVALID_JSON_BODY"),
    (b'{"type": "upload_track"}', "INVALID_JSON_BODY"),
    (b'{"data": {"type": "upload_track"}}', "INVALID_ATTRIBUTES"),
    (b'{"data": {"type": "upload_track", "attributes": "it"}}', "INVALID_ATTRIBUTES"),
    (b'{"data": {"type": "upload_track", "attributes": {"language_code": "it", "x": 1}}}',
     "INVALID_ATTRIBUTES"),
    (b'{"data": {"type": "track", "attributes": {"language_code": "it"}}}', "INVALID_TYPE"),
    (b'{"data": {"type": "upload_track", "attributes": {}}}', "INVALID_FIELD"),
])
def test_invalid_bodies_are_422(datocms_simulator: Simulator, raw_body: bytes, code: str) -> None:
    response = api_session().post(
        f"{datocms_simulator.url}/uploads/u/tracks/generate-subtitles", data=raw_body,
        headers={"Content-Type": "application/vnd.api+json"},
    )
    assert response.status_code == 422
    assert error_code(response) == code
    assert datocms_simulator.jobs() == []


@pytest.mark.parametrize("language_code", ["english", "it_IT", "", "i", "it-", 42, "it IT"])
def test_implausible_language_code_is_invalid_field(datocms_simulator: Simulator, language_code: Any) -> None:
    response = post_generate(datocms_simulator, language_code=language_code)
    assert response.status_code == 422
    attributes = error_attributes(response)
    assert attributes["code"] == "INVALID_FIELD"
    assert attributes["details"]["field"] == "language_code"


@pytest.mark.parametrize("language_code", ["it", "it-IT", "pt-BR", "zh-Hant-TW", "es-419", "sr-Latn"])
def test_plausible_language_codes_are_accepted(datocms_simulator: Simulator, language_code: str) -> None:
    assert post_generate(datocms_simulator, language_code=language_code).status_code == 202


def test_non_json_content_type_is_rejected(datocms_simulator: Simulator) -> None:
    response = api_session().post(
        f"{datocms_simulator.url}/uploads/u/tracks/generate-subtitles",
        data=json.dumps(generate_body()), headers={"Content-Type": "text/plain"},
    )
    assert response.status_code == 422
    assert error_code(response) == "INVALID_JSON_BODY"


# --------------------------------------------------------------------------- upload kinds


def test_missing_upload_is_404_on_post_and_track_list(datocms_simulator: Simulator) -> None:
    posted = post_generate(datocms_simulator, "missing-abc")
    assert posted.status_code == 404 and error_code(posted) == "NOT_FOUND"
    listed = get_tracks(datocms_simulator, "missing-abc")
    assert listed.status_code == 404 and error_code(listed) == "NOT_FOUND"
    assert datocms_simulator.accepted_posts() == Counter()


def test_not_a_video_is_rejected_on_post(datocms_simulator: Simulator) -> None:
    response = post_generate(datocms_simulator, "not-video-pdf")
    assert response.status_code == 422
    assert error_code(response) == "NOT_A_VIDEO"
    assert datocms_simulator.jobs() == []


def test_no_audio_job_fails_with_an_error_payload(datocms_simulator: Simulator) -> None:
    job_id = start_job(datocms_simulator, "no-audio-clip")
    attributes = finished_result(datocms_simulator, job_id)["data"]["attributes"]
    assert attributes["status"] == 422
    error = attributes["payload"]["data"][0]
    assert error["type"] == "api_error"
    assert error["attributes"]["code"] == "NO_PRIMARY_AUDIO_TRACK"
    assert track_statuses(datocms_simulator, "no-audio-clip") == []


def test_mux_error_job_fails_with_status_500(datocms_simulator: Simulator) -> None:
    job_id = start_job(datocms_simulator, "mux-error-clip")
    attributes = finished_result(datocms_simulator, job_id)["data"]["attributes"]
    assert attributes["status"] == 500
    assert attributes["payload"]["data"][0]["attributes"]["code"] == "MUX_ERROR"


def test_errored_upload_track_goes_preparing_then_errored(datocms_simulator: Simulator) -> None:
    job_id = start_job(datocms_simulator, "errored-clip")
    payload = finished_result(datocms_simulator, job_id)["data"]["attributes"]["payload"]
    assert payload["data"]["attributes"]["status"] == "preparing"
    wait_until(lambda: track_statuses(datocms_simulator, "errored-clip") == ["errored"])
    track = get_tracks(datocms_simulator, "errored-clip").json()["data"][0]
    assert isinstance(track["attributes"]["error"], str) and track["attributes"]["error"]


def test_stuck_job_never_finishes(datocms_simulator_factory) -> None:
    sim = datocms_simulator_factory(job_seconds=0.05)
    stuck_id = start_job(sim, "stuck-clip")
    normal_id = start_job(sim, "normal-clip")
    finished_result(sim, normal_id)
    assert get_job_result(sim, stuck_id).status_code == 404
    assert sim.complete_all_jobs() == 0
    assert get_job_result(sim, stuck_id).status_code == 404
    assert sim.complete_all_jobs(include_stuck=True) == 1
    assert get_job_result(sim, stuck_id).status_code == 200


def test_slow_upload_prepares_ten_times_longer(datocms_simulator_factory) -> None:
    sim = datocms_simulator_factory(job_seconds=0, preparing_seconds=0.1, rate_limit=10_000)
    start_job(sim, "slow-clip")
    start_job(sim, "quick-clip")
    wait_until(lambda: track_statuses(sim, "quick-clip") == ["ready"])
    assert track_statuses(sim, "slow-clip") == ["preparing"]
    wait_until(lambda: track_statuses(sim, "slow-clip") == ["ready"])


def test_set_upload_overrides_the_prefix(datocms_simulator: Simulator) -> None:
    datocms_simulator.set_upload("plain-id", "not-video")
    datocms_simulator.set_upload("missing-but-fine", "video")
    assert error_code(post_generate(datocms_simulator, "plain-id")) == "NOT_A_VIDEO"
    assert post_generate(datocms_simulator, "missing-but-fine").status_code == 202
    with pytest.raises(ValueError):
        datocms_simulator.set_upload("x", "cassette")


def test_every_upload_kind_is_reachable_by_prefix(datocms_simulator: Simulator) -> None:
    for kind in UPLOAD_KINDS:
        upload_id = "abc" if kind == "video" else f"{kind}-abc"
        assert datocms_simulator.upload_kind(upload_id) == kind


# --------------------------------------------------------------------------- rate limit


def test_rate_limit_answers_429_with_reset(datocms_simulator_factory) -> None:
    sim = datocms_simulator_factory(rate_limit=3, rate_window=1.5)
    session = api_session()
    remaining = [get_job_result(sim, "1", session).headers["X-RateLimit-Remaining"] for _ in range(3)]
    assert remaining == ["2", "1", "0"]

    limited = get_job_result(sim, "1", session)
    assert limited.status_code == 429
    assert error_code(limited) == "RATE_LIMIT_EXCEEDED"
    assert limited.headers["X-RateLimit-Limit"] == "3"
    assert limited.headers["X-RateLimit-Remaining"] == "0"
    assert int(limited.headers["X-RateLimit-Reset"]) >= 1
    assert "Retry-After" not in limited.headers

    other_token = api_session(Authorization="Bearer another-token")
    assert get_job_result(sim, "1", other_token).status_code == 404
    assert control(sim, "GET", "state").status_code == 200  # control is never limited


def test_rate_limited_post_creates_nothing(datocms_simulator_factory) -> None:
    sim = datocms_simulator_factory(rate_limit=1, rate_window=5)
    assert post_generate(sim).status_code == 202
    assert post_generate(sim).status_code == 429
    assert sum(sim.accepted_posts().values()) == 1


# --------------------------------------------------------------------------- faults


@pytest.mark.parametrize("fault, status, code, transient", [
    ("http_500", 500, "INTERNAL_SERVER_ERROR", False),
    ("http_503", 503, "SERVICE_UNAVAILABLE", True),
    ("transient", 409, "ENVIRONMENT_NOT_READY", True),
    ("rate_429", 429, "RATE_LIMIT_EXCEEDED", False),
])
def test_error_faults_answer_an_api_error_and_create_nothing(
        datocms_simulator_factory, fault: str, status: int, code: str, transient: bool) -> None:
    sim = datocms_simulator_factory(faults={fault: 1.0})
    response = post_generate(sim)
    assert response.status_code == status
    attributes = error_attributes(response)
    assert attributes["code"] == code
    assert attributes.get("transient", False) is transient
    if fault == "rate_429":
        assert response.headers["X-RateLimit-Reset"] == "1"
    assert sim.jobs() == [] and sim.accepted_posts() == Counter()
    assert sim.requests()[-1].fault == fault


def test_html_502_fault_answers_a_gateway_page(datocms_simulator_factory) -> None:
    sim = datocms_simulator_factory(faults={"html_502": 1.0})
    response = post_generate(sim)
    assert response.status_code == 502
    assert response.headers["Content-Type"].startswith("text/html")
    assert "<html>" in response.text
    assert sim.jobs() == []


def test_drop_fault_closes_without_an_answer_and_creates_nothing(datocms_simulator_factory) -> None:
    sim = datocms_simulator_factory(faults={"drop": 1.0})
    with pytest.raises(requests.ConnectionError):
        post_generate(sim)
    assert sim.jobs() == []
    record = sim.requests()[-1]
    assert record.fault == "drop" and record.status is None


def test_drop_after_commit_creates_the_job_then_drops(datocms_simulator_factory) -> None:
    sim = datocms_simulator_factory(faults={"drop_after_commit": 1.0})
    with pytest.raises(requests.ConnectionError):
        post_generate(sim, "upload-lost-answer")
    assert sim.accepted_posts() == Counter({(None, "upload-lost-answer", "it-IT"): 1})
    assert len(sim.jobs()) == 1
    # Only job-creating POSTs are affected.
    assert get_job_result(sim, "nope").status_code == 404


def test_huge_body_fault_answers_several_megabytes(datocms_simulator_factory) -> None:
    sim = datocms_simulator_factory(faults={"huge_body": 1.0})
    response = get_tracks(sim, "upload-1")
    assert response.status_code == 200
    assert int(response.headers["Content-Length"]) == len(response.content) >= 5 * 1024 * 1024
    assert response.json()["data"] is None
    assert post_generate(sim).status_code == 200 and sim.jobs() == []  # creates nothing
    assert sim.requests()[-1].fault == "huge_body"


def test_huge_body_fault_survives_a_client_hanging_up(datocms_simulator_factory, capfd) -> None:
    sim = datocms_simulator_factory(faults={"huge_body": 1.0})
    with api_session().get(f"{sim.url}/uploads/u/tracks", stream=True) as response:
        assert response.raw.read(100)
    time.sleep(0.3)  # the server notices the hang-up on its next write
    sim.configure(faults={})
    assert get_tracks(sim, "u").status_code == 200
    assert "Traceback" not in capfd.readouterr().err


def test_redirect_fault_points_at_another_host(datocms_simulator_factory) -> None:
    sim = datocms_simulator_factory(faults={"redirect": 1.0})
    response = api_session().post(f"{sim.url}/uploads/u1/tracks/generate-subtitles", json=generate_body(),
                                  allow_redirects=False)
    assert response.status_code == 302
    assert response.headers["Location"] == "https://elsewhere.invalid/uploads/u1/tracks/generate-subtitles"
    assert sim.jobs() == [] and sim.requests()[-1].fault == "redirect"


def test_echo_token_fault_names_tracks_after_the_token(datocms_simulator_factory) -> None:
    sim = datocms_simulator_factory(job_seconds=0, faults={"echo_token": 1.0})
    job_id = start_job(sim, "upload-echo")
    result = finished_result(sim, job_id)
    assert result["data"]["attributes"]["payload"]["data"]["attributes"]["name"] == f"echo: Bearer {TOKEN}"
    tracks = get_tracks(sim, "upload-echo").json()["data"]
    assert [t["attributes"]["name"] for t in tracks] == [f"echo: Bearer {TOKEN}"]
    assert get_job_result(sim, "no-such-job").status_code == 404
    # recorded only where a track carried the token
    assert [r.fault for r in sim.requests()] == [None, "echo_token", "echo_token", None]


def test_slow_fault_delays_the_answer(datocms_simulator_factory) -> None:
    sim = datocms_simulator_factory(slow_seconds=0.3, faults={"slow": 1.0})
    started = time.monotonic()
    assert post_generate(sim).status_code == 202
    assert time.monotonic() - started >= 0.3
    assert sim.requests()[-1].fault == "slow"


def test_faults_are_reproducible_with_a_seed(datocms_simulator_factory) -> None:
    def statuses(sim: Simulator) -> list[int]:
        session = api_session()
        return [get_job_result(sim, "1", session).status_code for _ in range(20)]

    first = statuses(datocms_simulator_factory(seed=7, faults={"http_500": 0.5}))
    second = statuses(datocms_simulator_factory(seed=7, faults={"http_500": 0.5}))
    assert first == second
    assert set(first) == {404, 500}


def test_configure_replaces_faults_and_keeps_other_fields(datocms_simulator: Simulator) -> None:
    datocms_simulator.configure(rate_limit=9, faults={"http_503": 1.0})
    assert post_generate(datocms_simulator).status_code == 503
    datocms_simulator.configure(faults={"transient": 0.5})
    assert datocms_simulator.config.faults["http_503"] == 0
    datocms_simulator.configure(faults={})
    assert post_generate(datocms_simulator).status_code == 202
    assert datocms_simulator.config.rate_limit == 9


def test_configure_validates_names_and_values(datocms_simulator: Simulator) -> None:
    with pytest.raises(TypeError):
        datocms_simulator.configure(job_secs=1)
    with pytest.raises(ValueError):
        datocms_simulator.configure(faults={"meteor": 0.1})
    with pytest.raises(ValueError):
        datocms_simulator.configure(faults={"drop": 1.5})
    with pytest.raises(ValueError):
        datocms_simulator.configure(insist_type="track")
    with pytest.raises(ValueError):
        datocms_simulator.configure(job_seconds=-1)
    assert datocms_simulator.config == SimulatorConfig(job_seconds=0.2, preparing_seconds=0.2)
    assert set(datocms_simulator.config.faults) == set(FAULT_NAMES)


# --------------------------------------------------------------------------- HTTP plumbing


def test_keep_alive_serves_many_requests_on_one_connection(datocms_simulator: Simulator) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", datocms_simulator.port, timeout=5)
    body = json.dumps(generate_body())
    headers = {**API_HEADERS, "Content-Type": "application/json"}
    connection.request("POST", "/uploads/u/tracks/generate-subtitles", body=body, headers=headers)
    first_socket = connection.sock
    assert connection.getresponse().read() and first_socket is not None
    for _ in range(3):
        connection.request("GET", "/job-results/1", headers=API_HEADERS)
        response = connection.getresponse()
        response.read()
        assert response.status in (200, 404)
        assert connection.sock is first_socket
    connection.close()


def test_stop_closes_kept_alive_connections(datocms_simulator_factory) -> None:
    sim = datocms_simulator_factory()
    url, session = sim.url, api_session()
    assert session.get(f"{url}/job-results/1").status_code == 404
    sim.stop()
    with pytest.raises(requests.ConnectionError):
        session.get(f"{url}/job-results/1")


def test_concurrent_posts_are_all_counted(datocms_simulator_factory) -> None:
    sim = datocms_simulator_factory(rate_limit=10_000)
    errors: list[BaseException] = []

    def post_many(worker: int) -> None:
        session = api_session()
        try:
            for _ in range(20):
                assert post_generate(sim, f"upload-{worker % 2}", session=session).status_code == 202
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=post_many, args=(worker,)) for worker in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert sim.accepted_posts() == Counter({(None, "upload-0", "it-IT"): 80,
                                            (None, "upload-1", "it-IT"): 80})
    assert len({job["id"] for job in sim.jobs()}) == 160


# --------------------------------------------------------------------------- bookkeeping and control


def test_request_log_records_what_was_sent(datocms_simulator: Simulator) -> None:
    job_id = start_job(datocms_simulator, body_type="subtitles_generation")
    get_job_result(datocms_simulator, job_id)
    post_record, get_record = datocms_simulator.requests()
    assert (post_record.method, post_record.status, post_record.body_type) == ("POST", 202, "subtitles_generation")
    assert post_record.route == "generate_subtitles" and post_record.authorized
    assert post_record.api_version == "3" and post_record.content_type == "application/json"
    assert (get_record.method, get_record.path, get_record.status) == ("GET", f"/job-results/{job_id}", 404)
    assert post_record.time <= get_record.time


def test_control_endpoints(datocms_simulator: Simulator) -> None:
    sim = datocms_simulator
    assert control(sim, "POST", "uploads/odd-one", {"kind": "no-audio"}).json()["kind"] == "no-audio"
    start_job(sim, "odd-one", language_code="de")
    start_job(sim, "odd-one", language_code="de")
    assert post_generate(sim, session=api_session(**{"X-Api-Version": "1"})).status_code == 422

    state = control(sim, "GET", "state").json()
    assert state["accepted_posts"] == [
        {"environment": None, "upload_id": "odd-one", "language_code": "de", "count": 2}]
    assert state["request_counts"]["total"] == 3
    assert state["request_counts"]["by_status"] == {"202": 2, "422": 1}
    assert state["jobs"]["total"] == 2
    assert state["uploads"] == {"odd-one": "no-audio"}
    assert state["config"]["job_seconds"] == 0.2

    assert len(control(sim, "GET", "requests?limit=2").json()["requests"]) == 2
    assert control(sim, "GET", "jobs").json()["jobs"][0]["upload_kind"] == "no-audio"

    updated = control(sim, "POST", "config", {"rate_limit": 5, "faults": {"http_500": 1}})
    assert updated.status_code == 200
    assert sim.config.rate_limit == 5 and sim.config.faults["http_500"] == 1
    assert control(sim, "POST", "config", {"nonsense": 1}).status_code == 400
    assert control(sim, "POST", "config", {"faults": {"http_500": 0}}).status_code == 200

    assert control(sim, "POST", "complete-jobs").json() == {"completed": 2}
    assert control(sim, "POST", "reset").status_code == 200
    state = control(sim, "GET", "state").json()
    assert state["accepted_posts"] == [] and state["jobs"]["total"] == 0
    assert state["request_counts"]["total"] == 0 and state["uploads"] == {}
    assert sim.requests() == []


def test_state_never_shows_the_token(datocms_simulator_factory) -> None:
    sim = datocms_simulator_factory(token="very-secret-token")
    assert "very-secret-token" not in control(sim, "GET", "state").text
    assert control(sim, "POST", "config", {"token": "other"}).status_code == 400


def test_reset_keeps_job_ids_unique(datocms_simulator: Simulator) -> None:
    first = start_job(datocms_simulator)
    datocms_simulator.reset()
    assert start_job(datocms_simulator) != first
    assert get_job_result(datocms_simulator, first).status_code == 404


def test_context_manager_starts_and_stops() -> None:
    with Simulator(SimulatorConfig(job_seconds=0)) as sim:
        assert sim.url.startswith("http://127.0.0.1:")
        assert post_generate(sim).status_code == 202
    with pytest.raises(RuntimeError):
        _ = sim.url


def test_factory_builds_configured_simulators(datocms_simulator_factory) -> None:
    sim = datocms_simulator_factory(rate_limit=7, insist_type="upload_track")
    assert sim.config.rate_limit == 7 and sim.config.job_seconds == 0.2
    assert get_job_result(sim, "1").headers["X-RateLimit-Limit"] == "7"


# --------------------------------------------------------------------------- CLI


def read_line(stream: Any, timeout: float) -> str:
    ready, _, _ = select.select([stream], [], [], timeout)
    assert ready, "the simulator printed nothing in time"
    return stream.readline()


def test_cli_serves_until_sigterm() -> None:
    command = [sys.executable, "-m", "subtitle_tasks.testing.simulator", "--port", "0",
               "--token", "cli-secret", "--job-seconds", "0", "--preparing-seconds", "0",
               "--fault", "http_500=0", "--seed", "3", "--insist-type", "upload_track"]
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        line = read_line(process.stdout, timeout=15)
        prefix = "subtitle-tasks simulator listening on "
        assert line.startswith(prefix) and line.endswith("\n")
        url = line[len(prefix):].strip()
        assert url.startswith("http://127.0.0.1:")

        session = api_session(Authorization="Bearer cli-secret")
        response = session.post(f"{url}/uploads/u/tracks/generate-subtitles", json=generate_body())
        assert response.status_code == 202
        job_id = response.json()["data"]["id"]
        assert session.get(f"{url}/job-results/{job_id}").status_code == 200
        assert api_session(Authorization="Bearer wrong").get(f"{url}/job-results/1").status_code == 401

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        stdout, stderr = process.communicate()
        assert "cli-secret" not in line + stdout + stderr
        assert stdout == ""
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_cli_rejects_an_unknown_fault() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "subtitle_tasks.testing.simulator", "--port", "0", "--fault", "meteor=1"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=15, check=False,
        env={**os.environ, "PYTHONWARNINGS": "error::RuntimeWarning"},
    )
    assert completed.returncode == 2
    assert "meteor" in completed.stderr


# --------------------------------------------------------------------------- listed uploads (GET /uploads)


def list_uploads(sim: Simulator, session: requests.Session | None = None, **params: Any) -> requests.Response:
    return (session or api_session()).get(f"{sim.url}/uploads", params=params)


def listed_ids(response: requests.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [upload["id"] for upload in response.json()["data"]]


def test_uploads_are_listed_filtered_ordered_and_paged(datocms_simulator: Simulator) -> None:
    sim = datocms_simulator
    for n in range(5):
        sim.add_upload(f"video-{n}", age=3600 * (n + 1))  # video-0 is the newest
    sim.add_upload("picture", age=60, kind="image")
    sim.add_upload("song", age=30, kind="audio")
    videos = {"filter[fields][type][eq]": "video"}
    assert listed_ids(list_uploads(sim, **videos, order_by="_created_at_DESC")) == [f"video-{n}" for n in range(5)]
    assert listed_ids(list_uploads(sim, **videos, order_by="_created_at_ASC"))[0] == "video-4"
    page = list_uploads(sim, **videos, order_by="_created_at_DESC", **{"page[offset]": "3", "page[limit]": "10"})
    assert listed_ids(page) == ["video-3", "video-4"]
    assert page.json()["meta"] == {"total_count": 5}  # every match, not the page
    everything = list_uploads(sim, order_by="_created_at_DESC", **{"page[limit]": "2"})
    assert listed_ids(everything) == ["song", "picture"] and everything.json()["meta"]["total_count"] == 7
    assert listed_ids(list_uploads(sim, **{"filter[ids]": "video-2,picture"})) == ["video-2", "picture"]
    assert listed_ids(list_uploads(sim, **{"filter[fields][type][eq]": "image"})) == ["picture"]


def test_upload_resources_look_like_datocms(datocms_simulator: Simulator) -> None:
    sim = datocms_simulator
    sim.add_upload("clip", created_at="2026-01-02T03:04:05.678Z", duration=93.4)
    sim.add_upload("raw-clip", age=10, mux_ready=False)
    sim.add_upload("cat", age=5, kind="image")
    by_id = {u["id"]: u for u in list_uploads(sim).json()["data"]}
    clip = by_id["clip"]
    assert clip["type"] == "upload" and clip["relationships"] == {"upload_collection": {"data": None}}
    attributes = clip["attributes"]
    assert attributes["created_at"] == "2026-01-02T03:04:05.678Z"
    assert (attributes["duration"], attributes["frame_rate"], attributes["mime_type"]) == (93, 30, "video/mp4")
    assert attributes["mux_playback_id"] and attributes["mux_mp4_highest_res"] == "high"
    assert attributes["filename"] == "clip.mp4" and attributes["url"].endswith(attributes["path"])
    assert len(attributes["md5"]) == 32 and attributes["is_image"] is False and attributes["size"] > 0
    assert by_id["raw-clip"]["attributes"]["mux_playback_id"] is None  # Mux still processing
    cat = by_id["cat"]["attributes"]
    assert cat["is_image"] is True and cat["duration"] is None and cat["mux_playback_id"] is None
    # An added image is no video for the generate endpoint either.
    assert error_code(post_generate(sim, "cat")) == "NOT_A_VIDEO"


@pytest.mark.parametrize("params, field_name", [
    ({"page[limit]": "501"}, "page[limit]"),
    ({"page[limit]": "0"}, "page[limit]"),
    ({"page[limit]": "ten"}, "page[limit]"),
    ({"page[offset]": "-1"}, "page[offset]"),
    ({"order_by": "size_DESC"}, "order_by"),
    ({"filter[query]": "cats"}, "filter[query]"),
])
def test_bad_list_parameters_are_invalid_field(datocms_simulator: Simulator, params: dict, field_name: str) -> None:
    response = list_uploads(datocms_simulator, **params)
    assert response.status_code == 422
    attributes = error_attributes(response)
    assert attributes["code"] == "INVALID_FIELD" and attributes["details"]["field"] == field_name


def test_page_limit_of_500_is_the_maximum_accepted(datocms_simulator: Simulator) -> None:
    for n in range(3):
        datocms_simulator.add_upload(f"v{n}", age=n)
    assert len(listed_ids(list_uploads(datocms_simulator, **{"page[limit]": "500"}))) == 3


def test_uploads_are_listed_per_environment(datocms_simulator: Simulator) -> None:
    sim = datocms_simulator
    sim.add_upload("primary-clip")
    sim.add_upload("sandbox-clip", environment="staging")
    assert listed_ids(list_uploads(sim)) == ["primary-clip"]
    assert listed_ids(list_uploads(sim, api_session(**{"X-Environment": "staging"}))) == ["sandbox-clip"]
    assert sim.remove_upload("primary-clip") and not sim.remove_upload("primary-clip")
    assert listed_ids(list_uploads(sim)) == []


def test_listing_takes_auth_rate_limit_and_faults_like_any_endpoint(datocms_simulator_factory) -> None:
    sim = datocms_simulator_factory(token=TOKEN, rate_limit=2, rate_window=60)
    sim.add_upload("clip")
    assert requests.get(f"{sim.url}/uploads", headers={"X-Api-Version": "3"}).status_code == 401
    first = list_uploads(sim)
    assert first.status_code == 200 and first.headers["X-RateLimit-Limit"] == "2"
    assert list_uploads(sim).status_code == 200
    limited = list_uploads(sim)
    assert limited.status_code == 429 and int(limited.headers["X-RateLimit-Reset"]) >= 1
    sim.configure(rate_limit=100, faults={"http_503": 1.0})
    assert list_uploads(sim).status_code == 503
    routes = [record.route for record in sim.requests()]
    assert routes == ["list_uploads"] * 5


def test_add_upload_over_http_and_reset(datocms_simulator: Simulator) -> None:
    sim = datocms_simulator
    added = control(sim, "POST", "add-upload", {"upload_id": "remote-clip", "age": 7200, "duration": 5})
    assert added.status_code == 200 and added.json()["upload"]["attributes"]["duration"] == 5
    control(sim, "POST", "add-upload", {"upload_id": "old", "created_at": 1_700_000_000, "kind": "image"})
    assert listed_ids(list_uploads(sim, order_by="_created_at_DESC")) == ["remote-clip", "old"]
    for bad in ({"age": 1}, {"upload_id": "x", "kind": "hologram"}, {"upload_id": "x", "age": 1, "created_at": 1},
                {"upload_id": "x", "created_at": "2026-01-01T00:00:00"}, {"upload_id": "x", "colour": "red"}):
        assert control(sim, "POST", "add-upload", bad).status_code == 400, bad
    control(sim, "POST", "reset")
    assert listed_ids(list_uploads(sim)) == []
