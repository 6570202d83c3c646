"""The headline figures of every benchmark as rows of one table: summaries in, rows out.

Nothing here runs a benchmark. ``python -m bench`` (bench/__main__.py) runs them and
passes the summaries they wrote to :func:`build_rows`; tests/test_bench_table.py passes
hand-written ones. A benchmark without a summary (failed, timed out, not run) still
gets its rows, with "n/a" and the reason.

Each row: | benchmark | figure | ours | baseline (same run) | ratio | goal | met? |.
A row marked ``guarantee`` is a correctness property (a count that must be 0 or a
bound that must hold): ``python -m bench`` exits non-zero when one is broken. Other
goals (timings, sizes) only show "no" in the table.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

# The order of the table (fast benchmarks first, which is also the order they run in).
BENCHMARKS = ("edge", "fairness", "ops", "fanin", "schedule", "fleet", "burst", "quota", "chaos", "recovery",
              "scale")

# (ours, baseline, ratio) -> met? (None: cannot tell)
Check = Callable[[float, "float | None", "float | None"], "bool | None"]


@dataclass
class Row:
    benchmark: str
    figure: str
    ours: float | None
    baseline: float | None = None
    unit: str = ""
    ratio: float | None = None
    goal: str = ""
    met: bool | None = None
    guarantee: bool = False
    note: str = ""  # why "ours" is n/a, or a caveat on the figure
    compared: bool = False  # the row has a baseline (which may be missing: n/a)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_AUTO = object()
_NO_BASELINE = object()


def _num(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    value = float(value)
    return None if math.isnan(value) else value


def row(benchmark: str, figure: str, ours: Any, baseline: Any = _NO_BASELINE, *, unit: str = "", goal: str = "",
        check: Check | None = None, guarantee: bool = False, ratio: Any = _AUTO, note: str = "") -> Row:
    """A row; ratio is ours / baseline unless given, met? comes from ``check``."""
    compared = baseline is not _NO_BASELINE
    o, b = _num(ours), _num(baseline) if compared else None
    r = (o / b if o is not None and b else None) if ratio is _AUTO else _num(ratio)
    met = check(o, b, r) if check is not None and o is not None else None
    return Row(benchmark, figure, o, b, unit, r, goal, None if met is None else bool(met), guarantee, note, compared)


def at_most(limit: float) -> Check:
    return lambda ours, baseline, ratio: ours <= limit


def below(limit: float) -> Check:
    return lambda ours, baseline, ratio: ours < limit


def at_least(limit: float) -> Check:
    return lambda ours, baseline, ratio: ours >= limit


def ratio_at_most(limit: float) -> Check:
    return lambda ours, baseline, ratio: None if ratio is None else ratio <= limit


def both_zero(ours: float, baseline: float | None, ratio: float | None) -> bool:
    """A count of broken guarantees: none in our run and none in the baseline run."""
    return ours == 0 and not baseline


# -- one builder per benchmark: its summary (as the module writes it) -> rows ---------------

def edge_rows(s: Mapping[str, Any]) -> list[Row]:
    base, ours = s["baseline_set"], s["request_subtitles"]
    calls = s.get("calls") or s.get("settings", {}).get("calls")
    where = f", {calls:,} calls" if calls else ""
    return [
        row("edge", f"request_subtitles p99{where} (vs bare redis-py SET p99)", ours["p99_ms"], base["p99_ms"],
            unit="ms", goal="≤ 3x", check=ratio_at_most(3.0)),
        row("edge", "request_subtitles p50 (vs SET p50)", ours["p50_ms"], base["p50_ms"], unit="ms"),
    ]


FAIRNESS_LABELS = {
    "site": "site B's request behind a backlog on site A",
    "submit": "a submission behind a backlog of polls, same site",
    "poll": "a poll behind a backlog of submissions, same site",
}


def fairness_rows(s: Mapping[str, Any]) -> list[Row]:
    settings = s["settings"]
    window, interval, pace = settings["window"], settings["interval"], settings["pace"]
    rows = []
    for scenario, result in s["results"].items():
        ours = result["backlog"]["per-site"]["wait_seconds"]
        base = result["backlog"]["single FIFO"]["wait_seconds"]
        quiet = result["no_backlog"]["per-site"]["wait_seconds"]
        label = FAIRNESS_LABELS.get(scenario, scenario)
        figure = f"wait of {label}, backlog {settings['backlog']:,} (per-site vs single FIFO)"
        if quiet is None:
            rows.append(row("fairness", figure, ours, base, unit="s", goal="within interval + window of no backlog",
                            note="not handed out even without a backlog"))
            continue
        bound = quiet + interval + window
        r = row("fairness", figure, ours, base, unit="s", check=at_most(bound),
                goal=f"≤ {bound:g} s (no backlog {quiet:g} + interval {interval:g} + window {window:g})")
        if ours is None:  # never handed out within the run: the goal is missed, not unknown
            r.met, r.note = False, "not handed out"
        rows.append(r)
    most = [(r["backlog"]["per-site"]["max_steps_per_site_per_window"],
             r["backlog"]["single FIFO"]["max_steps_per_site_per_window"]) for r in s["results"].values()]
    if most:
        rows.append(row("fairness", "most steps of one site in one pacing window (per-site vs single FIFO)",
                        max(m[0] for m in most), max(m[1] for m in most), ratio=None,
                        goal=f"≤ pace {pace} (guarantee)", check=at_most(pace), guarantee=True))
    return rows


OPS_GOAL_SIZE = 100_000
OPS_GOAL_MS = 200.0  # list and stats under 0.2 s with 100,000 in flight


def ops_rows(s: Mapping[str, Any]) -> list[Row]:
    size = s.get("size") or s.get("settings", {}).get("size")
    base_ms = s["baseline_scan_s"] * 1000
    rows = []
    for read, seconds in s["reads_s"].items():
        goal, check, note = "", None, ""
        if read.startswith(("stats", "list")):
            goal, check = f"< {OPS_GOAL_MS:g} ms at {OPS_GOAL_SIZE:,}", below(OPS_GOAL_MS)
            if size != OPS_GOAL_SIZE:
                note = f"run at {size:,}, goal set at {OPS_GOAL_SIZE:,}"
        rows.append(row("ops", f"{read}, {size:,} in flight (vs SCAN of every request key)", seconds * 1000,
                        base_ms, unit="ms", goal=goal, check=check, note=note))
    return rows


FANIN_CAP = 100  # settings.max_joins' default
FANIN_GOAL_MS = 5.0  # README: "the default keeps every call well under 5 ms"


def fanin_rows(s: Mapping[str, Any]) -> list[Row]:
    results = s["results"]
    hget_us = results["baseline_hget_us"]
    by_size = {r["joined"]: r for r in results["sizes"]}
    note = "HGET under 1 µs: ratio against 1 µs" if hget_us < 1 else ""
    rows = []
    at_cap = by_size.get(FANIN_CAP)
    for key, what in (("finish_us", "finish (notify all)"), ("cancel_us", "cancel one"), ("create_us", "join")):
        figure = f"{what}, {FANIN_CAP} joined (the default cap), Redis time (vs one HGET)"
        if at_cap is None:
            rows.append(row("fanin", figure, None, goal=f"< {FANIN_GOAL_MS:g} ms",
                            note=f"{FANIN_CAP} joined not in the run's sizes"))
            continue
        rows.append(row("fanin", figure, at_cap[key] / 1000, hget_us / 1000, unit="ms",
                        ratio=at_cap[key] / max(hget_us, 1.0), goal=f"< {FANIN_GOAL_MS:g} ms",
                        check=below(FANIN_GOAL_MS), note=note))
    largest = max(by_size, default=None)
    if largest is not None and largest != FANIN_CAP:
        us = by_size[largest]["finish_us"]
        rows.append(row("fanin", f"finish (notify all), {largest:,} joined (above the cap), Redis time (vs one HGET)",
                        us / 1000, hget_us / 1000, unit="ms", ratio=us / max(hget_us, 1.0), note=note))
    return rows


def schedule_rows(s: Mapping[str, Any]) -> list[Row]:
    rows = []
    for result in s["results"]:
        shape, policies = result["shape"], result["policies"]
        learned = policies.get("learned", {}).get("steady", {})
        official = policies.get("official", {}).get("steady", {})
        rows.append(row("schedule", f"requests per subtitle, {shape} (learned vs official client)",
                        learned.get("requests_per_subtitle"), official.get("requests_per_subtitle"),
                        goal="≤ 0.5x", check=ratio_at_most(0.5)))
        rows.append(row("schedule", f"p95 delay track ready -> seen, {shape} (learned vs official client)",
                        learned.get("p95"), official.get("p95"), unit="s", goal="≤ 1x", check=ratio_at_most(1.0)))
        known = policies.get("knows the distribution", {}).get("steady")
        if known:  # a bound, not a policy: the least a schedule that learns only the ready time could spend
            rows.append(row("schedule", f"requests per subtitle, {shape} (bound for ready-time-only schedules: "
                            "the distribution known in advance, at the official p95, vs official client)",
                            known.get("requests_per_subtitle"), official.get("requests_per_subtitle")))
    real = s.get("real")
    if real:
        r, sim = real["real"], real["simulated"]
        label = f"{real['shape']} x{real['scale']:g}"
        official, learned = sim["official"]["steady"], sim["learned"]["steady"]
        rows.append(row("schedule", f"real processes ({label}): requests per subtitle (vs official, simulated "
                        "on the same draws)", r["requests_per_subtitle"], official["requests_per_subtitle"],
                        goal="≤ 0.5x", check=ratio_at_most(0.5)))
        rows.append(row("schedule", f"real processes ({label}): p95 delay (vs official, simulated on the same draws)",
                        r["p95"], official["p95"], unit="s", goal="≤ 1x", check=ratio_at_most(1.0)))
        rows.append(row("schedule", f"real processes ({label}): requests per subtitle (vs learned, simulated)",
                        r["requests_per_subtitle"], learned["requests_per_subtitle"]))
        missing = real["generations"] - real["callbacks"]["ready"]
        rows.append(row("schedule", f"real processes ({label}): requests without a ready callback, of "
                        f"{real['generations']:,}", missing, goal="= 0", check=at_most(0), ratio=None))
    return rows


FLEET_GOALS = {"cold": 0.9, "warm": 0.5}  # requests per subtitle against the official client (issue #16)
FLEET_CPU_GOAL = 1.1  # a warm site's worker CPU per subtitle against a fresh one's


def fleet_rows(s: Mapping[str, Any]) -> list[Row]:
    measured, label = s["measured"], f"{s['shape']} x{s['scale']:g}"
    rows = []
    for kind, what in (("cold", "fresh fleets' first batch"), ("warm", "after 60 generations")):
        f = measured.get(kind)
        if f is None:
            continue
        o, n = f["official"], f"{f['batches']} x 30 together"
        goal = FLEET_GOALS[kind]
        rows.append(row("fleet", f"real workers ({label}), {what}, {n}: requests per subtitle (vs official "
                        "client on the same durations)", f["requests_per_subtitle"], o["requests_per_subtitle"],
                        goal=f"≤ {goal:g}x", check=ratio_at_most(goal)))
        rows.append(row("fleet", f"real workers ({label}), {what}: p95 track ready -> on_ready ran (vs official "
                        "client's GET seeing it)", f["p95"], o["p95"], unit="s", goal="≤ 1x",
                        check=ratio_at_most(1.0)))
        rows.append(row("fleet", f"real workers ({label}), {what}: requests without exactly one ready callback, "
                        f"of {f['generations']}", f["not_exactly_one_ready"], goal="= 0", check=at_most(0),
                        ratio=None))
    if "cold" in measured and "warm" in measured:
        rows.append(row("fleet", f"real workers ({label}): worker CPU per subtitle, warm (vs cold)",
                        measured["warm"]["cpu_seconds_per_subtitle"], measured["cold"]["cpu_seconds_per_subtitle"],
                        unit="s", goal=f"≤ {FLEET_CPU_GOAL:g}x", check=ratio_at_most(FLEET_CPU_GOAL)))
    fair = s.get("fairness")
    if fair:
        alone = statistics.median(r["to_callback"] for r in fair["alone"])
        behind = statistics.median(r["to_callback"] for r in fair["behind"])
        rows.append(row("fleet", f"real workers: site B's request to on_ready behind {fair['a_requests']:,} on "
                        "site A (vs B alone)", behind, alone, unit="s", goal="≤ 2x alone + 5 s",
                        check=lambda ours, base, ratio: base is not None and ours <= 2 * base + 5))
    return rows


def burst_rows(s: Mapping[str, Any]) -> list[Row]:
    median, n = s["median"], s["settings"]["burst"]
    return [row("burst", f"request -> POST behind {n:,} of the app's own tasks, own step queue (vs no burst)",
                median["own queue"], median["no burst"], unit="s"),
            row("burst", f"request -> POST behind {n:,} of the app's own tasks, one shared queue as before "
                "(vs no burst)", median["shared queue"], median["no burst"], unit="s")]


def quota_rows(s: Mapping[str, Any]) -> list[Row]:
    by_plan: dict[int, dict[str, Mapping[str, Any]]] = {}
    for result in s["results"]:
        by_plan.setdefault(result["plan"], {})[result["scenario"]] = result
    configured = s.get("configured_limit", 55)
    rows = []
    for plan, scenarios in by_plan.items():
        ours, base, foreign = scenarios.get("ours", {}), scenarios.get("baseline", {}), scenarios.get("foreign")
        rows.append(row("quota", f"429 share, plan {plan} per 3 s (vs fixed {configured} per 3 s, no headers)",
                        ours.get("pct_429"), base.get("pct_429"), unit="%", goal="≤ 0.5 %", check=at_most(0.5)))
        rows.append(row("quota", f"allowed share used with a backlog, plan {plan} (baseline: of the plan)",
                        _pct(ours.get("utilisation")), _pct(base.get("utilisation")), unit="%", goal="≥ 90 %",
                        check=at_least(90.0)))
        if foreign is not None:
            rows.append(row("quota", f"429 share with a foreign tool on the token, plan {plan}",
                            foreign.get("pct_429"), unit="%", goal="≤ 0.5 %", check=at_most(0.5)))
    return rows


def _pct(fraction: Any) -> float | None:
    return None if fraction is None else 100.0 * fraction


def chaos_rows(s: Mapping[str, Any]) -> list[Row]:
    r, settings = s["results"], s["settings"]
    chaos, quiet = r["chaos"], r["quiet"]
    kills = sum(chaos.get("kills", {}).values())
    return [
        row("chaos", f"seconds to the last callback, {settings['requests']:,} requests, {kills} kills over "
            f"{settings['seconds']:g} s and API faults (vs quiet run)", chaos["seconds_to_finish"],
            quiet["seconds_to_finish"], unit="s", note=f"never under the {settings['seconds']:g} s of kills"),
        row("chaos", "guarantees broken: requests without one right callback, tracks with > 1 POST "
            "(chaos vs quiet run)", chaos["problems"], quiet["problems"], ratio=None, goal="= 0 (guarantee)",
            check=both_zero, guarantee=True),
    ]


def _quantile(values: list[float], q: float) -> float | None:
    """As bench/recovery.py takes its p50 and p95."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


