"""Batches through a real fleet, as a user runs it: requests, delay to the callback, worker CPU.

    python -m bench.fleet                  # full scale: the issue's durations (~17 min)
    python -m bench.fleet --scale 0.5 --cold-batches 2 --warm-measured 2   # the quick plan (~6 min)

Issue #16 items 1-3 and 6, on the user's path. One ``redis-server``, the simulator with
each upload's job timed from the ``wide`` shape (jobs U(20, 90) s, then preparing
U(0, 30) s; bench/schedule.py's draws), two real ``celery worker`` processes (prefork,
concurrency 2) with the default settings, and batches of 30 requests sent together:

* **cold**: a fresh fleet's first batch (its own key prefix, so nothing learned), on
  ``--cold-batches`` fresh fleets in turn (3 by default);
* **warm**: on the last of those fleets, after ``--warm-batches`` more batches on the
  same site (60 generations by default), the next ``--warm-measured`` batches (3).

A p95 over one batch of 30 is its second-slowest generation, and the official client's
own swings from 5.2 s to 7.4 s between batches of the same shape, so each figure pools
its batches (90 generations by default). Every batch has draws of its own.

Per batch: the GETs each generation made (from the simulator's request log; the POST,
made once by every client, left out), the delay from its track becoming ready to its
``on_ready`` callback running (the record it writes, on the machine's monotonic clock,
which is the simulator's too), and the CPU seconds of every worker process (main and
pool children, from /proc) spent while the batch ran. The baseline, in the same run:
DatoCMS's official client (waits 1 s, 2 s, 3 s, ... between job-result GETs, the same
again between track-list GETs) replayed on the same durations, in-process, as that
client polls; it is seen when its poll sees the track ready, so its delay has no
callback in it, and ours does.

``--scale`` multiplies every duration and the time settings (poll initial, maximum and
target, dispatch interval, rate window, on both sides) alike, so the shape of the run
stays; the worker's own latencies do not shrink, so a scaled run is harder on us.

Prints a markdown table and writes ``bench/results/fleet-<timestamp>.summary.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
BATCH = 30
DEFAULTS = {  # the package's defaults, in seconds, before --scale
    "SUBTITLE_TASKS_POLL_INITIAL": 1.0, "SUBTITLE_TASKS_POLL_MAX": 60.0, "SUBTITLE_TASKS_POLL_TARGET": 6.5,
    "SUBTITLE_TASKS_DISPATCH_INTERVAL": 1.0, "SUBTITLE_TASKS_RATE_WINDOW": 3.0,
}
UNSCALED = {  # the package's defaults that --scale leaves alone (the test harness shortens them)
    "SUBTITLE_TASKS_LEASE": "30", "SUBTITLE_TASKS_HTTP_TIMEOUT": "10", "SUBTITLE_TASKS_SUBMIT_GRACE": "300",
}


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes, in seconds (a process gone since counts 0)."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of the whole line)
    return ticks / os.sysconf("SC_CLK_TCK")


def fleet_pids(workers: list[Any]) -> list[int]:
    return [pid for worker in workers for pid in (worker.process.pid, *worker.children())]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)] if ordered else math.nan


def _batch(harness: Any, client: Any, sim: Any, workers: list[Any], uploads: list[str], give_up: float,
           settle: float) -> dict[str, Any]:
    """Send one batch together, wait for its callbacks; per generation: GETs, the delay to
    the GET that saw it ready and to its callback; the workers' CPU seconds meanwhile."""
    import subtitle_tasks
    from tests.support.callbacks import read_calls, record

    cpu_before = cpu_seconds(fleet_pids(workers))
    sent = time.monotonic()
    for upload in uploads:
        subtitle_tasks.request_subtitles(upload, "it", on_ready=record.s("ready", upload),
                                         on_error=record.s("error", upload))
    while time.monotonic() < sent + give_up:
        if {c["tag"] for c in read_calls(client, harness.prefix)}.issuperset(uploads):
            break
        time.sleep(0.2)
    time.sleep(settle)  # a duplicate callback would show here
    cpu = cpu_seconds(fleet_pids(workers)) - cpu_before
    calls = [c for c in read_calls(client, harness.prefix) if c["tag"] in set(uploads)]
    outcomes = sim.outcomes(uploads)
    return {"seconds": round(time.monotonic() - sent, 1), "cpu_seconds": cpu,
            "generations": [{"upload": u, "requests": outcomes[u].requests, "seen": outcomes[u].delay,
                             "kinds": [c["kind"] for c in calls if c["tag"] == u],
                             "callback": next((c["monotonic"] - sim.timed[u][1] for c in calls
                                               if c["tag"] == u and c["kind"] == "ready" and u in sim.timed), None)}
                            for u in uploads]}


