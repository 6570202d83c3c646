"""Following requests from a terminal: ``subtitle-tasks request ... --wait``.

Pure rendering (``describe``, ``render``) is apart from the loop that polls
``status()``, so the text is tested without a terminal or a clock.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TextIO, TypeVar

FINAL = ("ready", "failed")
EXIT_READY, EXIT_FAILED, EXIT_TIMEOUT = 0, 1, 3

# A status as ``status()`` returns it (api.RequestStatus), or any mapping with its keys.
_Status = TypeVar("_Status", bound=Mapping[str, Any])


def happening(status: Mapping[str, Any]) -> str:
    """What a request is doing now, in a few words (its phase, or its outcome)."""
    if status["state"] == "ready":
        what = f"ready: track {status.get('track_id')}"
    elif status["state"] == "failed":
        error = status.get("error") or {}
        what = f"failed: {error.get('code')} ({error.get('message')})"
    else:
        what = {"submit": "submitting", "job": f"job {status.get('job_id')} running",
                "track": f"track {status.get('track_id')} preparing"}.get(status.get("phase") or "",
                                                                         status["state"])
        if status["state"] == "finishing":
            what = "sending callbacks"
    return what


def describe(status: Mapping[str, Any], now: float) -> str:
    """One line for one request: language, what it is doing, elapsed, attempts, next poll."""
    lang = status.get("language_code") or "?"
    elapsed = max(0.0, (status.get("finished_at") or now) - (status.get("created_at") or now))
    parts = [f"{lang:<8} {happening(status)}", f"{elapsed:5.0f}s"]
    if status["state"] not in FINAL:
        if status.get("attempts"):
            parts.append(f"{status['attempts']} polls")
        if status.get("next_poll_in") is not None:
            parts.append(f"next in {status['next_poll_in']:.0f}s")
    return "  ".join(parts)


def render(statuses: Iterable[Mapping[str, Any]], now: float) -> list[str]:
    return [describe(s, now) for s in statuses]


def exit_code(statuses: Iterable[Mapping[str, Any]]) -> int:
    return EXIT_READY if all(s["state"] == "ready" for s in statuses) else EXIT_FAILED


def follow(request_ids: list[str], read: Callable[[str], _Status], *, timeout: float, interval: float = 0.5,
           out: TextIO = sys.stdout, clock: Callable[[], float] = time.time,
           sleep: Callable[[float], None] = time.sleep) -> tuple[int, list[_Status]]:
    """Poll until every request is ready or failed (or ``timeout``); returns (exit code, statuses).

    On a terminal the block of lines is redrawn in place; otherwise a line is printed
    only when a request's line changes, so logs and CI output stay readable.
    """
    live = out.isatty()
    shown: dict[str, str] = {}
    drawn = 0
    ends = clock() + timeout
    while True:
        statuses = [read(rid) for rid in request_ids]
        now = clock()
        lines = render(statuses, now)
        if live:
            if drawn:
                out.write(f"\x1b[{drawn}F")  # back to the block's first line
            for line in lines:
                out.write(f"\x1b[2K{line}\n")
            drawn = len(lines)
        else:
            for rid, status, line in zip(request_ids, statuses, lines, strict=True):
                # Elapsed time changes every second; only a change of what happens is news.
                what = happening(status)
                if shown.get(rid) != what:
                    shown[rid] = what
                    out.write(line + "\n")
        out.flush()
        if all(s["state"] in FINAL for s in statuses):
            return exit_code(statuses), statuses
        if now >= ends:
            return EXIT_TIMEOUT, statuses
        sleep(interval)
