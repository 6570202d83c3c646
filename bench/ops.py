"""What the operator's reads cost at scale: stats, list, a metrics scrape.

    python -m bench.ops                    # 100,000 requests in flight (about a minute)
    python -m bench.ops --size 10000

A throwaway redis-server is filled with N waiting requests (the real create script,
spread over 50 uploads and two sites), then each read is timed (median of several
runs, wall clock from this process, loopback Redis) next to the baseline an operator
has without indexes: SCAN every request key and read its state, in the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import urllib.request
from pathlib import Path

import redis

from subtitle_tasks.local_redis import LocalRedis, free_port
from subtitle_tasks.metrics import MetricsServer, fleet_stats
from subtitle_tasks.state import RedisStore

PREFIX = "ops"


def _fill(store: RedisStore, size: int) -> None:
    for i in range(size):
        store.create_request(request_id=f"r{i}", generation_id=f"g{i}", upload_id=f"u{i % 50}-{i}",
                             language_code="it", name=None, environment=None, on_ready=[], on_error=[], ttl=7200,
                             site="blog" if i % 2 else "")


def _timed(fn, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _scan_baseline(client: redis.Redis) -> dict[str, int]:
    """What reading the fleet costs without indexes: every request key, its state."""
    states: dict[str, int] = {}
    keys = []
    for key in client.scan_iter(f"{PREFIX}:req:*", count=1000):
        keys.append(key)
        if len(keys) == 1000:
            for state in _states(client, keys):
                states[state] = states.get(state, 0) + 1
            keys = []
    for state in _states(client, keys):
        states[state] = states.get(state, 0) + 1
    return states


def _states(client: redis.Redis, keys: list) -> list[str]:
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.hget(key, "state")
    return [s.decode() for s in pipe.execute() if s]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=100_000)
    args = parser.parse_args(argv)
    with LocalRedis() as server:
        client = redis.Redis.from_url(server.url)
        store = RedisStore(client, PREFIX)
        started = time.perf_counter()
        _fill(store, args.size)
        print(f"filled {args.size:,} waiting requests in {time.perf_counter() - started:.0f}s\n")
        exporter = MetricsServer(store, 30.0, host="127.0.0.1", port=free_port())
        exporter.serve_in_thread()
        url = f"http://127.0.0.1:{exporter.port}/metrics"
        baseline = _timed(lambda: _scan_baseline(client), repeats=3)
        rows = {
            "stats (fleet_stats)": _timed(lambda: fleet_stats(store, 30.0)),
            "list --state waiting --limit 50": _timed(lambda: store.list_requests("waiting", None, 50)),
            "list --upload U": _timed(lambda: store.list_requests(None, f"u7-{7 + 50 * 3}", 50)),
            "metrics scrape (/metrics)": _timed(lambda: urllib.request.urlopen(url, timeout=30).read()),
        }
        exporter.close()
        print(f"| read, {args.size:,} in flight | time | vs SCAN of every request ({baseline * 1000:,.0f} ms) |")
        print("|---|---|---|")
        for name, seconds in rows.items():
            print(f"| {name} | {seconds * 1000:,.1f} ms | {seconds / baseline:.4f} |")
        out = Path(__file__).parent / "results" / f"ops-{time.strftime('%Y%m%d-%H%M%S')}.summary.json"
        out.write_text(json.dumps({"size": args.size, "baseline_scan_s": baseline,
                                   "reads_s": rows}, indent=2))
        print(f"\nsummary: {out}")
        client.close()


if __name__ == "__main__":
    main()