def figures(batches: list[dict[str, Any]], official: list[Any]) -> dict[str, Any]:
    """Pooled over ``batches``: ours against the official client's replay of the same generations."""
    gens = [g for b in batches for g in b["generations"]]
    delays = [g["callback"] for g in gens if g["callback"] is not None]
    seen = [g["seen"] for g in gens if g["seen"] is not None]
    base_delays = [o.delay for o in official if o.delay is not None]
    out = {
        "generations": len(gens), "ready": sum(g["kinds"] == ["ready"] for g in gens),
        "not_exactly_one_ready": sum(g["kinds"] != ["ready"] for g in gens),
        "requests_per_subtitle": sum(g["requests"] for g in gens) / len(gens),
        "p50": percentile(delays, 0.5), "p95": percentile(delays, 0.95),
        # the track-list GET that first saw it ready: the callback's delay less its hand-over
        "seen_p50": percentile(seen, 0.5), "seen_p95": percentile(seen, 0.95),
        "cpu_seconds_per_subtitle": sum(b["cpu_seconds"] for b in batches) / len(gens),
        "official": {"requests_per_subtitle": sum(o.requests for o in official) / len(official),
                     "p50": percentile(base_delays, 0.5), "p95": percentile(base_delays, 0.95)},
    }
    out["ratio"] = {key: out[key] / out["official"][key] if out["official"][key] else math.nan
                    for key in ("requests_per_subtitle", "p95")}
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    import redis

    from bench.schedule import TimedSimulator, draw, run_client
    from subtitle_tasks.local_redis import LocalRedis
    from subtitle_tasks.testing import SimulatorConfig
    from tests.support.harness import TOKEN, Harness

    scale = args.scale
    # Batches in order: the cold ones (each on a fresh fleet), then on the last fleet the
    # ones that warm its site, then the measured warm ones. Each has its own draws.
    kinds = ["cold"] * args.cold_batches + ["warming"] * args.warm_batches + ["warm"] * args.warm_measured
    draws = draw(args.shape, BATCH * len(kinds), args.seed, 5.0, scale)
    official = run_client("official", draws, unit=scale)
    settings = {**{k: repr(v * scale) for k, v in DEFAULTS.items()}, **UNSCALED}
    give_up = max(draws.jobs) + max(draws.preparing) + 120 * scale + 30
    settle = max(0.5, 2 * scale)
    ran: dict[str, list[dict[str, Any]]] = {"cold": [], "warming": [], "warm": []}
    started = time.monotonic()
    config = SimulatorConfig(token=TOKEN, rate_window=3.0 * scale)
    with LocalRedis() as server, TimedSimulator(draws, config) as sim, \
            tempfile.TemporaryDirectory(prefix="subtitle-tasks-fleet-") as tmp:
        client = redis.Redis.from_url(server.url)
        harness = None
        try:
            for b, kind in enumerate(kinds):
                if harness is None or kind == "cold":  # a fresh fleet: its own key prefix, so nothing learned
                    if harness is not None:
                        harness.close()
                    harness = Harness(server.url, sim, Path(tmp), **settings)
                    workers = [harness.worker(concurrency=args.concurrency) for _ in range(args.workers)]
                    time.sleep(3.0)  # the workers consuming before the batch is sent
                uploads = [f"fleet-{i}" for i in range(b * BATCH, (b + 1) * BATCH)]
                result = _batch(harness, client, sim, workers, uploads, give_up, settle)
                ran[kind].append(result)
                brief = figures([result], official[b * BATCH:(b + 1) * BATCH])
                print(f"[{time.strftime('%H:%M:%S')}] {kind} batch {b}: "
                      f"{json.dumps({k: v for k, v in brief.items() if k != 'official'})}", flush=True)
        finally:
            if harness is not None:
                harness.close()
            client.close()
    measured: dict[str, Any] = {}
    index = {kind: [b for b, k in enumerate(kinds) if k == kind] for kind in ran}
    for kind in ("cold", "warm"):
        if ran[kind]:
            base = [o for b in index[kind] for o in official[b * BATCH:(b + 1) * BATCH]]
            measured[kind] = {**figures(ran[kind], base), "batches": len(ran[kind])}
    if "cold" in measured and "warm" in measured:
        measured["warm"]["cpu_ratio_to_cold"] = (measured["warm"]["cpu_seconds_per_subtitle"]
                                                 / measured["cold"]["cpu_seconds_per_subtitle"])
    return {"measured": measured, "runs": ran, "settings": settings, "scale": scale, "shape": args.shape,
            "workers": args.workers, "concurrency": args.concurrency, "seconds": round(time.monotonic() - started, 1)}