RECOVERY_GOAL_P95 = 5.0


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def recovery_rows(s: Mapping[str, Any]) -> list[Row]:
    k, u, settings = s["kill_to_elsewhere"], s["requests_under_kills"], s["settings"]
    watched, leased = k["step_watch_seconds"], k["lease_alone_seconds"]
    n = len(watched)
    lease_p50 = statistics.median(leased) if leased else None
    killed, quiet = u["kills"], u["no_kills"]
    violations = ("requests_without_exactly_one_callback", "tracks_with_more_than_one_post")
    return [
        row("recovery", f"SIGKILL to the step running elsewhere, p50 of {_count(n, 'kill')} (vs recovery by "
            f"lease alone, {_count(len(leased), 'kill')})", k.get("p50", _quantile(watched, 0.5)), lease_p50, unit="s"),
        row("recovery", f"SIGKILL to the step running elsewhere, p95 of {n} kills (vs lease alone)",
            k.get("p95", _quantile(watched, 0.95)), _quantile(leased, 0.95), unit="s",
            goal=f"≤ {RECOVERY_GOAL_P95:g} s", check=at_most(RECOVERY_GOAL_P95)),
        row("recovery", f"seconds for {killed['requests']:,} requests with a worker SIGKILLed every "
            f"{settings.get('kill_every', 4.0):g} s, {_count(killed['kills'], 'kill')} (vs no kills)",
            killed["seconds"], quiet["seconds"], unit="s"),
        row("recovery", "guarantee violations: requests without exactly one callback + tracks with > 1 POST "
            "(kills vs no kills)", sum(killed[v] for v in violations), sum(quiet[v] for v in violations),
            ratio=None, goal="= 0 (guarantee)", check=both_zero, guarantee=True),
    ]


