"""python -m bench's table (bench/report.py), from hand-written summaries: no benchmark runs."""

from __future__ import annotations

import json

import pytest

from bench import report
from bench.report import BENCHMARKS, Row, broken_guarantees, build_rows, cells, render_table

EDGE = {"calls": 5000, "baseline_set": {"p50_ms": 0.1, "p99_ms": 0.2, "per_second": 7000.0},
        "request_subtitles": {"p50_ms": 0.25, "p99_ms": 0.5, "per_second": 3800.0}}


def _wait(wait, steps=55):
    return {"claims_until_handed_out": wait, "wait_seconds": wait, "steps_handed_out_before": 0, "claims": 2,
            "mean_busy_claim_ms": 0.5, "max_steps_per_site_per_window": steps}


FAIRNESS = {
    "benchmark": "fairness",
    "settings": {"backlog": 10000, "pace": 55, "window": 3.0, "interval": 1.0, "batch": 500},
    "results": {
        "site": {"no_backlog": {"per-site": _wait(1.0, 1), "single FIFO": _wait(1.0, 1)},
                 "backlog": {"per-site": _wait(1.0), "single FIFO": _wait(543.0)}, "wait_ratio": 1 / 543},
        "submit": {"no_backlog": {"per-site": _wait(1.0, 1), "single FIFO": _wait(1.0, 1)},
                   "backlog": {"per-site": _wait(7.0), "single FIFO": _wait(543.0)}, "wait_ratio": 7 / 543},
    },
}

OPS = {"size": 100000, "baseline_scan_s": 1.0,
       "reads_s": {"stats (fleet_stats)": 0.001, "list --state waiting --limit 50": 0.05,
                   "list --upload U": 0.25, "metrics scrape (/metrics)": 0.003}}

FANIN = {"benchmark": "fanin", "settings": {"sizes": [1, 100, 5000]},
         "results": {"baseline_hget_us": 2.0, "sizes": [
             {"joined": 1, "create_us": 40.0, "cancel_us": 40.0, "finish_us": 10.0},
             {"joined": 100, "create_us": 50.0, "cancel_us": 200.0, "finish_us": 1400.0},
             {"joined": 5000, "create_us": 300.0, "cancel_us": 5700.0, "finish_us": 19800.0}]}}


def _policy(rps, p95):
    return {"steady": {"requests_per_subtitle": rps, "p95": p95, "p50": 1.0, "p99": p95 * 1.5},
            "cold_start": {"requests_per_subtitle": rps, "p95": p95}}


SCHEDULE = {
    "benchmark": "schedule",
    "results": [
        {"shape": "narrow", "policies": {"learned": _policy(5.0, 3.0), "official": _policy(11.0, 7.0)}},
        {"shape": "wide", "policies": {"learned": _policy(9.5, 7.5), "official": _policy(14.5, 6.7),
                                       "knows the distribution": _policy(7.25, 6.5)}},
    ],
    "real": {"shape": "wide", "scale": 0.1, "generations": 200, "callbacks": {"ready": 199, "error": 0},
             "real": {"requests_per_subtitle": 9.0, "p95": 0.6},
             "simulated": {"learned": _policy(9.5, 0.63), "official": _policy(14.0, 0.67)}},
}


def _quota(plan, scenario, pct, utilisation):
    return {"plan": plan, "scenario": scenario, "pct_429": pct, "utilisation": utilisation}


QUOTA = {"configured_limit": 55, "results": [
    _quota(30, "baseline", 8.4, 1.0), _quota(30, "ours", 0.0, 1.02), _quota(30, "foreign", 1.0, 0.84),
    _quota(60, "baseline", 0.0, 0.92), _quota(60, "ours", 0.0, 0.85),
]}


def _chaos(seconds, problems):
    return {"requests": 300, "callbacks_fired": 300, "repeated_deliveries": 0, "max_posts_per_track": 1,
            "kills": {"SIGKILL a pool child": 10, "SIGTERM (warm shutdown)": 5} if problems is not None else {},
            "seconds_to_finish": seconds, "problems": problems or 0}


