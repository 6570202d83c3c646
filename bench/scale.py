"""What N waiting requests cost: subtitle-tasks' schedule vs plain Celery countdown retries.

    python -m bench.scale                   # N = 10,000 and 100,000 (about 14 minutes)
    python -m bench.scale --sizes 1000 --idle-seconds 10   # smoke run (about 2 minutes)

For each N and each scenario, on a fresh redis-server:

* ``ours``: a real ``celery -A subtitle_tasks worker --concurrency 2`` (prefork) and
  the DatoCMS simulator (a subprocess) whose jobs never finish. N requests are
  enqueued with ``subtitle_tasks.request_subtitles``; the worker submits them
  (GET tracks + POST) and each generation then waits in phase ``job`` as one entry
  of ``P:due`` plus its hashes.
* ``baseline``: a real ``celery -A bench.baseline_app worker --concurrency 2``; N
  tasks are sent, each runs once and ``raise self.retry(countdown=...)``, so the
  worker ends up holding N ETA messages.

Only the first ``--real-steps`` requests (default 5,000) take their first step
through the worker; the others are fast-forwarded to the same waiting state (ours:
the store call a successful submit makes; baseline: the task sent with the
countdown its retry would have used), which keeps N = 100,000 inside the time budget.

Once all N wait, nothing is due for the rest of the run (poll interval and countdown
are both ``--wait-seconds``), and over an idle window we read: the worker's RSS
(main + pool children, from /proc), its CPU, Redis ``used_memory`` growth per
waiting request, and ``MEMORY USAGE`` per key type. Results are printed as a
markdown table (with ours/baseline ratios) and written to
``bench/results/scale-<timestamp>.json``, the headline figures and the per-key
breakdown also to ``bench/results/scale-<timestamp>.summary.json``. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PREFIX = "subtitle_tasks"          # the package's default key prefix
OUR_QUEUE = "subtitle_tasks"        # the dedicated app's default queue
BASELINE_QUEUE = "bench_baseline"
BASELINE_COUNTER = "bench:first_runs"
BASELINE_TASK = "bench.baseline.poll"
TOKEN = "bench-token-not-secret"
LANGUAGE = "it-IT"
UNLIMITED = 1_000_000_000           # rate limit for the simulator and the client: never throttle

WORKER_FLAGS = ["--pool", "prefork", "--concurrency", "2", "--loglevel", "WARNING",
                "--without-gossip", "--without-mingle", "--without-heartbeat"]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class BenchError(RuntimeError):
    pass


# --------------------------------------------------------------------------- /proc


def children_of(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                kids += [int(p) for p in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
    except OSError:
        pass
    return kids


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children_of(p)
    return out


def _status_kb(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """utime + stime of a live process, in seconds."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = raw[raw.rindex(")") + 2:].split()  # after "pid (comm) "
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat(5)


def memory_snapshot(pid: int) -> dict[str, Any]:
    pids = tree(pid)
    return {
        "pids": pids,
        "rss_main_kb": _status_kb(pid, "VmRSS"),
        "rss_total_kb": sum(_status_kb(p, "VmRSS") for p in pids),
        "pss_total_kb": sum(pss_kb(p) for p in pids),
        "hwm_main_kb": _status_kb(pid, "VmHWM"),
        "rss_children_kb": [_status_kb(p, "VmRSS") for p in pids[1:]],
    }


def cpu_snapshot(pid: int) -> tuple[float, list[int]]:
    pids = tree(pid)
    return sum(cpu_seconds(p) for p in pids), pids


# --------------------------------------------------------------------------- processes


class Spawned:
    """A subprocess we started, in its own session, with its output in a log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(args, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid = self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            raise BenchError(f"{self.name} exited with {self.process.returncode}:\n{self.tail()}")

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL for it and every descendant still there (all by pid)."""
        if not self.alive():
            return
        descendants = tree(self.pid)[1:]
        try:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for pid in descendants:  # pool children normally exit with their parent
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def wait_for(what: str, check: Callable[[], Any], timeout: float, interval: float = 0.5,
             progress: Callable[[], str] | None = None, watch: list[Spawned] = ()) -> Any:
    deadline = time.monotonic() + timeout
    next_report = time.monotonic() + 10
    while True:
        for proc in watch:
            proc.check_alive()
        result = check()
        if result:
            return result
        now = time.monotonic()
        if now > deadline:
            extra = f" ({progress()})" if progress else ""
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}{extra}")
        if progress and now >= next_report:
            log(f"  waiting for {what}: {progress()}")
            next_report = now + 10
        time.sleep(interval)


