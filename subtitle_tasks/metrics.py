"""Fleet metrics: counted in Redis by every process, served to Prometheus by one.

Counters and histograms live in one Redis hash (``Store.metrics_add``), so they are
fleet-wide and exact whatever the pool: prefork children, several hosts, restarts
(nothing is lost with a process, and no per-process files are needed). Gauges are
read from the schedule itself at scrape time. So any one exporter shows the whole
fleet: ``subtitle-tasks metrics --port 9100``, or ``SUBTITLE_TASKS_METRICS_PORT`` in
each worker (then scrape one of them, not all: they show the same numbers).

Labels are small sets only (site alias, HTTP status, outcome, error code): never a
request, upload or job id. Recording never raises into the pipeline: a metric lost to
a Redis hiccup is better than a step that fails for it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Protocol, TypedDict

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

log = logging.getLogger("subtitle_tasks.metrics")

# Histogram buckets (upper bounds, seconds).
TIME_TO_READY_BUCKETS = (30.0, 60.0, 120.0, 180.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0)
CALLBACK_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0)
HISTOGRAMS = {
    "time_to_ready_seconds": TIME_TO_READY_BUCKETS,
    "callback_latency_seconds": CALLBACK_LATENCY_BUCKETS,
}
# Header on every callback message: when its request's outcome was decided (worker clock).
DECIDED_AT_HEADER = "subtitle_tasks_decided_at"

# A series' labels as sorted (name, value) pairs: hashable, so series can be keyed by it.
_LabelKey = tuple[tuple[str, str], ...]


class _HistogramSeries(TypedDict):
    buckets: dict[str, float]  # upper bound (as text, "+Inf" included) -> count
    sum: float


def field(name: str, **labels: Any) -> str:
    """A counter's field in the metrics hash: ``name|key=value,...`` (sorted labels)."""
    if not labels:
        return name
    return name + "|" + ",".join(f"{k}={labels[k]}" for k in sorted(labels))


def parse_field(raw: str) -> tuple[str, dict[str, str]]:
    name, _, rest = raw.partition("|")
    labels = dict(pair.split("=", 1) for pair in rest.split(",") if "=" in pair) if rest else {}
    return name, labels


def histogram_fields(name: str, value: float, **labels: Any) -> dict[str, float]:
    """The increments one observation makes: each bucket it falls in, the sum and the count."""
    out = {field(f"{name}_bucket", le=_le(bound), **labels): 1.0
           for bound in HISTOGRAMS[name] if value <= bound}
    out[field(f"{name}_bucket", le="+Inf", **labels)] = 1.0
    out[field(f"{name}_sum", **labels)] = float(value)
    out[field(f"{name}_count", **labels)] = 1.0
    return out


def _le(bound: float) -> str:
    return repr(float(bound))


class MetricsStore(Protocol):
    """Where a :class:`Recorder` counts (the part of ``state.Store`` it uses)."""

    def metrics_add(self, increments: Mapping[str, float]) -> None: ...
    def count_outcomes(self, outcomes: Mapping[str, int]) -> None: ...


class StatsStore(Protocol):
    """What :func:`fleet_stats` and the exporter read (the part of ``state.Store`` they use)."""

    def schedule_stats(self, overdue_after: float) -> dict[str, Any]: ...
    def counts(self) -> dict[str, int]: ...
    def recent_outcomes(self, minutes: int = 60) -> dict[str, int]: ...
    def metrics_values(self) -> dict[str, float]: ...


class Recorder:
    """What the pipeline, the API client and the callback watch count. Never raises."""

    def __init__(self, store: MetricsStore):
        self.store = store

    def _add(self, increments: Mapping[str, float]) -> None:
        try:
            self.store.metrics_add(increments)
        except Exception as exc:  # a metric is never worth a failed step
            log.debug("metrics not recorded (%s)", type(exc).__name__)

    def http_answer(self, site: str, status: int) -> None:
        self._add({field("http_answers_total", site=site or "default", status=status): 1})

    def poll(self, site: str) -> None:
        self._add({field("polls_total", site=site or "default"): 1})

    def generation_ended(self, site: str, outcome: str, code: str | None, requests: int, seconds: float) -> None:
        """A generation's end: its requests by outcome and code, and its time to ready.

        Polls per generation is ``polls_total / generations_total`` (a ratio of rates in
        Prometheus): counting each generation's polls would cost a field on every one.
        """
        label = site or "default"
        increments = {
            field("requests_total", site=label, outcome=outcome, code=code or "none"): float(requests),
            field("generations_total", site=label, outcome=outcome): 1.0,
        }
        if outcome == "ready":
            increments.update(histogram_fields("time_to_ready_seconds", seconds, site=label))
        self._add(increments)
        if requests:
            try:
                self.store.count_outcomes({outcome: requests})
            except Exception as exc:
                log.debug("outcome not counted (%s)", type(exc).__name__)

    def steps_released(self, cause: str, steps: int, workers: int = 0) -> None:
        """The step watch handed steps out again: ``cause`` is dead_worker, lost_child or shutdown."""
        increments = {field("steps_released_total", cause=cause): float(steps)}
        if workers:
            increments[field("workers_presumed_dead_total")] = float(workers)
        self._add(increments)

    def callback_started(self, latency: float) -> None:
        self._add(histogram_fields("callback_latency_seconds", max(0.0, latency)))


class FleetStats(TypedDict):
    """What :func:`fleet_stats` returns (``/stats.json``, ``subtitle-tasks stats``)."""

    in_flight: int
    scheduled: int
    due: int
    overdue: int
    backlog: int
    finishing: int
    oldest_due_seconds: float
    outcomes_last_hour: dict[str, int]
    by_site: list[dict[str, Any]]  # schedule_stats rows: site, kind, scheduled, due, overdue, oldest_due