CHAOS = {"benchmark": "chaos", "settings": {"requests": 300, "seconds": 30.0, "workers": 3},
         "results": {"chaos": _chaos(60.0, 0), "quiet": _chaos(20.0, None), "guarantees_broken": 0}}


def _under(seconds, kills, bad=0):
    return {"requests": 300, "kills": kills, "seconds": seconds, "errors": 0,
            "requests_without_exactly_one_callback": bad, "tracks_with_more_than_one_post": 0}


RECOVERY = {"benchmark": "recovery", "settings": {"kill_every": 4.0},
            "kill_to_elsewhere": {"step_watch_seconds": [1.9, 2.0, 2.1], "p50": 2.0, "p95": 2.1,
                                  "lease_alone_seconds": [30.0]},
            "requests_under_kills": {"kills": _under(40.0, 9), "no_kills": _under(20.0, 0), "ratio": 2.0}}


def _scale(scenario, n, rss_kb, nbytes):
    return {"scenario": scenario, "n": n, "worker_rss_total_kb": rss_kb, "redis_bytes_per_waiting": nbytes}


SCALE = {"benchmark": "scale", "results": [_scale("ours", 10000, 170 * 1024, 870.0),
                                           _scale("baseline", 10000, 420 * 1024, 1535.0)]}

def _fleet(requests, p95, cpu, official_requests, official_p95, missing=0):
    return {"batches": 2, "generations": 60, "not_exactly_one_ready": missing, "requests_per_subtitle": requests,
            "p95": p95, "cpu_seconds_per_subtitle": cpu,
            "official": {"requests_per_subtitle": official_requests, "p95": official_p95}}


FLEET = {"benchmark": "fleet", "shape": "wide", "scale": 0.5,
         "measured": {"cold": _fleet(13.0, 2.8, 0.10, 14.5, 2.7), "warm": _fleet(7.0, 2.6, 0.105, 14.0, 2.9)},
         "fairness": {"a_requests": 300, "alone": [{"to_callback": 3.0}, {"to_callback": 2.0}],
                      "behind": [{"to_callback": 9.0}, {"to_callback": 13.0}]}}
BURST = {"benchmark": "burst", "settings": {"burst": 1000},
         "median": {"own queue": 0.13, "shared queue": 10.2, "no burst": 0.07}}

ALL = {"edge": EDGE, "fairness": FAIRNESS, "ops": OPS, "fanin": FANIN, "schedule": SCHEDULE, "fleet": FLEET,
       "burst": BURST, "quota": QUOTA, "chaos": CHAOS, "recovery": RECOVERY, "scale": SCALE}


def _find(rows: list[Row], benchmark: str, *words: str) -> Row:
    found = [r for r in rows if r.benchmark == benchmark and all(w in r.figure for w in words)]
    assert len(found) == 1, (benchmark, words, [r.figure for r in rows if r.benchmark == benchmark])
    return found[0]


@pytest.fixture
def rows() -> list[Row]:
    return build_rows(ALL)


def test_every_benchmark_has_rows_in_order(rows):
    assert [r.benchmark for r in rows] == sorted((r.benchmark for r in rows), key=BENCHMARKS.index)
    assert {r.benchmark for r in rows} == set(BENCHMARKS)
    assert all(r.ours is not None for r in rows)
    assert broken_guarantees(rows) == []


def test_edge_p99_ratio_against_goal(rows):
    p99 = _find(rows, "edge", "p99")
    assert (p99.ours, p99.baseline, p99.goal) == (0.5, 0.2, "≤ 3x")
    assert p99.ratio == pytest.approx(2.5)
    assert p99.met is True
    slow = build_rows({"edge": {**EDGE, "request_subtitles": {**EDGE["request_subtitles"], "p99_ms": 0.8}}},
                      benchmarks=("edge",))
    assert slow[0].met is False and slow[0].ratio == pytest.approx(4.0)
    assert not slow[0].guarantee  # a timing goal: reported, not an error
    assert broken_guarantees(slow) == []


