"""``subtitle-tasks simulate`` / ``python -m subtitle_tasks.testing.simulator``: serve a simulator
from a shell until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import signal
import threading

from .config import BODY_TYPES, SimulatorConfig
from .core import Simulator
from .faults import FAULT_NAMES
from .jobs import SANDBOX_IMMUTABLE


def _fault_argument(text: str) -> tuple[str, float]:
    name, separator, probability = text.partition("=")
    if not separator:
        raise argparse.ArgumentTypeError(f"expected NAME=PROB, got {text!r}")
    try:
        return name.strip(), float(probability)
    except ValueError:
        raise argparse.ArgumentTypeError(f"probability must be a number, got {probability!r}") from None


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="subtitle-tasks simulate",
        description="Serve a local simulator of DatoCMS's generate-subtitles API.",
    )
    defaults = SimulatorConfig()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument("--token", default=None, help="accept only this API token")
    parser.add_argument("--job-seconds", type=float, default=defaults.job_seconds)
    parser.add_argument("--preparing-seconds", type=float, default=defaults.preparing_seconds)
    parser.add_argument("--rate-limit", type=int, default=defaults.rate_limit)
    parser.add_argument("--rate-window", type=float, default=defaults.rate_window)
    parser.add_argument("--insist-type", choices=BODY_TYPES, default=None)
    parser.add_argument("--immutable-environment", action="append", default=[], metavar="NAME",
                        help="repeatable; POSTs naming this sandbox answer 422 " + SANDBOX_IMMUTABLE)
    parser.add_argument("--fault", type=_fault_argument, action="append", default=[],
                        metavar="NAME=PROB", help=f"repeatable; names: {', '.join(FAULT_NAMES)}")
    parser.add_argument("--seed", type=int, default=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        config = SimulatorConfig(
            job_seconds=args.job_seconds, preparing_seconds=args.preparing_seconds,
            rate_limit=args.rate_limit, rate_window=args.rate_window, token=args.token,
            insist_type=args.insist_type, faults=dict(args.fault), seed=args.seed,
            immutable_environments=frozenset(args.immutable_environment),
        )
    except ValueError as error:
        parser.error(str(error))
    stop_requested = threading.Event()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signal_number, lambda *_: stop_requested.set())
    simulator = Simulator(config, host=args.host, port=args.port).start()
    try:
        print(f"subtitle-tasks simulator listening on {simulator.url}", flush=True)
        while not stop_requested.wait(0.2):
            pass
    finally:
        simulator.stop()
    return 0