SITE_B_TOKEN = "site-b-token-not-secret"


def run_fairness(server_url: str, tmp: Path, *, a_requests: int, b_requests: int, lead: float,
                 overrides: dict[str, str] | None = None, job_seconds: float = 1.0,
                 preparing_seconds: float = 0.5, workers: int = 2, concurrency: int = 2) -> dict[str, Any]:
    """Site B's requests alone, then behind ``a_requests`` on site A sent ``lead`` seconds
    before them; each site its own token and its own simulator (so its own quota). Per B
    request: seconds from ``request_subtitles`` returning to its POST reaching B's
    simulator and to its ``on_ready`` running, and how many of A's POSTs came in between."""
    import redis

    import subtitle_tasks
    from subtitle_tasks import runtime
    from subtitle_tasks.settings import load_settings
    from subtitle_tasks.testing import Simulator, SimulatorConfig
    from tests.support.callbacks import read_calls, record
    from tests.support.harness import TOKEN, Harness

    def config(token: str) -> Any:
        return SimulatorConfig(token=token, job_seconds=job_seconds, preparing_seconds=preparing_seconds)

    with Simulator(config(TOKEN)) as sim_a, Simulator(config(SITE_B_TOKEN)) as sim_b:
        sites = json.dumps({"b": {"token_env": "SITE_B_TOKEN", "base_url": sim_b.url}})
        harness = Harness(server_url, sim_a, tmp, SUBTITLE_TASKS_SITES=sites, SITE_B_TOKEN=SITE_B_TOKEN,
                          **(overrides or {}))
        # This process asks for site B too: its runtime must know the site (never its token).
        runtime.configure(load_settings({"redis_url": server_url, "broker_url": server_url, "sites": sites,
                                         "key_prefix": harness.prefix, "queue": harness.env["SUBTITLE_TASKS_QUEUE"]},
                                        environ={}))
        client = redis.Redis.from_url(server_url)

        def posts(sim: Any, upload: str | None = None) -> list[float]:
            return [r.time for r in sim.requests() if r.method == "POST" and r.status == 202
                    and (upload is None or f"/uploads/{upload}/" in r.path)]

        def ask_b(tag: str) -> dict[str, float]:
            asked, a_before = time.monotonic(), len(posts(sim_a))
            subtitle_tasks.request_subtitles(tag, "it", site="b", on_ready=record.s("ready", tag))
            give_up = asked + 300
            while time.monotonic() < give_up:
                done = [c for c in read_calls(client, harness.prefix) if c["tag"] == tag]
                if done:
                    posted = posts(sim_b, tag)[0]
                    return {"to_post": posted - asked, "to_callback": done[0]["monotonic"] - asked,
                            "a_posts_between": sum(1 for t in posts(sim_a) if t <= posted) - a_before}
                time.sleep(0.05)
            raise RuntimeError(f"site B's {tag} did not finish within 300 s")

        try:
            for _ in range(workers):
                harness.worker(concurrency=concurrency)
            time.sleep(3.0)
            alone = [ask_b(f"b-alone-{i}") for i in range(b_requests)]
            started = time.monotonic()
            for i in range(a_requests):
                subtitle_tasks.request_subtitles(f"a-{i}", "it", on_ready=record.s("ready", f"a-{i}"))
            time.sleep(lead)
            behind = [ask_b(f"b-behind-{i}") for i in range(b_requests)]
            a_posted = len(posts(sim_a))
            a_seconds = time.monotonic() - started
        finally:
            harness.close()
            client.close()
    return {"alone": alone, "behind": behind, "a_requests": a_requests, "a_posted_meanwhile": a_posted,
            "a_posts_per_second": a_posted / a_seconds, "lead": lead}


def _fmt(value: float, digits: int = 2) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:,.{digits}f}"