def test_fairness_wait_bound_and_pacing_guarantee(rows):
    site, submit = _find(rows, "fairness", "site B"), _find(rows, "fairness", "submission")
    assert site.ratio == pytest.approx(1 / 543) and site.met is True
    assert submit.ours == 7.0 and submit.met is False  # > 1 + 1 + 3
    assert "≤ 5 s" in submit.goal
    pacing = _find(rows, "fairness", "pacing window")
    assert pacing.guarantee and pacing.met is True and pacing.ratio is None
    over = json.loads(json.dumps(FAIRNESS))
    over["results"]["site"]["backlog"]["per-site"]["max_steps_per_site_per_window"] = 60
    broken = broken_guarantees(build_rows({"fairness": over}, benchmarks=("fairness",)))
    assert [r.figure for r in broken] == [pacing.figure]


def test_ops_reads_in_ms_against_the_scan(rows):
    stats = _find(rows, "ops", "stats")
    assert stats.ours == pytest.approx(1.0) and stats.baseline == pytest.approx(1000.0)
    assert stats.ratio == pytest.approx(0.001) and stats.met is True
    assert _find(rows, "ops", "--upload").met is False  # 250 ms
    scrape = _find(rows, "ops", "metrics")
    assert scrape.goal == "" and scrape.met is None
    assert cells(scrape)[-1] == ""


def test_fanin_at_the_default_cap(rows):
    finish = _find(rows, "fanin", "finish", "100 joined")
    assert finish.ours == pytest.approx(1.4) and finish.ratio == pytest.approx(700.0) and finish.met is True
    above = _find(rows, "fanin", "5,000 joined")
    assert above.goal == "" and above.ratio == pytest.approx(9900.0)
    assert cells(above)[4] == "9,900x"
    no_cap = build_rows({"fanin": {**FANIN, "results": {"baseline_hget_us": 0.0, "sizes": []}}},
                        benchmarks=("fanin",))
    assert all(r.ours is None and "not in the run" in r.note for r in no_cap)


def test_schedule_each_shape_and_the_real_check(rows):
    narrow = _find(rows, "schedule", "requests per subtitle, narrow")
    assert narrow.ratio == pytest.approx(5 / 11) and narrow.met is True
    wide_p95 = _find(rows, "schedule", "p95", "wide (learned")
    assert wide_p95.ratio == pytest.approx(7.5 / 6.7) and wide_p95.met is False
    real = _find(rows, "schedule", "real processes", "requests per subtitle (vs official")
    assert real.ratio == pytest.approx(9 / 14) and real.met is False
    missing = _find(rows, "schedule", "without a ready callback")
    assert missing.ours == 1 and missing.met is False and not missing.guarantee
    bound = _find(rows, "schedule", "bound for ready-time-only schedules", "wide")
    assert bound.ratio == pytest.approx(0.5) and bound.met is None  # no goal: a yardstick
    assert not [r for r in rows if "bound for" in r.figure and "narrow" in r.figure]  # only where it ran
    plain = build_rows({"schedule": {**SCHEDULE, "real": None}}, benchmarks=("schedule",))
    assert len(plain) == 5 and not any("real" in r.figure for r in plain)


def test_fleet_cold_and_warm_batches_against_the_official_client(rows):
    cold = _find(rows, "fleet", "fresh fleets", "requests per subtitle")
    assert cold.ratio == pytest.approx(13 / 14.5) and cold.goal == "≤ 0.9x" and cold.met is True
    cold_p95 = _find(rows, "fleet", "fresh fleets", "p95")
    assert cold_p95.ratio == pytest.approx(2.8 / 2.7) and cold_p95.met is False
    warm = _find(rows, "fleet", "after 60", "requests per subtitle")
    assert warm.ratio == pytest.approx(0.5) and warm.met is True
    cpu = _find(rows, "fleet", "worker CPU")
    assert cpu.ratio == pytest.approx(1.05) and cpu.met is True
    missing = build_rows({"fleet": {**FLEET, "measured": {"cold": _fleet(13.0, 2.8, 0.1, 14.5, 2.7, missing=1)}}},
                         benchmarks=("fleet",))
    lost = _find(missing, "fleet", "without exactly one")
    assert lost.ours == 1 and lost.met is False
    assert not [r for r in missing if "CPU" in r.figure]  # no warm batches: nothing to compare
    fair = _find(rows, "fleet", "site B")
    assert (fair.ours, fair.baseline) == (11.0, 2.5) and fair.met is False  # 11 s > 2 x 2.5 + 5


