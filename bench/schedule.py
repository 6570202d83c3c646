"""Polling schedules on a simulated clock: requests per subtitle and detection delay.

    python -m bench.schedule                  # 5 shapes x 6 policies, 3,000 generations each (~4 min)
    python -m bench.schedule --real           # plus the real-process check on one shape (~2 min more)
    python -m bench.schedule --generations 500 --shapes wide   # smoke run
    python -m bench.schedule --target 8       # another trade-off (SUBTITLE_TASKS_POLL_TARGET)
    python -m bench.schedule --batches-only   # batches of 30 arriving together: cold, with a prior, warm

Issue #16: the batch rows. 30 requests arrive together on one site (as a sweep or a
bulk upload sends them), cold, with another site's learned timing as the prior, and
after 60 generations; simulated as above, against the official client on the same draws.

Issue #10, items 1-2. Each shape draws, from its own seed, an arrival time, a video
length, a job duration (POST accepted -> job result 200) and a preparing time (job
done -> track ready) per generation; every policy sees the same draws.

* ``learned`` (each request giving its video's length), ``learned, no length`` and
  ``exponential`` run through the real code: ``Pipeline.advance`` on a ``MemoryStore``
  whose clock is the simulation's, against a scripted DatoCMS that answers from the
  draws. A step due at ``t`` runs at the first dispatcher tick after ``t``
  (``--dispatch-interval``, 1 s as ``SUBTITLE_TASKS_DISPATCH_INTERVAL``), as the
  dispatcher hands it out. The learned ones learn as they go, from a cold start.
* ``official`` (the JS client's ``pollJobResult``: 1 s, 2 s, 3 s, ... between job-result
  GETs, and the same for the track list after the job result) and ``fixed 1 s`` (the
  Ruby client) poll in-process: no dispatcher.
* ``knows the distribution`` is a bound to read the others against, not a policy
  (``run_known``): the best a schedule that learns only how long tracks take to be
  ready could do. The learned policy also learns from each look that does not find
  the track (unseen.py), so it can spend less.

Requests per subtitle count every GET a generation makes (job results and track lists,
including the one track-list snapshot ours takes before its POST); the POST, which
every policy makes once, is left out. Delay is from "track ready" to the poll that sees
it. The first ``--warmup`` generations of each shape are the cold start: left out of
the main table and reported on their own.

``--real``: a ``redis-server``, a real ``celery worker`` and the simulator (in this
process, each job timed from the same kind of draws, scaled down 10x along with the
poll and dispatch settings), with ``learned``; requests and detection times from the
simulator's request log, callback times from the callback records. Printed next to
the simulated figures for the same scaled shape.

Prints markdown tables and writes ``bench/results/schedule-<timestamp>.summary.json``.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import platform
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from subtitle_tasks import schedule
from subtitle_tasks.datocms.resources import UploadTrack
from subtitle_tasks.pipeline import Pipeline
from subtitle_tasks.planner import Planner
from subtitle_tasks.settings import Settings, load_settings
from subtitle_tasks.state import DONE
from subtitle_tasks.state.stub import MemoryStore
from subtitle_tasks.testing import Simulator

RESULTS_DIR = Path(__file__).resolve().parent / "results"
POLICIES = ("learned", "learned, no length", "official", "fixed 1 s", "exponential", "knows the distribution")
START = 1_800_000_000.0  # the simulated clock's origin (any value: only differences count)


# -- duration shapes: (rng, fraction of the run done, upload seconds) -> (job seconds, preparing seconds) ---

def _narrow(rng: random.Random, f: float, video: float) -> tuple[float, float]:
    return rng.uniform(40, 50), rng.uniform(2, 6)


def _wide(rng: random.Random, f: float, video: float) -> tuple[float, float]:
    return rng.uniform(20, 90), rng.uniform(0, 30)  # the stand-in


def _bimodal(rng: random.Random, f: float, video: float) -> tuple[float, float]:
    job = rng.uniform(15, 25) if rng.random() < 0.6 else rng.uniform(60, 90)
    return job, rng.uniform(0, 20)


def _drifting(rng: random.Random, f: float, video: float) -> tuple[float, float]:
    middle = 20 + 60 * f  # the typical job goes from 20 s to 80 s over the run
    return rng.uniform(0.7 * middle, 1.3 * middle), rng.uniform(0, 10 + 20 * f)


def _by_length(rng: random.Random, f: float, video: float) -> tuple[float, float]:
    return 10 + video / 20 * rng.uniform(0.85, 1.15), rng.uniform(0, 10)


SHAPES: dict[str, tuple[Callable[[random.Random, float, float], tuple[float, float]], str]] = {
    "narrow": (_narrow, "jobs U(40, 50) s, preparing U(2, 6) s"),
    "wide": (_wide, "jobs U(20, 90) s, preparing U(0, 30) s (the issue's)"),
    "bimodal": (_bimodal, "jobs 60 % U(15, 25) s, 40 % U(60, 90) s; preparing U(0, 20) s"),
    "drifting": (_drifting, "jobs U(0.7m, 1.3m) s, m from 20 to 80 s over the run; preparing U(0, 10 + 20f) s"),
    "by length": (_by_length, "jobs 10 s + the video's length / 20 (+-15 %), videos 1-32 min (log-uniform); "
                              "preparing U(0, 10) s"),
}


@dataclass
class Draws:
    arrivals: list[float]
    jobs: list[float]
    preparing: list[float]
    videos: list[float]  # each upload's length in seconds, given to request_subtitles (unscaled)


def draw(shape: str, n: int, seed: int, spacing: float, scale: float = 1.0) -> Draws:
    """Poisson arrivals ``spacing`` apart on average; durations from the shape, times ``scale``.

    Every upload gets a length (log-uniform 1-32 min) from a stream of its own, so the
    other draws are the same whether or not a shape uses it."""
    fn = SHAPES[shape][0]
    rng = random.Random(f"{shape}:{seed}")
    lengths = random.Random(f"{shape}:{seed}:video")
    arrivals, jobs, preparing, videos, t = [], [], [], [], 0.0
    for i in range(n):
        t += rng.expovariate(1.0 / spacing)
        video = 60 * 2 ** lengths.uniform(0, 5)
        job, prep = fn(rng, i / max(1, n - 1), video)
        arrivals.append(t * scale)
        jobs.append(max(0.0, job) * scale)
        preparing.append(max(0.0, prep) * scale)
        videos.append(video)
    return Draws(arrivals, jobs, preparing, videos)


@dataclass
class Outcome:
    requests: int = 0   # GETs: job results and track lists
    delay: float | None = None  # track ready -> the poll that saw it


# -- the real pipeline on a simulated clock -------------------------------------------------

class _Clock:
    def __init__(self) -> None:
        self.t = START

    def __call__(self) -> float:
        return self.t


def _track(upload_id: str, status: str) -> UploadTrack:
    return UploadTrack.from_resource({
        "id": f"track-{upload_id}", "type": "upload_track",
        "attributes": {"type": "subtitles", "name": None, "language_code": "it", "closed_captions": False,
                       "status": status, "error": None},
        "relationships": {"upload": {"data": {"id": upload_id, "type": "upload"}}},
    })


class ScriptedDatoCMS:
    """Answers from the draws at the simulated time; counts every GET per generation."""

    def __init__(self, clock: _Clock, draws: Draws, outcomes: list[Outcome]) -> None:
        self.clock, self.draws, self.outcomes = clock, draws, outcomes
        self.posted: dict[int, float] = {}

    def _status(self, i: int) -> str | None:
        """None while the job runs, then the track's status."""
        posted = self.posted.get(i)
        if posted is None or self.clock.t < posted + self.draws.jobs[i]:
            return None
        return "ready" if self.clock.t >= posted + self.draws.jobs[i] + self.draws.preparing[i] else "preparing"

    def generate_subtitles(self, upload_id: str, language_code: str, *, name: str | None = None,
                           body_type: str = "") -> str:
        self.posted[int(upload_id[1:])] = self.clock.t
        return upload_id

    def get_job_result(self, job_id: str) -> UploadTrack | None:
        i = int(job_id[1:])
        self.outcomes[i].requests += 1
        if self._status(i) is None:
            return None
        # As DatoCMS's job result: the track as it was when the job finished.
        return _track(job_id, "ready" if self.draws.preparing[i] <= 0 else "preparing")

    def list_tracks(self, upload_id: str) -> list[UploadTrack]:
        i = int(upload_id[1:])
        self.outcomes[i].requests += 1
        status = self._status(i)
        return [] if status is None else [_track(upload_id, status)]

    def ready_at(self, i: int) -> float:
        return self.posted[i] + self.draws.jobs[i] + self.draws.preparing[i]