SCALE_GOAL_BYTES = 1024  # bench/scale.py goals()
SCALE_GOAL_RSS_MB = 256


def scale_rows(s: Mapping[str, Any]) -> list[Row]:
    by_n: dict[int, dict[str, Mapping[str, Any]]] = {}
    for result in s["results"]:
        by_n.setdefault(result["n"], {})[result["scenario"]] = result
    rows = []
    for n, scenarios in sorted(by_n.items()):
        ours, base = scenarios.get("ours", {}), scenarios.get("baseline", {})
        rows.append(row("scale", f"Redis bytes per waiting request, N={n:,} (vs Celery countdown retries)",
                        ours.get("redis_bytes_per_waiting"), base.get("redis_bytes_per_waiting"), unit="B",
                        goal=f"< {SCALE_GOAL_BYTES:,} B", check=below(SCALE_GOAL_BYTES)))
        rows.append(row("scale", f"worker RSS, main + pool children, N={n:,} (vs Celery countdown retries)",
                        _mb(ours.get("worker_rss_total_kb")), _mb(base.get("worker_rss_total_kb")), unit="MB",
                        goal=f"< {SCALE_GOAL_RSS_MB} MB", check=below(SCALE_GOAL_RSS_MB)))
    return rows


def _mb(kb: Any) -> float | None:
    return None if kb is None else kb / 1024.0