def test_burst_own_queue_and_shared_queue_against_no_burst(rows):
    own = _find(rows, "burst", "own step queue")
    shared = _find(rows, "burst", "shared queue")
    assert own.ratio == pytest.approx(0.13 / 0.07) and shared.ratio == pytest.approx(10.2 / 0.07)


def test_quota_shares_and_a_zero_baseline(rows):
    p30 = _find(rows, "quota", "429 share, plan 30")
    assert (p30.ours, p30.baseline, p30.ratio, p30.met) == (0.0, 8.4, 0.0, True)
    p60 = _find(rows, "quota", "429 share, plan 60")
    assert p60.ratio is None and p60.met is True
    assert _find(rows, "quota", "foreign", "plan 30").met is False  # 1.0 %
    assert _find(rows, "quota", "allowed share", "plan 60").met is False  # 85 %
    assert _find(rows, "quota", "allowed share", "plan 30").ours == pytest.approx(102.0)
    worse = build_rows({"quota": {"results": [_quota(60, "baseline", 0.0, 1.0), _quota(60, "ours", 2.0, 1.0)]}},
                       benchmarks=("quota",))
    assert cells(worse[0])[4] == "n/a (baseline 0)"


def test_chaos_seconds_and_guarantees(rows):
    seconds = _find(rows, "chaos", "seconds")
    assert seconds.ratio == pytest.approx(3.0) and "15 kills" in seconds.figure
    broken = _find(rows, "chaos", "guarantees broken")
    assert broken.guarantee and broken.met is True and broken.ours == 0
    bad = json.loads(json.dumps(CHAOS))
    bad["results"]["chaos"]["problems"] = 2
    assert [r.ours for r in broken_guarantees(build_rows({"chaos": bad}, benchmarks=("chaos",)))] == [2]


def test_recovery_quantiles_and_violations(rows):
    p50, p95 = _find(rows, "recovery", "p50"), _find(rows, "recovery", "p95")
    assert (p50.ours, p50.baseline) == (2.0, 30.0) and p50.ratio == pytest.approx(2 / 30)
    assert "3 kills" in p50.figure and "1 kill)" in p50.figure
    assert p95.ours == 2.1 and p95.baseline == 30.0 and p95.met is True and p95.goal == "≤ 5 s"
    load = _find(rows, "recovery", "seconds for 300 requests")
    assert load.ratio == pytest.approx(2.0) and "9 kills" in load.figure
    assert _find(rows, "recovery", "violations").met is True
    bad = json.loads(json.dumps(RECOVERY))
    bad["requests_under_kills"]["no_kills"]["tracks_with_more_than_one_post"] = 1  # even the baseline run counts
    assert len(broken_guarantees(build_rows({"recovery": bad}, benchmarks=("recovery",)))) == 1
    slow = json.loads(json.dumps(RECOVERY))
    slow["kill_to_elsewhere"]["p95"] = 6.0
    assert _find(build_rows({"recovery": slow}, benchmarks=("recovery",)), "recovery", "p95").met is False