def start_worker(app: str, env: dict[str, str], log_dir: Path, broker_url: str, extra: list[str] = ()) -> Spawned:
    args = [sys.executable, "-m", "celery", "-A", app, "worker", *WORKER_FLAGS,
            "--hostname", f"bench-{uuid.uuid4().hex[:6]}@%h", *extra]
    worker = Spawned("worker", args, env, log_dir)
    from celery import Celery

    pinger = Celery("bench-ping", broker=broker_url, set_as_current=False)
    try:
        wait_for("the worker to answer a ping", lambda: pinger.control.ping(timeout=1.0), 60, interval=0.2,
                 watch=[worker])
        wait_for("the pool children", lambda: len(tree(worker.pid)) >= 3, 30, interval=0.2, watch=[worker])
    finally:
        pinger.close()
    return worker


def start_simulator(env: dict[str, str], log_dir: Path) -> tuple[Spawned, str]:
    from subtitle_tasks.local_redis import free_port

    port = free_port()
    args = [sys.executable, "-m", "subtitle_tasks.testing.simulator", "--port", str(port),
            "--job-seconds", "1000000", "--preparing-seconds", "0", "--rate-limit", str(UNLIMITED)]
    sim = Spawned("simulator", args, env, log_dir)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            with urllib.request.urlopen(f"{url}/_simulator/state", timeout=2) as reply:
                return reply.status == 200
        except OSError:
            return False

    wait_for("the simulator", up, 30, interval=0.1, watch=[sim])
    return sim, url


def simulator_jobs(url: str) -> dict[str, int]:
    with urllib.request.urlopen(f"{url}/_simulator/state", timeout=60) as reply:
        state = json.load(reply)
    return {"jobs": state["jobs"], "requests": state["request_counts"]}


# --------------------------------------------------------------------------- Redis


def used_memory(client: redis.Redis) -> dict[str, int]:
    info = client.info("memory")
    out = {k: int(info[k]) for k in ("used_memory", "used_memory_dataset", "used_memory_rss",
                                     "used_memory_overhead", "used_memory_scripts", "mem_clients_normal")}
    out["connected_clients"] = int(client.info("clients")["connected_clients"])
    return out


def command_calls(client: redis.Redis) -> dict[str, int]:
    return {name.removeprefix("cmdstat_"): int(stats["calls"]) for name, stats in client.info("commandstats").items()}


def redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def key_census(client: redis.Redis, limit_examples: int = 3) -> dict[str, dict[str, Any]]:
    """Keys grouped by shape (long hex ids and numbers replaced), with counts and examples."""
    groups: dict[str, dict[str, Any]] = {}
    for raw in client.scan_iter(count=10_000):
        key = raw.decode(errors="replace")
        shape = re.sub(r"[0-9a-f]{32}", "<id>", key)
        shape = re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "<uuid>", shape)
        group = groups.setdefault(shape, {"count": 0, "examples": []})
        group["count"] += 1
        if len(group["examples"]) < limit_examples:
            group["examples"].append(key)
    return groups


def memory_usage(client: redis.Redis, key: str) -> dict[str, Any]:
    """Exact MEMORY USAGE (SAMPLES 0), encoding and size of one key."""
    kind = client.type(key).decode()
    size = {"hash": client.hlen, "zset": client.zcard, "list": client.llen, "set": client.scard}.get(
        kind, lambda _k: 1)(key)
    return {
        "type": kind,
        "encoding": (client.object("encoding", key) or b"?").decode() if kind != "none" else None,
        "elements": size,
        "bytes": int(client.memory_usage(key, samples=0) or 0),
    }


def sample_keys(client: redis.Redis, keys: list[str]) -> dict[str, Any]:
    sizes = [int(client.memory_usage(k, samples=0) or 0) for k in keys]
    sizes = [s for s in sizes if s]
    if not sizes:
        return {"samples": 0}
    first = keys[0]
    fields = client.hgetall(first) if client.type(first) == b"hash" else {}
    return {
        "samples": len(sizes),
        "mean_bytes": sum(sizes) / len(sizes),
        "min_bytes": min(sizes),
        "max_bytes": max(sizes),
        "encoding": (client.object("encoding", first) or b"?").decode(),
        "example_key": first,
        "example_fields": {k.decode(): v.decode(errors="replace") for k, v in fields.items()},
        "example_payload_bytes": sum(len(k) + len(v) for k, v in fields.items()),
    }