def run_pipeline(policy: str, draws: Draws, *, seed: int, poll_initial: float = 1.0, poll_max: float = 60.0,
                 dispatch_interval: float = 1.0, poll_target: float | None = None,
                 lengths: bool = True, other_site: list[float] | None = None) -> tuple[list[Outcome], MemoryStore]:
    """Every generation through Pipeline.advance, steps run at dispatcher ticks; with
    ``lengths``, each request gives its upload's length (``upload_duration``). With
    ``other_site`` (ready times), the fleet also serves a site that has learned those, so
    this one starts from its prior (planner.py)."""
    clock = _Clock()
    store = MemoryStore(clock=clock)
    planner = Planner(sites=lambda: ["", "other"], clock=clock) if other_site else None
    for seconds in other_site or ():
        store.record_timing("other", schedule.READY, seconds, schedule.DECAY)
    outcomes = [Outcome() for _ in draws.arrivals]
    api = ScriptedDatoCMS(clock, draws, outcomes)
    overrides: dict[str, Any] = {"poll_policy": policy, "poll_initial": poll_initial, "poll_max": poll_max,
                                 "dispatch_interval": dispatch_interval}
    if poll_target is not None:
        overrides["poll_target"] = poll_target
    settings = load_settings(overrides, environ={})
    pipeline = Pipeline(settings, store, lambda site: api, lambda request_id: None,
                        rng=random.Random(f"jitter:{seed}").random, planner=planner)

    def tick(t: float) -> float:  # the first dispatcher tick at or after t
        return START + math.ceil((t - START) / dispatch_interval - 1e-9) * dispatch_interval

    events: list[tuple[float, int, int]] = []  # (time, kind 0 arrive / 1 step, generation)
    for i, at in enumerate(draws.arrivals):
        heapq.heappush(events, (START + at, 0, i))
    while events:
        t, kind, i = heapq.heappop(events)
        clock.t = t
        if kind == 0:
            store.create_request(request_id=f"r{i}", generation_id=f"g{i}", upload_id=f"u{i}", language_code="it",
                                 name=None, environment=None, on_ready=[], on_error=[], ttl=settings.deadline,
                                 duration_band=schedule.duration_band(draws.videos[i]) if lengths else None)
            heapq.heappush(events, (tick(t), 1, i))
            continue
        pipeline.advance(f"g{i}")
        gen = store.load_generation(f"g{i}")
        if gen.phase == DONE:
            outcomes[i].delay = t - api.ready_at(i)
        else:
            heapq.heappush(events, (tick(max(gen.due, t)), 1, i))
    return outcomes, store