def test_scale_bytes_and_rss(rows):
    nbytes = _find(rows, "scale", "Redis bytes", "N=10,000")
    assert nbytes.ratio == pytest.approx(870 / 1535) and nbytes.met is True and nbytes.unit == "B"
    rss = _find(rows, "scale", "RSS")
    assert (rss.ours, rss.baseline) == (170.0, 420.0) and rss.met is True
    half = build_rows({"scale": {"results": [_scale("ours", 100000, 300 * 1024, 1100.0)]}}, benchmarks=("scale",))
    assert [r.met for r in half] == [False, False] and all(r.baseline is None and r.ratio is None for r in half)
    assert cells(half[0])[3] == "n/a"  # a baseline was due: n/a, not blank
    foreign = _find(build_rows({"quota": QUOTA}, benchmarks=("quota",)), "quota", "foreign", "plan 30")
    assert cells(foreign)[3] == ""  # no baseline for this figure


def test_missing_summary_shows_na_with_the_reason():
    rows = build_rows({"edge": EDGE}, {"chaos": "exit 1, no summary written; log bench/results/chaos-x.log"})
    assert {r.benchmark for r in rows} == set(BENCHMARKS)
    chaos = [r for r in rows if r.benchmark == "chaos"]
    assert chaos and all(r.ours is None and r.met is None for r in chaos)
    assert cells(chaos[0])[2] == "n/a: exit 1, no summary written; log bench/results/chaos-x.log"
    assert cells(chaos[1])[-1] == "n/a"  # a guarantee with no figure: neither met nor broken
    assert broken_guarantees(rows) == []
    ops = [r for r in rows if r.benchmark == "ops"]
    assert all(cells(r)[2] == "n/a: no summary" for r in ops)


def test_unreadable_summary_is_na_not_a_crash():
    rows = build_rows({"recovery": {"benchmark": "recovery"}}, benchmarks=("recovery",))
    assert rows and all(r.ours is None and "not readable" in r.note for r in rows)


def test_render_table_one_row_per_figure(rows):
    table = render_table(rows).splitlines()
    assert table[0] == "| benchmark | figure | ours | baseline (same run) | ratio | goal | met? |"
    assert len(table) == 2 + len(rows)
    assert all(line.count(" | ") == 6 for line in table[2:])
    p99 = next(line for line in table if line.startswith("| edge |") and "p99" in line)
    assert "| 0.5 ms | 0.2 ms | 2.50x | ≤ 3x | yes |" in p99
    assert json.loads(json.dumps([r.as_dict() for r in rows]))  # the rows are JSON as they are


@pytest.mark.parametrize(("value", "unit", "text"), [
    (None, "ms", "n/a"), (0.0, "%", "0 %"), (1535.0, "B", "1,535 B"), (7.5, "s", "7.50 s"),
    (0.000646, "ms", "0.000646 ms"), (12.34, "MB", "12.3 MB"), (3, "", "3"),
])
def test_fmt_value(value, unit, text):
    assert report.fmt_value(value, unit) == text


def test_runner_plan_summary_lookup_and_failures(tmp_path):
    """The runner's pieces that need no benchmark: its plan, the summary it picks, what counts as failed."""
    import os

    from bench.__main__ import PLAN, failure_reason, find_summary

    assert [b.name for b in PLAN] == list(BENCHMARKS)
    assert all(b.full == () or b.name == "schedule" for b in PLAN)  # --full: the modules' own defaults
    old, new, other = (tmp_path / f"{n}.summary.json" for n in ("ops-1", "ops-2", "opsx-3"))
    for path, mtime in ((old, 1000.0), (new, 2000.0), (other, 3000.0)):
        path.write_text("{}")
        os.utime(path, (mtime, mtime))
    assert find_summary("ops", 1500.0, tmp_path) == new
    assert find_summary("ops", 2500.0, tmp_path) is None  # nothing written during this run
    done = {"status": "finished", "exit_code": 0, "wall_seconds": 3.0, "summary": "x.summary.json"}
    assert failure_reason(done) is None
    assert failure_reason({**done, "exit_code": 1}) == "exit 1"
    assert failure_reason({**done, "exit_code": 1, "summary": None}) == "exit 1, no summary written"
    assert failure_reason({**done, "summary": None}) == "exit 0 but no summary written"
    assert failure_reason({**done, "status": "timed out", "exit_code": -15}) == "timed out after 3 s"