BUILDERS: dict[str, Callable[[Mapping[str, Any]], list[Row]]] = {
    "edge": edge_rows, "fairness": fairness_rows, "ops": ops_rows, "fanin": fanin_rows,
    "schedule": schedule_rows, "fleet": fleet_rows, "burst": burst_rows, "quota": quota_rows,
    "chaos": chaos_rows, "recovery": recovery_rows, "scale": scale_rows,
}

# What each benchmark's rows are when there is no summary to read: (figure, unit, goal, guarantee).
HEADLINES: dict[str, list[tuple[str, str, str, bool]]] = {
    "edge": [("request_subtitles p99 (vs bare redis-py SET p99)", "ms", "≤ 3x", False)],
    "fairness": [("wait of a late step behind a backlog (per-site vs single FIFO)", "s",
                  "≤ no backlog + interval + window", False),
                 ("most steps of one site in one pacing window", "", "≤ pace (guarantee)", True)],
    "ops": [("stats and list reads (vs SCAN of every request key)", "ms", f"< {OPS_GOAL_MS:g} ms at 100,000",
             False)],
    "fanin": [(f"finish (notify all), {FANIN_CAP} joined, Redis time (vs one HGET)", "ms",
               f"< {FANIN_GOAL_MS:g} ms", False)],
    "schedule": [("requests per subtitle, each shape (learned vs official client)", "", "≤ 0.5x", False),
                 ("p95 delay track ready -> seen, each shape (learned vs official client)", "s", "≤ 1x", False)],
    "fleet": [("real workers, batches of 30: requests per subtitle, cold and warm (vs official client)", "",
               "≤ 0.9x cold, ≤ 0.5x warm", False),
              ("real workers, batches of 30: p95 track ready -> on_ready (vs official client)", "s", "≤ 1x", False)],
    "burst": [("request -> POST behind 1,000 of the app's own tasks (vs no burst)", "s", "", False)],
    "quota": [("429 share (vs fixed 55 per 3 s, no headers)", "%", "≤ 0.5 %", False)],
    "chaos": [("seconds to the last callback under kills and faults (vs quiet run)", "s", "", False),
              ("guarantees broken (chaos vs quiet run)", "", "= 0 (guarantee)", True)],
    "recovery": [("SIGKILL to the step running elsewhere, p50 and p95 (vs lease alone)", "s",
                  f"p95 ≤ {RECOVERY_GOAL_P95:g} s", False),
                 ("guarantee violations, requests under kills (vs no kills)", "", "= 0 (guarantee)", True)],
    "scale": [("Redis bytes per waiting request (vs Celery countdown retries)", "B", f"< {SCALE_GOAL_BYTES:,} B",
               False),
              ("worker RSS (vs Celery countdown retries)", "MB", f"< {SCALE_GOAL_RSS_MB} MB", False)],
}


