"""Every benchmark, one table.

    python -m bench                      # the quick plan (14 minutes on 2 cores)
    python -m bench --full               # every benchmark with its own defaults (roughly 50 minutes)
    python -m bench --only edge,ops      # a subset (the others show as n/a, "not run")
    python -m bench --list               # the plan: what runs, with which arguments

Each benchmark runs in its own process (``python -m bench.<name> <args>``), so one
that crashes or hangs (it is stopped after its timeout, with whatever it started)
does not stop the rest. Its
output goes to ``bench/results/<name>-<timestamp>.log``; the summary it wrote during
this run (``bench/results/<name>-*.summary.json``) is read for the table. The table
(bench/report.py: the headline figures, ours next to the same run's baseline, the
ratio and the goal) is printed and written, with every run's exit code, wall time and
summary path, to ``bench/results/bench-<timestamp>.summary.json``.

Exits 1 if a benchmark failed (non-zero exit, timeout, no summary) or a guarantee was
broken (a count that must be 0); a timing goal not met is a "no" in the table only.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.report import BENCHMARKS, broken_guarantees, build_rows, render_table

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Bench:
    name: str
    quick: tuple[str, ...]  # arguments in the quick plan
    full: tuple[str, ...]  # arguments in the full plan (the module's defaults, plus any opt-in part)
    quick_timeout: float  # seconds before the run is stopped
    full_timeout: float


# Fast ones first: a long run that is interrupted still has them.
PLAN: tuple[Bench, ...] = (
    Bench("edge", (), (), 300, 900),  # 5,000 calls, ~20 s
    Bench("fairness", (), (), 300, 900),  # backlog 10,000, simulated clock, ~15 s
    Bench("ops", (), (), 300, 900),  # 100,000 in flight (the goal's size), ~15 s
    Bench("fanin", (), (), 300, 900),  # 1, 100, 1,000, 5,000 joined, ~10 s
    Bench("schedule", ("--real", "--real-generations", "200", "--real-warmup", "40"), ("--real",), 600, 1200),
    # batches of 30 through two real workers: half the durations, 2 cold and 2 warm batches,
    # then site B behind 300 on site A (~8 min)
    Bench("fleet", ("--scale", "0.5", "--cold-batches", "2", "--warm-measured", "2", "--fairness-requests", "300",
                    "--fairness-b", "3", "--fairness-lead", "8"), (), 1200, 2400),
    Bench("burst", ("--runs", "2"), (), 600, 900),  # a step behind 1,000 of the app's tasks, ~1.5 min
    Bench("quota", ("--plans", "30", "--seconds", "12"), (), 600, 1200),
    Bench("chaos", ("--requests", "300", "--seconds", "30"), (), 900, 2400),
    Bench("recovery", ("--trials", "10", "--lease-trials", "1", "--requests", "300"), (), 900, 2400),
    Bench("scale", ("--sizes", "10000", "--idle-seconds", "10"), (), 900, 3600),
)
assert tuple(b.name for b in PLAN) == BENCHMARKS


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "cpus": os.cpu_count()}
    with contextlib.suppress(OSError):
        info["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["mem_total_kb"] = int(line.split()[1])
    for package in ("celery", "kombu", "redis"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            info[package] = metadata.version(package)
    return info


def find_summary(name: str, since: float, results_dir: Path = RESULTS_DIR) -> Path | None:
    """The newest ``<name>-*.summary.json`` written at or after ``since`` (wall clock)."""
    fresh = [p for p in results_dir.glob(f"{name}-*.summary.json") if p.stat().st_mtime >= since - 1.0]
    return max(fresh, key=lambda p: p.stat().st_mtime) if fresh else None


def _descendants(pid: int) -> dict[int, bytes]:
    """Every process below ``pid`` (its cmdline by pid), from /proc: the harness starts each
    Celery worker in a session of its own, out of reach of a signal to the benchmark's group."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
    found: dict[int, bytes] = {}
    todo = [pid]
    while todo:
        parent = todo.pop()
        for child, ppid in parents.items():
            if ppid == parent and child not in found:
                with contextlib.suppress(OSError):
                    found[child] = Path(f"/proc/{child}/cmdline").read_bytes()
                    todo.append(child)
    return found