def fleet_stats(store: StatsStore, overdue_after: float) -> FleetStats:
    """What ``subtitle-tasks stats`` and the gauges show: a handful of Redis calls, no scan."""
    schedule = store.schedule_stats(overdue_after)
    counts = store.counts()
    now = schedule["now"]
    rows = schedule["schedules"]
    oldest = min((r["oldest_due"] for r in rows if r["oldest_due"] is not None and r["oldest_due"] <= now),
                 default=None)
    due, overdue = sum(r["due"] for r in rows), sum(r["overdue"] for r in rows)
    return {
        "in_flight": counts["in_flight"],
        "scheduled": sum(r["scheduled"] for r in rows),
        "due": due,
        "overdue": overdue,
        "backlog": due,  # what an autoscaler should scale on: steps that could run now
        "finishing": counts["finishing"],
        "oldest_due_seconds": round(now - oldest, 3) if oldest is not None else 0.0,
        "outcomes_last_hour": store.recent_outcomes(60),
        "by_site": [{**r, "site": r["site"] or "default"} for r in rows],
    }


class FleetCollector:
    """A prometheus_client collector that reads the fleet's numbers from Redis per scrape."""

    def __init__(self, store: StatsStore, overdue_after: float):
        self.store = store
        self.overdue_after = overdue_after

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        values = self.store.metrics_values()
        counters: dict[str, dict[_LabelKey, float]] = {}
        histograms: dict[str, dict[_LabelKey, _HistogramSeries]] = {}
        for raw, value in values.items():
            name, labels = parse_field(raw)
            for hist in HISTOGRAMS:
                if name.startswith(hist + "_"):
                    part = name[len(hist) + 1:]
                    le = labels.pop("le", None)
                    entry = histograms.setdefault(hist, {}).setdefault(
                        tuple(sorted(labels.items())), {"buckets": {}, "sum": 0.0})
                    if part == "bucket" and le is not None:
                        entry["buckets"][le] = value
                    elif part == "sum":
                        entry["sum"] = value
                    break
            else:
                counters.setdefault(name, {})[tuple(sorted(labels.items()))] = value
        help_text = {
            "http_answers_total": "DatoCMS API answers by HTTP status (429s included)",
            "requests_total": "Requests ended, by outcome and error code",
            "generations_total": "Generations ended, by outcome",
            "polls_total": "Job-result and track-list polls",
            "steps_released_total": "Steps the step watch handed out again, by cause",
            "workers_presumed_dead_total": "Workers silent for SUBTITLE_TASKS_DEAD_AFTER, taken for dead",
        }
        for name, series in sorted(counters.items()):
            base = name[:-6] if name.endswith("_total") else name
            label_names = sorted({k for key in series for k, _ in key})
            family = CounterMetricFamily(f"subtitle_tasks_{base}", help_text.get(name, name), labels=label_names)
            for key, value in series.items():
                labels = dict(key)
                family.add_metric([labels.get(k, "") for k in label_names], value)
            yield family
        for name, by_labels in sorted(histograms.items()):
            label_names = sorted({k for key in by_labels for k, _ in key})
            histogram = HistogramMetricFamily(f"subtitle_tasks_{name}", name.replace("_", " "), labels=label_names)
            for key, hist_series in by_labels.items():
                labels = dict(key)
                buckets = sorted(hist_series["buckets"].items(), key=lambda kv: float(kv[0]))
                histogram.add_metric([labels.get(k, "") for k in label_names], buckets, hist_series["sum"])
            yield histogram
        stats = fleet_stats(self.store, self.overdue_after)
        for name, text, gauge_value in (
                ("in_flight", "Generations in flight (fleet-wide)", stats["in_flight"]),
                ("finishing", "Requests whose callbacks are being handed over", stats["finishing"]),
                ("oldest_due_seconds", "How long the oldest due step has waited", stats["oldest_due_seconds"])):
            yield GaugeMetricFamily(f"subtitle_tasks_{name}", text, value=gauge_value)
        for kind in ("scheduled", "due", "overdue"):
            steps = GaugeMetricFamily(f"subtitle_tasks_steps_{kind}", f"Steps {kind}, per site and kind",
                                      labels=["site", "kind"])
            for row in stats["by_site"]:
                steps.add_metric([row["site"], row["kind"]], row[kind])
            yield steps


class MetricsServer:
    """``/metrics`` (Prometheus text) and ``/stats.json`` (KEDA's metrics-api, scripts)."""

    def __init__(self, store: StatsStore, overdue_after: float, host: str = "0.0.0.0", port: int = 9100):
        from prometheus_client import CollectorRegistry

        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(FleetCollector(store, overdue_after))
        self.store, self.overdue_after = store, overdue_after
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # http.server's name for it
                from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

                try:
                    if self.path.split("?")[0] == "/metrics":
                        body, kind = generate_latest(server.registry), CONTENT_TYPE_LATEST
                    elif self.path.split("?")[0] == "/stats.json":
                        body = json.dumps(fleet_stats(server.store, server.overdue_after)).encode()
                        kind = "application/json"
                    else:
                        self.send_error(404)
                        return
                except Exception as exc:  # Redis away: say so, do not hang the scraper
                    self.send_error(503, f"metrics unavailable ({type(exc).__name__})")
                    return
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("metrics %s", format % args)

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def serve_in_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.httpd.serve_forever, name="subtitle-tasks-metrics", daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def on_callback_started(headers_get: Callable[[str], Any]) -> float | None:
    """The latency of a callback that starts now, from its decided-at header (None if absent)."""
    try:
        decided = float(headers_get(DECIDED_AT_HEADER))
    except (TypeError, ValueError):
        return None
    return max(0.0, time.time() - decided)