def table(result: dict[str, Any]) -> str:
    lines = ["| batches of 30 together | requests / subtitle, ours (official) | ratio | p95 track ready -> on_ready, "
             "ours (official) | ratio | p50, ours (official) | p95 seen by a GET | worker CPU per subtitle "
             "| callbacks |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name in ("cold", "warm"):
        f = result["measured"].get(name)
        if f is None:
            continue
        o = f["official"]
        what = "fresh fleets, first batch" if name == "cold" else "after the warming batches"
        lines.append(f"| {name} ({f['batches']} x {what}) | {_fmt(f['requests_per_subtitle'])} "
                     f"({_fmt(o['requests_per_subtitle'])}) | {_fmt(f['ratio']['requests_per_subtitle'])}x "
                     f"| {_fmt(f['p95'])} s ({_fmt(o['p95'])} s) | {_fmt(f['ratio']['p95'])}x "
                     f"| {_fmt(f['p50'])} s ({_fmt(o['p50'])} s) | {_fmt(f['seen_p95'])} s "
                     f"| {_fmt(f['cpu_seconds_per_subtitle'], 3)} s "
                     f"| {f['ready']} of {f['generations']} exactly one ready |")
    warm = result["measured"].get("warm", {})
    if "cpu_ratio_to_cold" in warm:
        lines.append(f"\nworker CPU per subtitle, warm / cold: {_fmt(warm['cpu_ratio_to_cold'])}x")
    return "\n".join(lines)


def fairness_table(fair: dict[str, Any]) -> str:
    def median(rows: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in rows) if rows else math.nan

    alone, behind = median(fair["alone"], "to_callback"), median(fair["behind"], "to_callback")
    lines = ["| site B's request | to its POST, median | to on_ready, median | A's POSTs in between, most |",
             "|---|---:|---:|---:|",
             f"| alone | {_fmt(median(fair['alone'], 'to_post'))} s | {_fmt(alone)} s | - |",
             f"| behind A's {fair['a_requests']} | {_fmt(median(fair['behind'], 'to_post'))} s | {_fmt(behind)} s "
             f"| {max(r['a_posts_between'] for r in fair['behind'])} |",
             f"\nbehind / alone: {_fmt(behind / alone)}x (goal: within 2x alone + 5 s = {_fmt(2 * alone + 5)} s); "
             f"site A meanwhile: {_fmt(fair['a_posts_per_second'])} POSTs/s"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="durations and time settings times this")
    parser.add_argument("--shape", default="wide", help="a bench.schedule shape")
    parser.add_argument("--cold-batches", type=int, default=3, help="fresh fleets, one first batch each")
    parser.add_argument("--warm-batches", type=int, default=2, help="batches that warm the site (60 generations)")
    parser.add_argument("--warm-measured", type=int, default=3, help="warm batches measured after those")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--fairness-requests", type=int, default=600,
                        help="site A's backlog for the fairness run (0: no fairness run)")
    parser.add_argument("--fairness-b", type=int, default=5, help="site B's requests, alone and behind A")
    parser.add_argument("--fairness-lead", type=float, default=10.0, help="seconds A's backlog builds before B asks")
    parser.add_argument("--skip-batches", action="store_true", help="only the fairness run")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    result: dict[str, Any] = {"measured": {}} if args.skip_batches else run(args)
    if not args.skip_batches:
        print(f"\n## Real fleet: {args.workers} workers x {args.concurrency}, {args.shape} x{args.scale}, "
              f"{result['seconds']} s\n")
        print(table(result))
    if args.fairness_requests:
        from subtitle_tasks.local_redis import LocalRedis

        defaults = {**{k: repr(v) for k, v in DEFAULTS.items()}, **UNSCALED}
        with LocalRedis() as server, tempfile.TemporaryDirectory(prefix="subtitle-tasks-fairness-") as tmp:
            fair = run_fairness(server.url, Path(tmp), a_requests=args.fairness_requests, b_requests=args.fairness_b,
                                lead=args.fairness_lead, overrides=defaults, workers=args.workers,
                                concurrency=args.concurrency)
        result["fairness"] = fair
        print(f"\n## Fairness through the fleet: site B's {args.fairness_b} requests alone, then behind "
              f"{args.fairness_requests} on site A (own tokens, own simulators, default settings)\n")
        print(fairness_table(fair))
    summary = {"benchmark": "fleet", "issue": "#16", "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "machine": {"platform": platform.platform(), "python": platform.python_version()},
               "argv": sys.argv[1:], **result}
    args.results_dir.mkdir(parents=True, exist_ok=True)
    path = args.results_dir / f"fleet-{time.strftime('%Y%m%d-%H%M%S')}.summary.json"
    path.write_text(json.dumps(summary, indent=2, default=float) + "\n")
    print(f"\nsummary: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