def missing_rows(benchmark: str, reason: str) -> list[Row]:
    return [Row(benchmark, figure, None, unit=unit, goal=goal, guarantee=guarantee, note=reason)
            for figure, unit, goal, guarantee in HEADLINES.get(benchmark, [("headline figures", "", "", False)])]


def build_rows(summaries: Mapping[str, Mapping[str, Any] | None], reasons: Mapping[str, str] | None = None,
               benchmarks: tuple[str, ...] = BENCHMARKS) -> list[Row]:
    """Every benchmark's rows, in table order; ``reasons`` says why a summary is missing."""
    reasons = reasons or {}
    rows: list[Row] = []
    for name in benchmarks:
        summary = summaries.get(name)
        if summary is None:
            rows += missing_rows(name, reasons.get(name, "no summary"))
            continue
        try:
            rows += BUILDERS[name](summary)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, ZeroDivisionError) as exc:
            rows += missing_rows(name, f"summary not readable ({type(exc).__name__}: {exc})")
    return rows


def broken_guarantees(rows: list[Row]) -> list[Row]:
    return [r for r in rows if r.guarantee and r.met is False]


# -- rendering ------------------------------------------------------------------------------

def fmt_value(value: float | None, unit: str = "") -> str:
    if value is None:
        return "n/a"
    magnitude = abs(value)
    if value == int(value) and (magnitude >= 10 or unit in ("", "B")):
        text = f"{int(value):,}"
    elif magnitude >= 100:
        text = f"{value:,.0f}"
    elif magnitude >= 10:
        text = f"{value:.1f}"
    elif magnitude >= 1:
        text = f"{value:.2f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}" if unit else text


