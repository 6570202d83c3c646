"""Fleet metrics: counted in Redis by real workers (prefork), scraped from one exporter."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from subtitle_tasks import metrics, request_subtitles
from subtitle_tasks.local_redis import free_port
from subtitle_tasks.state import MemoryStore
from tests.support.callbacks import record
from tests.support.harness import ROOT


def _scrape(url: str) -> dict[str, list]:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def _value(samples, name, **labels):
    return sum(s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def test_a_prefork_fleet_is_counted_once_and_served_by_one_exporter(harness, sim):
    harness.worker(concurrency=2)
    handles = [request_subtitles(f"video-m{i}", "it-IT", on_ready=record.s("ready", f"m{i}")) for i in range(3)]
    handles.append(request_subtitles("errored-m", "it-IT", on_error=record.s("error", "e")))
    harness.wait_for_calls(4)
    port = free_port()
    exporter = subprocess.Popen([sys.executable, "-m", "subtitle_tasks.cli", "metrics", "--port", str(port),
                                 "--host", "127.0.0.1"], env=harness.env, cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                families = _scrape(f"http://127.0.0.1:{port}/metrics")
                break
            except OSError:
                assert time.monotonic() < deadline, exporter.stdout.read1().decode()
                time.sleep(0.1)
        requests = families["subtitle_tasks_requests"]
        assert _value(requests, "subtitle_tasks_requests_total", outcome="ready", site="default") == 3
        assert _value(requests, "subtitle_tasks_requests_total", outcome="error", code="track_errored") == 1
        # Every API answer the simulator gave was counted once, whichever pool child got it.
        answers = families["subtitle_tasks_http_answers"]
        assert _value(answers, "subtitle_tasks_http_answers_total") == len(sim.requests())
        assert _value(answers, "subtitle_tasks_http_answers_total", status="202") == 4
        polls = families["subtitle_tasks_polls"]
        assert _value(polls, "subtitle_tasks_polls_total") >= 4
        ready = families["subtitle_tasks_time_to_ready_seconds"]
        assert _value(ready, "subtitle_tasks_time_to_ready_seconds_count") == 3
        latency = families["subtitle_tasks_callback_latency_seconds"]
        assert _value(latency, "subtitle_tasks_callback_latency_seconds_count") == 4  # timed where they start
        assert _value(families["subtitle_tasks_in_flight"], "subtitle_tasks_in_flight") == 0
        stats = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/stats.json", timeout=5).read())
        assert stats["outcomes_last_hour"] == {"ready": 3, "error": 1} and stats["backlog"] == 0
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        for rid in (h.id for h in handles):
            assert rid not in text  # no per-request labels
    finally:
        exporter.terminate()
        exporter.wait(10)


def test_stats_cli_reads_the_schedule_not_the_keys(harness):
    for i in range(5):
        request_subtitles(f"video-s{i}", "it-IT")  # no worker: all due, none handed out
    out = subprocess.run([sys.executable, "-m", "subtitle_tasks.cli", "stats", "--json"], env=harness.env,
                         cwd=ROOT, capture_output=True, text=True, timeout=30, check=False)
    stats = json.loads(out.stdout)
    assert stats["in_flight"] == 5 and stats["scheduled"] == 5 and stats["due"] == 5
    plain = subprocess.run([sys.executable, "-m", "subtitle_tasks.cli", "stats"], env=harness.env, cwd=ROOT,
                           capture_output=True, text=True, timeout=30, check=False).stdout
    assert re.search(r"in flight\s+5", plain)


def test_histogram_buckets_are_cumulative_and_labels_stay_small():
    store = MemoryStore()
    recorder = metrics.Recorder(store)
    for seconds in (45.0, 100.0, 5000.0):
        recorder.generation_ended("blog", "ready", None, 2, seconds)
    recorder.http_answer("", 429)
    families = {f.name: f for f in metrics.FleetCollector(store, overdue_after=30).collect()}
    buckets = {s.labels["le"]: s.value for s in families["subtitle_tasks_time_to_ready_seconds"].samples
               if s.name.endswith("_bucket")}
    assert buckets["60.0"] == 1 and buckets["120.0"] == 2 and buckets["+Inf"] == 3
    requests = families["subtitle_tasks_requests"].samples
    assert requests[0].value == 6 and requests[0].labels == {"code": "none", "outcome": "ready", "site": "blog"}
    assert families["subtitle_tasks_http_answers"].samples[0].labels == {"site": "default", "status": "429"}


def test_a_broken_store_never_breaks_the_caller():
    class Broken:
        def metrics_add(self, increments):
            raise ConnectionError("redis away")

        def count_outcomes(self, outcomes):
            raise ConnectionError("redis away")

    recorder = metrics.Recorder(Broken())
    recorder.poll("x")
    recorder.generation_ended("x", "ready", None, 1, 3.0)


def test_list_reads_indexes_by_state_and_upload(harness, sim):
    harness.worker()
    done = request_subtitles("video-l-done", "it-IT", on_ready=record.s("ready", "done"))
    harness.wait_for_calls(1)
    waiting = [request_subtitles(f"stuck-l{i}", "en") for i in range(3)]  # never finish

    def cli(*args):
        out = subprocess.run([sys.executable, "-m", "subtitle_tasks.cli", "list", "--json", *args],
                             env=harness.env, cwd=ROOT, capture_output=True, text=True, timeout=30, check=False)
        return json.loads(out.stdout)

    assert {r["request_id"] for r in cli("--state", "waiting")} == {h.id for h in waiting}
    assert [r["request_id"] for r in cli("--state", "ready")] == [done.id]
    assert [r["request_id"] for r in cli("--upload", "stuck-l1")] == [waiting[1].id]
    assert len(cli("--limit", "2")) == 2


def test_json_logs_carry_the_requests_context(harness_factory, sim):
    harness = harness_factory(SUBTITLE_TASKS_LOG_FORMAT="json")
    worker = harness.worker()
    handle = request_subtitles("video-json-log", "it-IT", on_ready=record.s("ready", "j"))
    harness.wait_for_calls(1)
    lines = []
    for raw in worker.log().splitlines():
        if raw.startswith("{"):
            lines.append(json.loads(raw))
    ours = [line for line in lines if line["logger"].startswith("subtitle_tasks")]
    assert ours, worker.log()[-2000:]
    assert any(line.get("generation_id") == handle.generation_id and line.get("upload_id") == "video-json-log"
               for line in ours)
    assert all("test-token" not in json.dumps(line) for line in lines)