# --------------------------------------------------------------------------- scenarios


def callbacks(args: argparse.Namespace, i: int) -> dict[str, Any]:
    """With --callbacks: a typical on_ready / on_error pair (one-argument signatures)."""
    if not args.callbacks:
        return {}
    from celery import signature

    return {"on_ready": signature("myproject.media.tasks.publish_subtitles", args=(i,)),
            "on_error": signature("myproject.media.tasks.alert_editors", args=(i,))}


class Scenario:
    """One fresh Redis (+ simulator) + worker; subclasses enqueue and say when all N wait."""

    name = "?"

    def __init__(self, n: int, args: argparse.Namespace, log_dir: Path):
        self.n = n
        self.args = args
        self.log_dir = log_dir / f"{self.name}-{n}"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.redis_server = None
        self.client: redis.Redis | None = None
        self.worker: Spawned | None = None
        self.others: list[Spawned] = []
        self.result: dict[str, Any] = {"scenario": self.name, "n": n}

    # hooks
    def start_helpers(self, env: dict[str, str]) -> dict[str, str]:
        return env

    def worker_app(self) -> str:
        raise NotImplementedError

    def enqueue(self) -> None:
        """Enqueue N requests (timed); the worker is not running."""
        raise NotImplementedError

    def all_waiting(self) -> bool:
        raise NotImplementedError

    def progress(self) -> str:
        return ""

    def verify(self) -> dict[str, Any]:
        return {}

    def memory_breakdown(self) -> dict[str, Any]:
        return {}

    # the run
    @property
    def real(self) -> int:
        """How many of the N take their first step for real (the rest are fast-forwarded)."""
        return self.n if self.args.real_steps is None else min(self.n, self.args.real_steps)

    def run(self) -> dict[str, Any]:
        from subtitle_tasks.local_redis import LocalRedis

        self.result["real_first_steps"] = self.real
        try:
            (self.log_dir / "redis").mkdir(exist_ok=True)
            self.redis_server = LocalRedis(data_dir=str(self.log_dir / "redis")).start()
            self.client = redis.Redis.from_url(self.redis_server.url)
            self.result["redis_version"] = self.client.info("server")["redis_version"]
            env = {
                **os.environ,
                "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                "CELERY_BROKER_URL": self.redis_server.url,
            }
            env = self.start_helpers(env)

            # "Empty": Redis with an idle worker connected (its connections, queue bindings
            # and loaded scripts are not part of what a waiting request costs).
            log(f"{self.name} N={self.n}: empty reference")
            self.worker = start_worker(self.worker_app(), env, self.log_dir, self.redis_server.url)
            time.sleep(2)
            self.result["empty"] = {"redis": used_memory(self.client), "worker": memory_snapshot(self.worker.pid)}
            # Enqueue with no worker running: the enqueue time is the caller's cost alone, and
            # fast-forwarded entries are never seen half-made by a dispatcher.
            self.worker.stop()
            self.worker = None

            log(f"{self.name} N={self.n}: enqueueing ({self.real:,} will take their first step for real)")
            started = time.monotonic()
            self.enqueue()
            self.result["enqueue_seconds"] = time.monotonic() - started
            started = time.monotonic()
            self.fast_forward()
            self.result["fast_forward_seconds"] = time.monotonic() - started
            log(f"{self.name} N={self.n}: enqueued in {self.result['enqueue_seconds']:.1f}s, fast-forwarded "
                f"{self.n - self.real:,} in {self.result['fast_forward_seconds']:.1f}s; starting worker")

            self.worker = start_worker(self.worker_app(), env, self.log_dir, self.redis_server.url)
            started = time.monotonic()
            cpu_start, _ = cpu_snapshot(self.worker.pid)
            watch = [self.worker, *self.others]
            wait_for(f"all {self.n} requests to be waiting", self.all_waiting,
                     self.args.ramp_timeout(self.n, self.real), interval=1.0, progress=self.progress, watch=watch)
            self.result["seconds_to_all_waiting"] = time.monotonic() - started
            cpu_ramp, _ = cpu_snapshot(self.worker.pid)
            self.result["worker_cpu_seconds_to_all_waiting"] = cpu_ramp - cpu_start
            self.result["peak_worker_main_rss_kb"] = memory_snapshot(self.worker.pid)["hwm_main_kb"]
            log(f"{self.name} N={self.n}: all waiting {self.result['seconds_to_all_waiting']:.1f}s after worker start")
            self.result["verify"] = self.verify()

            time.sleep(self.args.settle)
            self.measure_idle(watch)
            self.result["breakdown"] = self.memory_breakdown()
            self.result["census"] = key_census(self.client)
            return self.result
        finally:
            self.close()

    def fast_forward(self) -> None:
        pass

    def measure_idle(self, watch: list[Spawned]) -> None:
        assert self.worker and self.client
        window = self.args.idle_seconds
        log(f"{self.name} N={self.n}: idle window {window:.0f}s")
        cpu0, pids0 = cpu_snapshot(self.worker.pid)
        per_pid0 = {p: cpu_seconds(p) for p in pids0}
        rcpu0 = redis_cpu(self.client)
        calls0 = command_calls(self.client)
        t0 = time.monotonic()
        time.sleep(window)
        for proc in watch:
            proc.check_alive()
        cpu1, pids1 = cpu_snapshot(self.worker.pid)
        per_pid = {p: cpu_seconds(p) - per_pid0.get(p, 0.0) for p in pids1}
        rcpu1 = redis_cpu(self.client)
        calls1 = command_calls(self.client)
        elapsed = time.monotonic() - t0
        if pids0 != pids1:
            log(f"  warning: worker processes changed during the window ({pids0} -> {pids1})")
        mem = memory_snapshot(self.worker.pid)
        redis_mem = used_memory(self.client)
        empty = self.result["empty"]["redis"]
        self.result["idle"] = {
            "window_seconds": elapsed,
            "worker": mem,
            "worker_cpu_seconds": cpu1 - cpu0,
            "worker_cpu_percent": 100.0 * (cpu1 - cpu0) / elapsed,
            "worker_cpu_seconds_per_pid": per_pid,  # main process first
            "redis_commands": {k: v - calls0.get(k, 0) for k, v in calls1.items() if v != calls0.get(k, 0)},
            "redis_cpu_percent": 100.0 * (rcpu1 - rcpu0) / elapsed,
            "redis": redis_mem,
            "redis_bytes_per_waiting": (redis_mem["used_memory"] - empty["used_memory"]) / self.n,
            # the same without client connection buffers (a busy worker holds more connections)
            "redis_bytes_per_waiting_excl_clients": (
                (redis_mem["used_memory"] - redis_mem["mem_clients_normal"])
                - (empty["used_memory"] - empty["mem_clients_normal"])) / self.n,
            "redis_dataset_bytes_per_waiting":
                (redis_mem["used_memory_dataset"] - empty["used_memory_dataset"]) / self.n,
            "redis_rss_bytes_per_waiting": (redis_mem["used_memory_rss"] - empty["used_memory_rss"]) / self.n,
            "dbsize": self.client.dbsize(),
        }

    def close(self) -> None:
        for proc in [self.worker, *self.others]:
            if proc is not None:
                try:
                    proc.stop()
                except Exception as exc:  # keep cleaning up
                    log(f"  could not stop {proc.name}: {exc}")
        if self.client is not None:
            self.client.close()
        if self.redis_server is not None:
            self.redis_server.stop()