def run_client(policy: str, draws: Draws, unit: float = 1.0) -> list[Outcome]:
    """An in-process client: ``official`` waits 1, 2, 3 ... units between GETs, ``fixed`` 1 unit."""
    outcomes = []
    for job, prep in zip(draws.jobs, draws.preparing, strict=True):
        out, t, k = Outcome(), 0.0, 0
        while True:  # job-result GETs, from the POST
            k += 1
            t += (k if policy == "official" else 1) * unit
            out.requests += 1
            if t >= job:
                break
        if prep > 0:
            k = 0
            while True:  # track-list GETs, from the job result
                k += 1
                t += (k if policy == "official" else 1) * unit
                out.requests += 1
                if t >= job + prep:
                    break
        out.delay = t - (job + prep)
        outcomes.append(out)
    return outcomes


# -- figures ------------------------------------------------------------------------------

def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)] if ordered else math.nan


def summarise(outcomes: list[Outcome]) -> dict[str, float]:
    done = [o for o in outcomes if o.delay is not None]
    delays = [o.delay for o in done]
    return {
        "generations": len(outcomes), "ready": len(done),
        "requests_per_subtitle": sum(o.requests for o in outcomes) / max(1, len(outcomes)),
        "p50": percentile(delays, 0.50), "p95": percentile(delays, 0.95), "p99": percentile(delays, 0.99),
        "mean_delay": sum(delays) / max(1, len(delays)),
    }


