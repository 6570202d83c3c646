"""``subtitle-tasks`` command line: demo, simulate, status, cancel, recover."""

from __future__ import annotations

import argparse
import json
import logging
import sys


def _demo(args: argparse.Namespace) -> int:
    from .demo import run

    return run(args.upload, args.language, args.name, args.timeout)


def _status(args: argparse.Namespace) -> int:
    from . import UnknownRequest, status

    try:
        print(json.dumps(status(args.request_id), indent=2))
    except UnknownRequest as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


def _cancel(args: argparse.Namespace) -> int:
    from . import cancel

    print("cancelled" if cancel(args.request_id) else "already finished")
    return 0


def _recover(args: argparse.Namespace) -> int:
    from . import app  # noqa: F401  (a Celery app to publish with)
    from .tasks import recover

    print(json.dumps(recover.apply().get()))
    return 0


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

    status = sub.add_parser("status", help="print a request's status as JSON")
    status.add_argument("request_id")
    status.set_defaults(func=_status)

    cancel = sub.add_parser("cancel", help="cancel a waiting request")
    cancel.add_argument("request_id")
    cancel.set_defaults(func=_cancel)

    recover = sub.add_parser("recover", help="run one recovery sweep now (what celery beat runs)")
    recover.set_defaults(func=_recover)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["simulate"]:
        # The simulator parses its own options (`subtitle-tasks simulate --help`).
        from .testing.simulator import main as simulate

        return simulate(argv[1:])
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