def _stop(proc: subprocess.Popen) -> None:
    """Stop a benchmark and everything it started.

    SIGINT first, so that it cleans up as after Ctrl-C (its context managers stop its
    workers, Redis and simulator); then SIGTERM and SIGKILL to its process group; then
    SIGKILL to any process it started that is still there (same pid, same command line).
    """
    started = _descendants(proc.pid)
    steps = ((lambda: os.kill(proc.pid, signal.SIGINT), 30.0),
             (lambda: os.killpg(proc.pid, signal.SIGTERM), 10.0),
             (lambda: os.killpg(proc.pid, signal.SIGKILL), 10.0))
    for send, grace in steps:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            send()
        try:
            proc.wait(grace)
            break
        except subprocess.TimeoutExpired:
            continue
    time.sleep(1.0)
    for pid, cmdline in started.items():
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/cmdline").read_bytes() == cmdline:
                os.kill(pid, signal.SIGKILL)


def run_bench(bench: Bench, args: tuple[str, ...], timeout: float, echo: bool) -> dict[str, Any]:
    """One benchmark in its own process (and process group); output to its log file."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_path = RESULTS_DIR / f"{bench.name}-{stamp}.log"
    cmd = [sys.executable, "-m", f"bench.{bench.name}", *args]
    started_wall, started = time.time(), time.monotonic()
    log(f"{bench.name}: {shlex.join(['python', '-m', f'bench.{bench.name}', *args])} (log {_rel(log_path)})")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)

    def copy_output() -> None:
        assert proc.stdout is not None
        with log_path.open("w", encoding="utf-8") as out:
            out.write(f"$ {shlex.join(cmd)}\n")
            for raw in proc.stdout:
                line = raw.decode("utf-8", errors="replace")
                out.write(line)
                out.flush()
                if echo:
                    sys.stdout.write(f"  {bench.name} | {line}")
                    sys.stdout.flush()

    reader = threading.Thread(target=copy_output, daemon=True)
    reader.start()
    status = "finished"
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        status = "timed out"
        log(f"{bench.name}: still running after {timeout:.0f} s, stopping it")
        _stop(proc)
    except KeyboardInterrupt:
        status = "interrupted"
        log(f"{bench.name}: interrupted, stopping it")
        _stop(proc)
    reader.join(10)  # a grandchild still holding the pipe must not hold up the rest
    wall = time.monotonic() - started
    summary = find_summary(bench.name, started_wall)
    result = {"args": list(args), "command": shlex.join(cmd), "status": status, "exit_code": proc.returncode,
              "wall_seconds": round(wall, 1), "log": _rel(log_path), "summary": _rel(summary) if summary else None}
    log(f"{bench.name}: {status}, exit {proc.returncode} after {wall:.0f} s; "
        f"summary {result['summary'] or 'none'}")
    return result


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def failure_reason(run: dict[str, Any]) -> str | None:
    """Why a run counts as failed, or None."""
    if run["status"] != "finished":
        return f"{run['status']} after {run['wall_seconds']:.0f} s"
    if run["exit_code"] != 0:
        return f"exit {run['exit_code']}" + ("" if run["summary"] else ", no summary written")
    if not run["summary"]:
        return "exit 0 but no summary written"
    return None


def load(path: str | None) -> dict[str, Any] | None:
    if not path:
        return None
    try:
        data = json.loads((ROOT / path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0],
                                     epilog="benchmarks: " + ", ".join(BENCHMARKS))
    parser.add_argument("--full", action="store_true", help="each benchmark with its own defaults (roughly 35 minutes)")
    parser.add_argument("--only", default="", help="comma-separated benchmarks to run, e.g. edge,ops")
    parser.add_argument("--list", action="store_true", help="print the plan and exit")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds before a benchmark is stopped (default: per benchmark, see --list)")
    parser.add_argument("-v", "--verbose", action="store_true", help="echo each benchmark's output as it runs")
    args = parser.parse_args(argv)
    args.names = [n.strip() for n in args.only.split(",") if n.strip()] or list(BENCHMARKS)
    unknown = sorted(set(args.names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)} (known: {', '.join(BENCHMARKS)})")
    return args


def plan_table(plan: list[Bench], full: bool, timeout: float | None) -> str:
    lines = [f"{'full' if full else 'quick'} plan:", "", "| benchmark | command | timeout |", "|---|---|---:|"]
    for b in plan:
        args = b.full if full else b.quick
        seconds = timeout or (b.full_timeout if full else b.quick_timeout)
        lines.append(f"| {b.name} | `{shlex.join(['python', '-m', f'bench.{b.name}', *args])}` | {seconds:.0f} s |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mode = "full" if args.full else "quick"
    plan = [b for b in PLAN if b.name in args.names]
    if args.list:
        print(plan_table(plan, args.full, args.timeout))
        return 0

    # SIGTERM (e.g. from `timeout`) stops the running benchmark's process group like Ctrl-C, and the
    # table of what finished is still printed and written.
    signal.signal(signal.SIGTERM, _interrupt)
    # Also when started with SIGINT ignored (`python -m bench &`): the benchmarks inherit
    # the default, and _stop's SIGINT reaches their cleanup.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    began, began_at = time.monotonic(), time.strftime("%Y-%m-%dT%H:%M:%S%z")
    info = machine()
    log(f"python -m bench, {mode} plan: {', '.join(b.name for b in plan)}")
    runs: dict[str, dict[str, Any]] = {}
    interrupted = False
    for bench in plan:
        if interrupted:
            runs[bench.name] = {"status": "not run (interrupted)"}
            continue
        bench_args = bench.full if args.full else bench.quick
        timeout = args.timeout or (bench.full_timeout if args.full else bench.quick_timeout)
        runs[bench.name] = run_bench(bench, bench_args, timeout, args.verbose)
        interrupted = runs[bench.name]["status"] == "interrupted"

    summaries: dict[str, dict[str, Any] | None] = {}
    reasons: dict[str, str] = {}
    failed: dict[str, str] = {}
    for name in BENCHMARKS:
        run = runs.get(name)
        if run is None:
            reasons[name] = "not run (--only)"
            continue
        if "exit_code" not in run:
            reasons[name] = run["status"]
            continue
        summaries[name] = load(run["summary"])
        why = failure_reason(run)
        if run["summary"] and summaries[name] is None:
            why = f"summary {run['summary']} not readable"
        if why:
            failed[name] = why
            reasons[name] = f"{why}; log {run['log']}"

    rows = build_rows(summaries, reasons)
    broken = broken_guarantees(rows)
    total = time.monotonic() - began
    print(f"\n## python -m bench ({mode}): {len(runs)} of {len(BENCHMARKS)} benchmarks, {total / 60:.1f} min\n")
    print(render_table(rows))
    print()
    for name, run in runs.items():
        if "exit_code" in run:
            print(f"- {name}: exit {run['exit_code']}, {run['wall_seconds']:.0f} s, "
                  f"summary {run['summary'] or 'none'}, log {run['log']}")
        else:
            print(f"- {name}: {run['status']}")
    for name, why in failed.items():
        print(f"FAILED {name}: {why}")
    for r in broken:
        print(f"GUARANTEE BROKEN {r.benchmark}: {r.figure}: {r.ours:g}")

    out = RESULTS_DIR / f"bench-{stamp}.summary.json"
    out.write_text(json.dumps({
        "benchmark": "bench", "issue": "#10 item 6", "time": began_at, "mode": mode, "machine": info,
        "settings": {"only": args.names if args.only else None, "timeout": args.timeout,
                     "plan": {b.name: list(b.full if args.full else b.quick) for b in plan}},
        "runs": runs, "failed": failed,
        "guarantees_broken": [r.as_dict() for r in broken],
        "rows": [r.as_dict() for r in rows],
        "seconds_total": round(total, 1),
    }, indent=2) + "\n")
    print(f"\nsummary: {_rel(out)}")
    print(f"total wall time {total:.0f} s")
    return 1 if failed or broken or interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
