"""How long one per-generation script blocks Redis, by number of joined requests.

    python -m bench.fanin                      # 1, 100 (the default cap), 1,000, 5,000
    python -m bench.fanin --sizes 100 1000

Redis runs one script at a time, so a script's run time is time every other client
waits. Measured by Redis itself (SLOWLOG with a threshold of 0, microseconds per
call), not by the client, and printed next to the same server's time for a single
HGET in the same run as the baseline. Writes ``bench/results/fanin-<timestamp>.summary.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
import uuid
from pathlib import Path

import redis

from subtitle_tasks.local_redis import LocalRedis
from subtitle_tasks.state import RedisStore


def _server_micros(client: redis.Redis, call) -> int:
    client.slowlog_reset()
    call()
    entries = [e for e in client.slowlog_get(10) if not e["command"].startswith(b"SLOWLOG")]
    return max(int(e["duration"]) for e in entries)


def measure(client: redis.Redis, subscribers: int, repeats: int = 5) -> dict[str, float]:
    finish, cancel, create = [], [], []
    for _ in range(repeats):
        store = RedisStore(client, prefix=f"b{uuid.uuid4().hex[:6]}")
        gid = "g"
        for i in range(subscribers - 1):
            store.create_request(request_id=f"r{i}", generation_id=gid, upload_id="u", language_code="en",
                                 name=None, environment=None, on_ready=[{"task": "app.publish", "args": [i]}],
                                 on_error=[], ttl=600, max_joins=subscribers)
        # The last join, cancelling one of many, then ending the generation with everyone waiting.
        create.append(_server_micros(client, lambda store=store, gid=gid: store.create_request(
            request_id="last", generation_id=gid, upload_id="u", language_code="en", name=None, environment=None,
            on_ready=[], on_error=[], ttl=600, max_joins=subscribers)))
        cancel.append(_server_micros(client, lambda store=store: store.cancel("r0" if subscribers > 1 else "last",
                                                                               {"code": "cancelled"})))
        finish.append(_server_micros(client, lambda store=store, gid=gid: store.finish(gid, "ready", {"id": "t"})))
    return {"create_us": statistics.median(create), "cancel_us": statistics.median(cancel),
            "finish_us": statistics.median(finish)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 100, 1000, 5000])
    args = parser.parse_args(argv)
    with LocalRedis() as server:
        client = redis.Redis.from_url(server.url)
        client.config_set("slowlog-log-slower-than", 0)
        client.hset("baseline", "f", "v")
        baseline = statistics.median(_server_micros(client, lambda: client.hget("baseline", "f")) for _ in range(20))
        print(f"baseline: one HGET takes {baseline:g} us of Redis time\n")
        print("| joined requests | create (join) | cancel one | finish (notify all) | finish / HGET |")
        print("|---|---|---|---|---|")
        rows = []
        for size in args.sizes:
            row = measure(client, size)
            rows.append({"joined": size, **row})
            print(f"| {size:,} | {row['create_us'] / 1000:.3f} ms | {row['cancel_us'] / 1000:.3f} ms | "
                  f"{row['finish_us'] / 1000:.3f} ms | {row['finish_us'] / max(baseline, 1):,.0f}x |")
        client.close()
    summary = {
        "benchmark": "fanin", "issue": None, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "clock": "Redis SLOWLOG (threshold 0), microseconds per call, median of 5",
        "settings": {"sizes": args.sizes, "repeats": 5},
        "results": {"baseline_hget_us": baseline, "sizes": rows},
    }
    out = Path(__file__).parent / "results" / f"fanin-{time.strftime('%Y%m%d-%H%M%S')}.summary.json"
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nsummary: {out}")


if __name__ == "__main__":
    main()