class Ours(Scenario):
    name = "ours"

    def start_helpers(self, env: dict[str, str]) -> dict[str, str]:
        sim, self.sim_url = start_simulator(env, self.log_dir)
        self.others.append(sim)
        wait = str(self.args.wait_seconds)
        self.settings_env = {
            "SUBTITLE_TASKS_REDIS_URL": self.redis_server.url,
            "DATOCMS_API_TOKEN": TOKEN,
            "DATOCMS_BASE_URL": self.sim_url,
            "SUBTITLE_TASKS_POLL_INITIAL": wait,
            "SUBTITLE_TASKS_POLL_MAX": wait,
            "SUBTITLE_TASKS_RATE_LIMIT": str(UNLIMITED),
        }
        return {**env, **self.settings_env}

    def worker_app(self) -> str:
        return "subtitle_tasks"

    def _settings(self):
        import subtitle_tasks

        return subtitle_tasks.load_settings({
            "redis_url": self.redis_server.url, "broker_url": self.redis_server.url,
            "poll_initial": self.args.wait_seconds, "poll_max": self.args.wait_seconds, "rate_limit": UNLIMITED,
        }, environ={})

    def enqueue(self) -> None:
        import subtitle_tasks
        from subtitle_tasks import runtime

        settings = self._settings()
        runtime.configure(settings)
        step = max(1, self.n // self.args.samples)
        self.sample_requests: list[str] = []
        self.sample_generations: list[str] = []
        self.to_fast_forward: list[str] = []
        try:
            for i in range(self.n):
                handle = subtitle_tasks.request_subtitles(f"bench-{i}", LANGUAGE, **callbacks(self.args, i))
                if i % step == 0:
                    self.sample_requests.append(handle.id)
                    self.sample_generations.append(handle.generation_id)
                if i >= self.real:
                    self.to_fast_forward.append(handle.generation_id)
        finally:
            runtime.configure(settings).close()  # drop this process's connection pool

    def fast_forward(self) -> None:
        """Write what a successful submit writes (pipeline._submit), for the requests past ``real``.

        Same store call, same fields: ``posted``/``known_tracks`` as the pipeline leaves them
        (empty), phase ``job`` with a simulator-style job id, the body type, counters reset,
        and the first poll due after the jittered ``poll_initial`` delay. ``memory_breakdown``
        reports real and fast-forwarded generation hashes separately to show they match.
        """
        if not self.to_fast_forward:
            return
        from subtitle_tasks.backoff import capped_exponential
        from subtitle_tasks.runtime import Runtime

        settings = self._settings()
        rt = Runtime(settings)
        try:
            store = rt.store
            for offset, gid in enumerate(self.to_fast_forward):
                # One call where the pipeline makes two (the pre-POST mark, then the result):
                # the fields land in the same order, so the hash is byte-for-byte alike.
                store.advance(gid, capped_exponential(0, settings.poll_initial, settings.poll_max),
                              posted_at=None, known_tracks=(), phase="job", job_id=str(self.real + offset + 1),
                              body_type="upload_track", attempts=0, errors=0)
        finally:
            rt.close()
        self.to_fast_forward = []

    def _due_soon(self) -> tuple[int, int, int]:
        """(entries in P:due, entries due before the earliest first poll could be, queue length)."""
        now = float(self.client.time()[0])
        pipe = self.client.pipeline(transaction=False)
        pipe.zcard(f"{PREFIX}:due")
        # A waiting first poll is due >= wait_seconds / 2 ahead (equal jitter); submits,
        # claims and leases are due within `lease` (60 s).
        pipe.zcount(f"{PREFIX}:due", "-inf", now + self.args.wait_seconds / 4)
        pipe.llen(OUR_QUEUE)
        return tuple(pipe.execute())

    def all_waiting(self) -> bool:
        total, soon, queued = self._due_soon()
        return total == self.n and soon == 0 and queued == 0

    def progress(self) -> str:
        total, soon, queued = self._due_soon()
        return f"{total - soon}/{self.n} waiting, {soon} not yet submitted, {queued} tasks queued"

    def verify(self) -> dict[str, Any]:
        """Every generation in phase ``job``; the simulator accepted exactly ``real`` POSTs."""
        gids = [g.decode() for g in self.client.zrange(f"{PREFIX}:due", 0, -1)]
        phases: Counter[str] = Counter()
        for start in range(0, len(gids), 5000):
            pipe = self.client.pipeline(transaction=False)
            for gid in gids[start:start + 5000]:
                pipe.hget(f"{PREFIX}:gen:{gid}", "phase")
            phases.update((p or b"<missing>").decode() for p in pipe.execute())
        sim = simulator_jobs(self.sim_url)
        out = {"phases": dict(phases), "simulator": sim}
        if phases != Counter({"job": self.n}):
            raise BenchError(f"expected {self.n} generations in phase job, got {dict(phases)}")
        if sim["jobs"]["total"] != self.real:
            raise BenchError(f"expected {self.real} simulator jobs, got {sim['jobs']}")
        return out

    def memory_breakdown(self) -> dict[str, Any]:
        c, n = self.client, self.n
        step = max(1, n // self.args.samples)
        # sample i is request number i * step: real when i * step < self.real
        real_gens = [g for i, g in enumerate(self.sample_generations) if i * step < self.real]
        ff_gens = [g for i, g in enumerate(self.sample_generations) if i * step >= self.real]
        req = sample_keys(c, [f"{PREFIX}:req:{r}" for r in self.sample_requests])
        gen = sample_keys(c, [f"{PREFIX}:gen:{g}" for g in self.sample_generations])
        gen_real = sample_keys(c, [f"{PREFIX}:gen:{g}" for g in real_gens]) if real_gens else {"samples": 0}
        gen_ff = sample_keys(c, [f"{PREFIX}:gen:{g}" for g in ff_gens]) if ff_gens else {"samples": 0}
        active = memory_usage(c, f"{PREFIX}:active")
        due = memory_usage(c, f"{PREFIX}:due")
        parts = {
            "P:req:{id} hash": req.get("mean_bytes", 0.0),
            "P:gen:{id} hash": gen.get("mean_bytes", 0.0),
            "P:active entry": active["bytes"] / n,
            "P:due entry": due["bytes"] / n,
        }
        return {"per_waiting_request": parts, "req": req, "gen": gen, "gen_real_submit": gen_real,
                "gen_fast_forwarded": gen_ff, "active": active, "due": due}


class Baseline(Scenario):
    name = "baseline"

    def start_helpers(self, env: dict[str, str]) -> dict[str, str]:
        return {**env, "BENCH_COUNTDOWN": str(self.args.wait_seconds), "BENCH_COUNTER_KEY": BASELINE_COUNTER}

    def worker_app(self) -> str:
        return "bench.baseline_app"

    def enqueue(self) -> None:
        """``real`` plain tasks (run once, then retry); the rest are sent as the retry would
        send them: the same task with a countdown (their first run is skipped)."""
        from celery import Celery

        app = Celery("bench-client", broker=self.redis_server.url, set_as_current=False)
        try:
            with app.producer_or_acquire() as producer:
                for i in range(self.n):
                    options = {} if i < self.real else {"countdown": self.args.wait_seconds}
                    links = callbacks(self.args, i)
                    if links:  # the conventional way to chain follow-ups: link / link_error
                        options.update(link=links["on_ready"], link_error=links["on_error"])
                    app.send_task(BASELINE_TASK, args=[uuid.uuid4().hex], producer=producer,
                                  queue=BASELINE_QUEUE, **options)
        finally:
            app.close()

    def _state(self) -> tuple[int, int, int]:
        pipe = self.client.pipeline(transaction=False)
        pipe.get(BASELINE_COUNTER)
        pipe.llen(BASELINE_QUEUE)
        pipe.hlen("unacked")
        first_runs, queued, unacked = pipe.execute()
        return int(first_runs or 0), queued, unacked

    def all_waiting(self) -> bool:
        # Every real task ran once and retried; every ETA message left the queue and sits
        # unacknowledged in the worker, waiting for its ETA.
        first_runs, queued, unacked = self._state()
        return first_runs == self.real and queued == 0 and unacked == self.n

    def progress(self) -> str:
        first_runs, queued, unacked = self._state()
        return (f"{first_runs}/{self.real} ran once, {queued} queued, "
                f"{unacked}/{self.n} held by the worker (unacked)")

    def verify(self) -> dict[str, Any]:
        first_runs, queued, unacked = self._state()
        return {"first_runs": first_runs, "queued": queued, "unacked": unacked}

    def memory_breakdown(self) -> dict[str, Any]:
        c, n = self.client, self.n
        unacked = memory_usage(c, "unacked")
        index = memory_usage(c, "unacked_index")
        example = next((value for _, value in c.hscan_iter("unacked", count=100)), b"")
        parts = {"unacked hash entry (full message)": unacked["bytes"] / n,
                 "unacked_index entry": index["bytes"] / n}
        return {"per_waiting_request": parts, "unacked": unacked, "unacked_index": index,
                "example_message_bytes": len(example or b"")}


SCENARIOS = {"ours": Ours, "baseline": Baseline}


# --------------------------------------------------------------------------- report


def _mb(kb: float) -> float:
    return kb / 1024.0


def row_values(r: dict[str, Any]) -> dict[str, float]:
    idle = r["idle"]
    return {
        "rss": _mb(idle["worker"]["rss_total_kb"]),
        "pss": _mb(idle["worker"]["pss_total_kb"]),
        "main": _mb(idle["worker"]["rss_main_kb"]),
        "bytes": idle["redis_bytes_per_waiting"],
        "bytes_nc": idle["redis_bytes_per_waiting_excl_clients"],
        "cpu": idle["worker_cpu_percent"],
        "rcpu": idle["redis_cpu_percent"],
        "enq": r["enqueue_seconds"],
        "ff": r["fast_forward_seconds"],
        "ramp": r["seconds_to_all_waiting"],
        "ramp_cpu": r["worker_cpu_seconds_to_all_waiting"],
    }


COLUMNS = [
    ("rss", "worker RSS MB (main+children)", "{:.1f}"),
    ("pss", "worker PSS MB", "{:.1f}"),
    ("main", "main proc RSS MB", "{:.1f}"),
    ("bytes", "Redis B / waiting request", "{:.0f}"),
    ("bytes_nc", "same, excl. client buffers", "{:.0f}"),
    ("cpu", "worker CPU % idle", "{:.2f}"),
    ("rcpu", "redis CPU % idle", "{:.2f}"),
    ("enq", "enqueue s", "{:.1f}"),
    ("ff", "fast-forward s", "{:.1f}"),
    ("ramp", "s from worker start to all waiting", "{:.1f}"),
    ("ramp_cpu", "worker CPU s until all waiting", "{:.1f}"),
]


NO_RATIO = {"ff"}  # fast-forwarding is bench machinery, not a figure of either design


def table(results: list[dict[str, Any]]) -> str:
    head = ["scenario", "N", "real first steps"] + [title for _, title, _ in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    by_n: dict[int, dict[str, dict[str, float]]] = {}
    for r in results:
        values = row_values(r)
        by_n.setdefault(r["n"], {})[r["scenario"]] = values
        lines.append("| " + " | ".join([r["scenario"], f"{r['n']:,}", f"{r['real_first_steps']:,}"]
                                      + [fmt.format(values[k]) for k, _, fmt in COLUMNS]) + " |")
    for n, rows in by_n.items():
        if "ours" in rows and "baseline" in rows:
            cells = []
            for key, _, _ in COLUMNS:
                base = rows["baseline"][key]
                cells.append(f"{rows['ours'][key] / base:.2f}x" if base and key not in NO_RATIO else "")
            lines.append("| " + " | ".join(["**ours / baseline**", f"{n:,}", "", *cells]) + " |")
    return "\n".join(lines)


def breakdown_table(results: list[dict[str, Any]]) -> str:
    lines = ["| scenario | N | where the bytes go (per waiting request) | bytes |", "|---|---|---|---|"]
    for r in results:
        parts = r.get("breakdown", {}).get("per_waiting_request", {})
        total = r["idle"]["redis_bytes_per_waiting"]
        for part, value in parts.items():
            lines.append(f"| {r['scenario']} | {r['n']:,} | {part} | {value:.0f} |")
        lines.append(f"| {r['scenario']} | {r['n']:,} | rest (allocator, dict/expiry tables, other keys) "
                     f"| {total - sum(parts.values()):.0f} |")
    return "\n".join(lines)


def goals(results: list[dict[str, Any]]) -> list[str]:
    out = []
    for r in results:
        if r["scenario"] != "ours":
            continue
        v = row_values(r)
        out.append(f"N={r['n']:,}: worker RSS {v['rss']:.1f} MB "
                   f"(goal < 256: {'met' if v['rss'] < 256 else 'NOT met'}), "
                   f"Redis {v['bytes']:.0f} B/request (goal < 1024: {'met' if v['bytes'] < 1024 else 'NOT met'})")
    return out


def headline(r: dict[str, Any]) -> dict[str, Any]:
    """One scenario's figures for the summary file (the full dump keeps the rest)."""
    idle = r["idle"]
    return {
        "scenario": r["scenario"], "n": r["n"], "real_first_steps": r["real_first_steps"],
        "enqueue_seconds": r["enqueue_seconds"], "seconds_to_all_waiting": r["seconds_to_all_waiting"],
        "worker_rss_total_kb": idle["worker"]["rss_total_kb"], "worker_pss_total_kb": idle["worker"]["pss_total_kb"],
        "worker_main_rss_kb": idle["worker"]["rss_main_kb"], "worker_cpu_percent_idle": idle["worker_cpu_percent"],
        "redis_cpu_percent_idle": idle["redis_cpu_percent"],
        "redis_bytes_per_waiting": idle["redis_bytes_per_waiting"],
        "redis_rss_bytes_per_waiting": idle.get("redis_rss_bytes_per_waiting"),
        "breakdown_per_waiting_request": r.get("breakdown", {}).get("per_waiting_request", {}),
    }


def environment() -> dict[str, Any]:
    import celery
    import kombu

    try:
        revision = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True,
                                  text=True, timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        revision = ""
    return {
        "git": revision,
        "python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
        "celery": celery.__version__, "kombu": kombu.__version__, "redis_py": redis.__version__,
    }


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000], help="numbers of waiting requests")
    parser.add_argument("--scenarios", nargs="+", choices=sorted(SCENARIOS), default=["ours", "baseline"])
    parser.add_argument("--idle-seconds", type=float, default=60.0,
                        help="length of the idle measurement window; keep it a multiple of the lease "
                             "(SUBTITLE_TASKS_LEASE, 30 s by default): every subtitle_tasks worker runs a "
                             "recovery sweep once a lease, and a window must hold a whole number of them")
    parser.add_argument("--settle", type=float, default=3.0, help="pause between 'all waiting' and the window")
    parser.add_argument("--wait-seconds", type=float, default=1800.0,
                        help="poll interval (ours) and retry countdown (baseline); must outlast the run")
    parser.add_argument("--real-steps", type=int, default=5_000,
                        help="how many of the N take their first step (submit / first run) through the worker; "
                             "the rest are fast-forwarded to the waiting state (default 5,000)")
    parser.add_argument("--all-real", dest="real_steps", action="store_const", const=None,
                        help="every request takes its first step for real "
                             "(N = 100,000 then takes well over 15 minutes)")
    parser.add_argument("--callbacks", action="store_true",
                        help="give every request an on_ready and an on_error signature (baseline: link / "
                             "link_error), as real callers do; off by default")
    parser.add_argument("--samples", type=int, default=200, help="keys sampled for MEMORY USAGE")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--keep-logs", action="store_true", help="keep worker/simulator/redis logs")
    args = parser.parse_args(argv)
    # bounds for reaching 'all waiting': ~6 ms of 2-core time per real step, ~1 ms per ETA fetch
    args.ramp_timeout = lambda n, real: 120.0 + 0.03 * real + 0.005 * n
    return args


def _raise_interrupt(signum, frame):  # SIGTERM cleans up like Ctrl-C
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    revision_at_start = environment()["git"]
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, _raise_interrupt)  # even when started with SIGINT ignored (`cmd &`)
    log_dir = Path(tempfile.mkdtemp(prefix="subtitle-tasks-bench-"))
    results: list[dict[str, Any]] = []
    failed = False
    try:
        for n in args.sizes:
            for name in args.scenarios:
                try:
                    results.append(SCENARIOS[name](n, args, log_dir).run())
                except BenchError as exc:
                    failed = True
                    log(f"{name} N={n} FAILED: {exc}")
    except KeyboardInterrupt:
        log("interrupted; workers, simulator and redis were stopped")
        failed = True
    finally:
        if args.keep_logs or failed:
            log(f"logs kept in {log_dir}")
        else:
            import shutil

            shutil.rmtree(log_dir, ignore_errors=True)
    if not results:
        return 1
    args.results_dir.mkdir(parents=True, exist_ok=True)
    out = args.results_dir / f"scale-{time.strftime('%Y%m%d-%H%M%S')}.json"
    env = environment()
    if env["git"] != revision_at_start:
        log(f"warning: the code changed during the run ({revision_at_start} -> {env['git']})")
    env["git_at_start"] = revision_at_start
    out.write_text(json.dumps({"environment": env, "args": {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if not callable(v)},
        "results": results}, indent=2, default=str))
    summary = {
        "benchmark": "scale", "issue": None, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": env,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if not callable(v)},
        "full_results": str(out), "results": [headline(r) for r in results],
    }
    out.with_suffix(".summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(table(results))
    print()
    print(breakdown_table(results))
    print()
    for line in goals(results):
        print(line)
    print(f"\nresults: {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
