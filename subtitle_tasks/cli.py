"""``subtitle-tasks`` command line: demo, simulate, request, status, cancel, recover, sweep.

Exit codes: 0 done (or ready), 1 failed or unknown, 2 refused input, 3 timed out.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable


def _demo(args: argparse.Namespace) -> int:
    from .demo import run

    return run(args.upload, args.language, args.name, args.timeout)


EXIT_REFUSED = 2


def _request(args: argparse.Namespace) -> int:
    from . import InvalidSubtitleRequest, status
    from .api import request_languages
    from .progress import follow

    try:
        handles = request_languages(args.upload, args.languages, name=args.name, request_id=args.request_id,
                                    site=args.site, check_language=not args.any_language)
    except InvalidSubtitleRequest as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    ids = [h.id for h in handles]
    if not args.wait:
        print(json.dumps({"requests": ids}) if args.json else "\n".join(ids))
        return 0
    code, statuses = follow(ids, status, timeout=args.timeout, out=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(statuses, indent=2))
    return code


def _status(args: argparse.Namespace) -> int:
    from . import UnknownRequest, status
    from .progress import describe

    try:
        current = status(args.request_id)
    except UnknownRequest as exc:
        print(exc, file=sys.stderr)
        return 1
    print(json.dumps(current, indent=2) if args.json else describe(current, time.time()))
    return 0


def _cancel(args: argparse.Namespace) -> int:
    from . import UnknownRequest, cancel

    try:
        cancelled = cancel(args.request_id)
    except UnknownRequest as exc:
        print(exc, file=sys.stderr)
        return 1
    print("cancelled" if cancelled else "already finished")
    return 0


def _list(args: argparse.Namespace) -> int:
    from .runtime import runtime_for

    rows = runtime_for().store.list_requests(args.state, args.upload, args.limit)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        # A record missing a field (written by an older version, or edited) prints "-", never raises.
        print(f"{row['request_id']:<32} {row['state'] or '-':<10} {row['upload_id'] or '-':<24} "
              f"{row['language_code'] or '-'}")
    return 0


def _stats(args: argparse.Namespace) -> int:
    from .metrics import fleet_stats
    from .runtime import runtime_for

    runtime = runtime_for()
    stats = fleet_stats(runtime.store, runtime.settings.lease)
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    outcomes = ", ".join(f"{n} {k}" for k, n in sorted(stats["outcomes_last_hour"].items())) or "none"
    print(f"in flight    {stats['in_flight']}\n"
          f"scheduled    {stats['scheduled']} ({stats['due']} due now, {stats['overdue']} overdue)\n"
          f"oldest wait  {stats['oldest_due_seconds']:.1f}s past due\n"
          f"finishing    {stats['finishing']}\n"
          f"last hour    {outcomes}")
    for row in stats["by_site"]:
        if row["scheduled"]:
            print(f"  site {row['site']:<12} {row['kind']:<7} {row['scheduled']} scheduled, {row['due']} due, "
                  f"{row['overdue']} overdue")
    return 0


def _metrics(args: argparse.Namespace) -> int:
    from .metrics import MetricsServer
    from .runtime import runtime_for

    runtime = runtime_for()
    server = MetricsServer(runtime.store, runtime.settings.lease, host=args.host, port=args.port)
    print(f"serving /metrics and /stats.json on {args.host}:{server.port}", flush=True)
    try:
        server.httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.httpd.server_close()
    return 0


def _recover(args: argparse.Namespace) -> int:
    from . import app  # noqa: F401  (a Celery app to publish with)
    from .tasks import recover

    print(json.dumps(recover.apply().get()))
    return 0


# -- sweep ---------------------------------------------------------------------------------
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _duration(text: str) -> float:
    """``30m``, ``12h``, ``2d``, ``90s`` or plain seconds."""
    raw = text.strip().lower()
    number, unit = (raw[:-1], _UNITS[raw[-1]]) if raw[-1:] in _UNITS else (raw, 1.0)
    try:
        value = float(number) * unit
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a duration such as 30m, 12h, 2d or seconds, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"a duration must be positive, got {text!r}")
    return value


def _sweep(args: argparse.Namespace) -> int:
    from .sweep import sweep

    try:
        report = sweep(site=args.site, languages=args.languages, since=args.since, dry_run=args.dry_run,
                       max_seconds=args.max_seconds, max_requests=args.max_requests)
    except ValueError as exc:  # ConfigurationError, a bad tag, since out of range
        print(f"refused: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    if args.json:
        print(json.dumps(report, indent=2))
    elif report["stopped"] == "disabled":
        print("sweep disabled: no languages (--languages or SUBTITLE_TASKS_AUTO_LANGUAGES)")
    else:
        verb = "would request" if report["dry_run"] else "requested"
        print(f"site {report['site'] or 'default'}: {report['videos']} videos looked at, {verb} "
              f"{report['requested']}, {report['skipped_has_track']} had a track, {report['skipped_requested']} "
              f"already requested, {report['too_old']} too old, {report['not_ready']} not on Mux yet; "
              f"{report['api_calls']} API calls, {report['pages']} pages; {report['stopped']}"
              + (f" ({report['error']})" if report["error"] else ""))
    return 1 if report["stopped"] == "error" else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="subtitle-tasks", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run one request end to end (starts Redis and the simulator if needed)")
    demo.add_argument("--upload", default="demo-upload", help="upload id (default: a simulator upload)")
    demo.add_argument("--language", default="it-IT")
    demo.add_argument("--name", default="Italiano")
    demo.add_argument("--timeout", type=float, default=120.0)
    demo.set_defaults(func=_demo)

    simulate = sub.add_parser("simulate", help="run the DatoCMS API simulator", add_help=False)
    simulate.set_defaults(func=None)

    request = sub.add_parser("request", help="ask for subtitles of an upload in one or more languages")
    request.add_argument("upload")
    request.add_argument("languages", nargs="+", metavar="LANG")
    request.add_argument("--name", help="the track's name (default: none)")
    request.add_argument("--site", help="a configured site's alias (default: the DATOCMS_* one)")
    request.add_argument("--request-id", help="idempotency key; each language gets ID.LANG when there are several")
    request.add_argument("--any-language", action="store_true", help="send languages outside Mux's list too")
    request.add_argument("--wait", action="store_true", help="follow each language until ready or failed")
    request.add_argument("--timeout", type=float, default=7200.0, help="with --wait: give up after this (s)")
    request.add_argument("--json", action="store_true", help="print JSON")
    request.set_defaults(func=_request)

    status = sub.add_parser("status", help="where a request stands")
    status.add_argument("request_id")
    status.add_argument("--json", action="store_true", help="print the whole status as JSON")
    status.set_defaults(func=_status)

    cancel = sub.add_parser("cancel", help="cancel a waiting request")
    cancel.add_argument("request_id")
    cancel.set_defaults(func=_cancel)

    listing = sub.add_parser("list", help="requests in flight and recently settled, from indexes")
    listing.add_argument("--state", choices=["waiting", "finishing", "ready", "failed"])
    listing.add_argument("--upload", help="only this upload's requests")
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=_list)

    stats = sub.add_parser("stats", help="the fleet now: in flight, due, overdue, oldest wait, last hour")
    stats.add_argument("--json", action="store_true", help="print JSON")
    stats.set_defaults(func=_stats)

    metrics = sub.add_parser("metrics", help="serve fleet metrics to Prometheus (/metrics, /stats.json)")
    metrics.add_argument("--port", type=int, default=9100)
    metrics.add_argument("--host", default="0.0.0.0")
    metrics.set_defaults(func=_metrics)

    recover = sub.add_parser("recover", help="run one recovery sweep now (what celery beat runs)")
    recover.set_defaults(func=_recover)

    sweep = sub.add_parser("sweep", help="ask for the subtitles a site's recent videos lack (what beat runs)")
    sweep.add_argument("--languages", help="comma-separated tags (default: SUBTITLE_TASKS_AUTO_LANGUAGES)")
    sweep.add_argument("--since", type=_duration, help="how far back: 30m, 12h, 2d or seconds (default, at most: 7d)")
    sweep.add_argument("--site", help="a configured site's alias (default: the DATOCMS_* one)")
    sweep.add_argument("--dry-run", action="store_true", help="decide and report, request nothing, keep no cursor")
    sweep.add_argument("--max-seconds", type=float, help="stop after this long; the next sweep resumes")
    sweep.add_argument("--max-requests", type=int, help="stop after this many requests; the next sweep resumes")
    sweep.add_argument("--json", action="store_true", help="print the report as JSON")
    sweep.set_defaults(func=_sweep)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["simulate"]:
        # The simulator parses its own options (`subtitle-tasks simulate --help`).
        from .testing.simulator import main as simulate

        return simulate(argv[1:])
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    command: Callable[[argparse.Namespace], int] = args.func
    return command(args)


if __name__ == "__main__":
    sys.exit(main())