def fmt_ratio(r: Row) -> str:
    if r.ratio is not None:
        if r.ratio >= 100:
            return f"{r.ratio:,.0f}x"
        return f"{r.ratio:.2f}x" if r.ratio >= 0.1 else f"{r.ratio:.2g}x"
    if r.ours is not None and r.baseline == 0 and r.ours != 0:
        return "n/a (baseline 0)"
    return ""


def fmt_met(r: Row) -> str:
    if not r.goal:
        return ""
    if r.met is None:
        return "n/a"
    if r.met:
        return "yes"
    return "NO (guarantee broken)" if r.guarantee else "no"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def cells(r: Row) -> list[str]:
    """The seven cells of a row, as printed."""
    if r.ours is None:
        ours = f"n/a: {r.note}" if r.note else "n/a"
        figure = r.figure
    else:
        ours = fmt_value(r.ours, r.unit)
        figure = f"{r.figure}; {r.note}" if r.note else r.figure
    baseline = fmt_value(r.baseline, r.unit) if r.compared or r.ours is None else ""
    return [r.benchmark, figure, ours, baseline, fmt_ratio(r), r.goal, fmt_met(r)]


HEADER = ("benchmark", "figure", "ours", "baseline (same run)", "ratio", "goal", "met?")


def render_table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|---|---|---:|---:|---:|---|---|"]
    lines += ["| " + " | ".join(_cell(c) for c in cells(r)) + " |" for r in rows]
    return "\n".join(lines)