def run_known(draws: Draws, target: float, warmup: int, unit: float = 1.0) -> list[Outcome]:
    """A bound to measure against: the schedule's own plan made from the exact histogram
    of this shape's ready times (every draw after the warm-up, nothing decayed), with the
    target set to the official client's p95 on the same draws; polls at exact times, no
    dispatcher, plus the one snapshot GET ours makes. Only a schedule told the
    distribution in advance could do this; it estimates the least a schedule that knows
    only the ready times (no more than "not ready yet" from a look) spends for that p95."""
    ready = [job + prep for job, prep in zip(draws.jobs, draws.preparing, strict=True)]
    stats: list[float] | None = None
    for seconds in ready[warmup:]:
        stats = schedule.update(stats, seconds, decay=1.0)
    polls = schedule.poll_times(stats, target=target, initial=unit, maximum=60.0 * unit,
                                horizon=max(ready) + 120.0 * unit)
    outcomes = []
    for seconds in ready:
        seen = next((i for i, t in enumerate(polls) if t >= seconds), None)
        if seen is None:  # past the plan: the geometric tail would find it; count the plan only
            outcomes.append(Outcome(requests=1 + len(polls)))
            continue
        outcomes.append(Outcome(requests=2 + seen, delay=polls[seen] - seconds))
    return outcomes


def run_policies(draws: Draws, policies: list[str], *, warmup: int, seed: int, scale: float = 1.0,
                 dispatch_interval: float = 1.0, target: float | None = None) -> dict[str, Any]:
    """Every policy on the same draws; times (and the poll settings) scaled by ``scale``."""
    out: dict[str, Any] = {}
    if "knows the distribution" in policies and "official" not in policies:
        policies = [*policies, "official"]  # its target is the official client's p95
    for policy in sorted(policies, key=lambda p: p == "knows the distribution"):
        started = time.perf_counter()
        if policy == "knows the distribution":
            outcomes = run_known(draws, out["official"]["steady"]["p95"], warmup, unit=scale)
        elif policy in ("learned", "learned, no length", "exponential"):
            outcomes, _ = run_pipeline("exponential" if policy == "exponential" else "learned", draws, seed=seed,
                                       poll_initial=1.0 * scale, poll_max=60.0 * scale,
                                       dispatch_interval=dispatch_interval * scale,
                                       poll_target=(target or Settings.poll_target) * scale,
                                       lengths=policy == "learned")
        else:
            outcomes = run_client("official" if policy == "official" else "fixed", draws, unit=scale)
        out[policy] = {"steady": summarise(outcomes[warmup:]), "cold_start": summarise(outcomes[:warmup]),
                       "seconds": round(time.perf_counter() - started, 2)}
    official = out.get("official")
    if official:
        for figures in out.values():
            for part in ("steady", "cold_start"):
                mine, base = figures[part], official[part]
                mine["ratio"] = {key: (mine[key] / base[key] if base[key] else math.nan)
                                 for key in ("requests_per_subtitle", "p50", "p95", "p99")}
    return out


def run_shape(shape: str, args: argparse.Namespace) -> dict[str, Any]:
    draws = draw(shape, args.generations, args.seed, args.spacing)
    return {"shape": shape, "description": SHAPES[shape][1],
            "policies": run_policies(draws, args.policies, warmup=args.warmup, seed=args.seed,
                                     dispatch_interval=args.dispatch_interval, target=args.target)}


def _fmt(value: float, digits: int = 1) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:,.{digits}f}"


