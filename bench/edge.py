"""The web edge: what one request_subtitles call costs a web process.

    python -m bench.edge                   # 5,000 calls each, about 20 s
    python -m bench.edge --calls 20000

One process, a local throwaway Redis over loopback. Each call is timed (p50, p99) and
the throughput is taken over the run, next to the same run's baseline: a bare
redis-py ``SET`` of a key of the same kind, which is the floor for any call that makes
one Redis round trip. The goal (issue 10) is a p99 within 3x of that baseline.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import redis

from subtitle_tasks import request_subtitles, runtime
from subtitle_tasks.local_redis import LocalRedis
from subtitle_tasks.settings import load_settings


def _measure(call: Callable[[int], object], calls: int) -> dict[str, float]:
    for i in range(min(200, calls)):  # warm up connections and script caches
        call(-i - 1)
    times = []
    started = time.perf_counter()
    for i in range(calls):
        t0 = time.perf_counter()
        call(i)
        times.append(time.perf_counter() - t0)
    total = time.perf_counter() - started
    times.sort()
    return {"p50_ms": statistics.median(times) * 1000, "p99_ms": times[int(len(times) * 0.99) - 1] * 1000,
            "per_second": calls / total}


def run(calls: int = 5000) -> dict[str, dict[str, float]]:
    with LocalRedis() as server:
        runtime.configure(load_settings({"redis_url": server.url, "key_prefix": "edge"}, environ={}))
        client = redis.Redis.from_url(server.url)
        baseline = _measure(lambda i: client.set(f"edge:baseline:{i}", "x"), calls)
        ours = _measure(lambda i: request_subtitles(f"video-{i}", "it-IT", request_id=f"bench-{i}"), calls)
        client.close()
        runtime.get_runtime().close()
    return {"baseline_set": baseline, "request_subtitles": ours}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=5000)
    args = parser.parse_args(argv)
    figures = run(args.calls)
    base, ours = figures["baseline_set"], figures["request_subtitles"]
    print(f"| {args.calls:,} calls, one process | p50 | p99 | calls/s |")
    print("|---|---|---|---|")
    for name, row in (("redis-py SET (baseline)", base), ("request_subtitles", ours)):
        print(f"| {name} | {row['p50_ms']:.3f} ms | {row['p99_ms']:.3f} ms | {row['per_second']:,.0f} |")
    print(f"| ratio | {ours['p50_ms'] / base['p50_ms']:.2f}x | {ours['p99_ms'] / base['p99_ms']:.2f}x | "
          f"{ours['per_second'] / base['per_second']:.2f}x |")
    out = Path(__file__).parent / "results" / f"edge-{time.strftime('%Y%m%d-%H%M%S')}.summary.json"
    out.write_text(json.dumps({"calls": args.calls, **figures}, indent=2))
    print(f"\nsummary: {out}")


if __name__ == "__main__":
    main()