def table(results: list[dict[str, Any]], part: str = "steady") -> str:
    lines = ["| shape | policy | requests / subtitle | p50 delay (s) | p95 delay (s) | p99 delay (s) "
             "| requests vs official | p95 vs official |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for result in results:
        for policy, figures in result["policies"].items():
            f = figures[part]
            ratio = f.get("ratio", {})
            lines.append(f"| {result['shape']} | {policy} | {_fmt(f['requests_per_subtitle'], 2)} | {_fmt(f['p50'])} "
                         f"| {_fmt(f['p95'])} | {_fmt(f['p99'])} | {_fmt(ratio.get('requests_per_subtitle'), 2)} "
                         f"| {_fmt(ratio.get('p95'), 2)} |")
    return "\n".join(lines)


# -- batches: requests arriving together, as a sweep or a bulk upload sends them ---------------

BATCH = 30  # requests per batch (issue #16's)
BATCH_SCENARIOS = (
    ("fresh site, first batch", 0, False),
    ("fresh site, first batch, the fleet serves another site", 0, True),
    ("after 60 generations (two batches), third batch", 2, False),
)


def run_batches(shape: str, seeds: int, *, target: float | None = None) -> list[dict[str, Any]]:
    """Each scenario: per seed, ``before`` batches of BATCH on one site 200 s apart, then the
    measured batch; through the pipeline on a simulated clock, the official client on
    the same draws. The other site (a prior) has 200 generations of the same shape,
    drawn from seeds of its own."""
    rows = []
    for name, before, prior in BATCH_SCENARIOS:
        ours: list[Outcome] = []
        theirs: list[Outcome] = []
        for seed in range(seeds):
            draws = draw(shape, BATCH * (before + 1), seed, 5.0)
            draws.arrivals = [(i // BATCH) * 200.0 for i in range(len(draws.jobs))]
            other = None
            if prior:
                known = draw(shape, 200, 1000 + seed, 5.0)
                other = [job + prep for job, prep in zip(known.jobs, known.preparing, strict=True)]
            outcomes, _ = run_pipeline("learned", draws, seed=seed, lengths=False, other_site=other,
                                       poll_target=target)
            ours += outcomes[-BATCH:]
            theirs += run_client("official", draws)[-BATCH:]
        mine, base = summarise(ours), summarise(theirs)
        rows.append({"scenario": name, "shape": shape, "seeds": seeds, "ours": mine, "official": base,
                     "ratio": {key: mine[key] / base[key] for key in ("requests_per_subtitle", "p95")}})
    return rows


def batch_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| shape | batch of 30 arriving together | requests / subtitle, ours (official) | ratio "
             "| p95 delay, ours (official) | ratio |", "|---|---|---:|---:|---:|---:|"]
    for row in rows:
        o, b, r = row["ours"], row["official"], row["ratio"]
        lines.append(f"| {row['shape']} | {row['scenario']} | {_fmt(o['requests_per_subtitle'], 2)} "
                     f"({_fmt(b['requests_per_subtitle'], 2)}) | {_fmt(r['requests_per_subtitle'], 2)}x "
                     f"| {_fmt(o['p95'], 2)} s ({_fmt(b['p95'], 2)} s) | {_fmt(r['p95'], 2)}x |")
    return "\n".join(lines)


# -- the real-process check ------------------------------------------------------------------

class TimedSimulator(Simulator):
    """The simulator with each upload's job timed from ``draws``: upload ids end in
    ``-{index}`` (the stock simulator times every job alike). ``timed`` keeps, per upload,
    (POST accepted, track ready) on this process's monotonic clock."""

    def __init__(self, draws: Draws, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.draws = draws
        self.timed: dict[str, tuple[float, float]] = {}
        self.job_upload: dict[str, str] = {}

    def _create_job(self, upload_id, environment, language_code, name, kind):
        job = super()._create_job(upload_id, environment, language_code, name, kind)
        i = int(upload_id.rsplit("-", 1)[1])
        accepted = job.done_at - self._config.job_seconds
        job.done_at = accepted + self.draws.jobs[i]
        job.preparing_seconds = self.draws.preparing[i]
        self.timed[upload_id] = (accepted, accepted + self.draws.jobs[i] + self.draws.preparing[i])
        self.job_upload[job.job_id] = upload_id
        return job

    def outcomes(self, uploads: list[str]) -> dict[str, Outcome]:
        """Per upload, every GET its generation made (the snapshot, job results, track
        lists) and the delay from its track being ready to the track-list GET that first
        saw it so, from the request log."""
        out = {upload: Outcome() for upload in uploads}
        for entry in self.requests():
            if entry.method != "GET" or entry.status not in (200, 404):
                continue
            if entry.path.startswith("/job-results/"):
                upload = self.job_upload.get(entry.path.rsplit("/", 1)[1])
            elif entry.path.startswith("/uploads/") and entry.path.endswith("/tracks"):
                upload = entry.path.split("/")[2]
            else:
                continue
            if upload not in out:
                continue
            out[upload].requests += 1
            if upload in self.timed and entry.path.endswith("/tracks") and out[upload].delay is None \
                    and entry.time >= self.timed[upload][1]:
                out[upload].delay = entry.time - self.timed[upload][1]
        return out


def run_real(args: argparse.Namespace) -> dict[str, Any]:
    """A worker, Redis and the simulator; jobs timed from ``args.real_shape`` scaled by ``args.real_scale``."""
    import tempfile
    import threading

    import redis

    import subtitle_tasks
    from subtitle_tasks.local_redis import LocalRedis
    from subtitle_tasks.testing import SimulatorConfig
    from tests.support.callbacks import record
    from tests.support.harness import TOKEN, Harness

    scale, n = args.real_scale, args.real_generations
    draws = draw(args.real_shape, n, args.seed + 1, args.real_spacing / scale, scale)
    draws.arrivals = [i * args.real_spacing for i in range(n)]  # steady: one request every real_spacing s

    settings = {
        "SUBTITLE_TASKS_POLL_POLICY": "learned",
        "SUBTITLE_TASKS_POLL_INITIAL": repr(1.0 * scale), "SUBTITLE_TASKS_POLL_MAX": repr(60.0 * scale),
        "SUBTITLE_TASKS_DISPATCH_INTERVAL": repr(args.dispatch_interval * scale),
        "SUBTITLE_TASKS_POLL_TARGET": repr((args.target or Settings.poll_target) * scale),
        "SUBTITLE_TASKS_RATE_LIMIT": "100000", "SUBTITLE_TASKS_LEASE": "3", "SUBTITLE_TASKS_HTTP_TIMEOUT": "1",
    }
    seen: dict[str, tuple[str, float]] = {}  # upload -> (callback kind, when its record appeared)
    stop = threading.Event()
    started = time.monotonic()
    with LocalRedis() as server, \
            TimedSimulator(draws, SimulatorConfig(token=TOKEN, rate_limit=100000)) as sim, \
            tempfile.TemporaryDirectory(prefix="subtitle-tasks-schedule-") as tmp:
        harness = Harness(server.url, sim, Path(tmp), **settings)
        watcher_client = redis.Redis.from_url(server.url)

        def watch() -> None:  # callback records, timed on the simulator's clock (this process's monotonic)
            while not stop.is_set():
                item = watcher_client.blpop([f"{harness.prefix}:test:calls"], timeout=0.2)
                if item:
                    call = json.loads(item[1])
                    seen.setdefault(call["tag"], (call["kind"], time.monotonic()))

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            harness.worker(concurrency=args.real_concurrency)
            begin = time.monotonic()
            for i in range(n):
                time.sleep(max(0.0, begin + draws.arrivals[i] - time.monotonic()))
                upload = f"sched-{i}"
                subtitle_tasks.request_subtitles(upload, "it", on_ready=record.s("ready", upload),
                                                 on_error=record.s("error", upload),
                                                 upload_duration=draws.videos[i])
            give_up = time.monotonic() + 120 * scale + 30
            while len(seen) < n and time.monotonic() < give_up:
                time.sleep(0.2)
        finally:
            stop.set()
            watcher.join(5)
            harness.close()
            watcher_client.close()
        outcomes = sim.outcomes([f"sched-{i}" for i in range(n)])
        timed = sim.timed
    warm = min(args.real_warmup, n // 2)
    ordered = [outcomes[f"sched-{i}"] for i in range(n)]
    callbacks = [seen[u][1] - timed[u][1] for u in (f"sched-{i}" for i in range(warm, n))
                 if u in seen and u in timed and seen[u][0] == "ready"]
    simulated = run_policies(draws, ["learned", "official", "exponential"], warmup=warm, seed=args.seed + 1,
                             scale=scale, dispatch_interval=args.dispatch_interval, target=args.target)
    return {
        "shape": args.real_shape, "description": SHAPES[args.real_shape][1], "scale": scale, "generations": n,
        "warmup": warm, "spacing_seconds": args.real_spacing, "settings": settings,
        "worker_concurrency": args.real_concurrency, "seconds": round(time.monotonic() - started, 1),
        "callbacks": {"ready": sum(1 for k, _ in seen.values() if k == "ready"),
                      "error": sum(1 for k, _ in seen.values() if k == "error")},
        "real": {**summarise(ordered[warm:]), "callback_p50": percentile(callbacks, 0.5),
                 "callback_p95": percentile(callbacks, 0.95), "callback_p99": percentile(callbacks, 0.99)},
        "simulated": simulated,
    }


def real_table(real: dict[str, Any]) -> str:
    r, sim = real["real"], real["simulated"]
    rows = [("learned, real processes (detection, from the simulator's log)", r),
            ("learned, simulated on the same draws and settings", sim["learned"]["steady"]),
            ("official schedule, simulated on the same draws", sim["official"]["steady"]),
            ("exponential (before), simulated on the same draws", sim["exponential"]["steady"])]
    lines = ["| scaled shape, after the warm-up | requests / subtitle "
             "| p50 delay (s) | p95 delay (s) | p99 delay (s) |",
             "|---|---:|---:|---:|---:|"]
    for name, f in rows:
        lines.append(f"| {name} | {_fmt(f['requests_per_subtitle'], 2)} | {_fmt(f['p50'], 2)} | {_fmt(f['p95'], 2)} "
                     f"| {_fmt(f['p99'], 2)} |")
    lines.append(f"| learned, real processes, to the on_ready callback | | {_fmt(r['callback_p50'], 2)} "
                 f"| {_fmt(r['callback_p95'], 2)} | {_fmt(r['callback_p99'], 2)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--policies", nargs="+", default=list(POLICIES), choices=list(POLICIES))
    parser.add_argument("--generations", type=int, default=3000, help="per shape")
    parser.add_argument("--warmup", type=int, default=300, help="first generations: the cold start, reported apart")
    parser.add_argument("--spacing", type=float, default=5.0, help="mean seconds between arrivals")
    parser.add_argument("--dispatch-interval", type=float, default=1.0, help="SUBTITLE_TASKS_DISPATCH_INTERVAL")
    parser.add_argument("--seed", type=int, default=10)
    parser.add_argument("--target", type=float, default=None,
                        help="SUBTITLE_TASKS_POLL_TARGET for this run (the trade-off between requests and delay)")
    parser.add_argument("--batch-seeds", type=int, default=12,
                        help="batch rows: seeds per scenario (0: none), on the wide and bimodal shapes")
    parser.add_argument("--batches-only", action="store_true", help="only the batch rows (about a minute)")
    parser.add_argument("--real", action="store_true", help="also the real-process check")
    parser.add_argument("--real-shape", default="wide", choices=list(SHAPES))
    parser.add_argument("--real-scale", type=float, default=0.1, help="durations and poll settings times this")
    parser.add_argument("--real-generations", type=int, default=400)
    parser.add_argument("--real-warmup", type=int, default=60)
    parser.add_argument("--real-spacing", type=float, default=0.25, help="seconds between real arrivals")
    parser.add_argument("--real-concurrency", type=int, default=4)
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)

    started = time.perf_counter()
    results = [] if args.batches_only else [run_shape(shape, args) for shape in args.shapes]
    if results:
        print(f"## Simulated: after the first {args.warmup} of {args.generations} generations per shape\n")
        print(table(results, "steady"))
        print(f"\n## Cold start: the first {args.warmup} generations\n")
        print(table(results, "cold_start"))
    batches: list[dict[str, Any]] = []
    if args.batch_seeds:
        for shape in ("wide", "bimodal"):
            batches += run_batches(shape, args.batch_seeds, target=args.target)
        print(f"\n## Batches: {BATCH} requests arriving together, {args.batch_seeds} seeds per row\n")
        print(batch_table(batches))
    real = None
    if args.real:
        real = run_real(args)
        print(f"\n## Real processes: {real['shape']} scaled x{real['scale']}, {real['generations']} generations "
              f"(first {real['warmup']} left out), callbacks {real['callbacks']}, {real['seconds']} s\n")
        print(real_table(real))
    summary = {
        "benchmark": "schedule", "issue": "#10 items 1-2", "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "clock": "simulated; learned and exponential through Pipeline.advance on a MemoryStore",
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "seconds_total": round(time.perf_counter() - started, 1),
        "results": results, "batches": batches, "real": real,
    }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    path = args.results_dir / f"schedule-{time.strftime('%Y%m%d-%H%M%S')}.summary.json"
    path.write_text(json.dumps(summary, indent=2, default=float) + "\n")
    print(f"\nsummary: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
