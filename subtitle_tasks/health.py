"""Liveness file for worker containers: ``celery -A subtitle_tasks worker --include subtitle_tasks.health``.

On every Celery event heartbeat (every 2 s, sent from the worker's main loop) this
touches ``$HEARTBEAT_FILE``, but only while the worker's dispatcher thread is alive: a
worker whose dispatcher died still runs tasks yet hands out no due steps. A health
check is then a stat of the file's age (deploy/healthcheck.sh): no Python start, no
broker round trip. The file goes stale when the main loop is stuck, while the broker
connection is lost, when the dispatcher is gone, and after shutdown. Needs event
heartbeats: do not pass --without-heartbeat.
"""

from __future__ import annotations

import os
from typing import Any

from celery.signals import heartbeat_sent

from .dispatcher import dispatcher_alive

HEARTBEAT_FILE = os.environ.get("HEARTBEAT_FILE", "/tmp/subtitle-tasks-worker.heartbeat")


def touch_heartbeat_file(sender: Any = None, **kwargs: Any) -> None:
    if not dispatcher_alive():
        return
    try:
        with open(HEARTBEAT_FILE, "a"):
            pass
        os.utime(HEARTBEAT_FILE)
    except OSError:
        pass  # an unwritable path makes the check fail, which is the right signal


# Connected by a call rather than as a decorator: Celery's signals are untyped, and a
# decorator from them would leave the function untyped too.
heartbeat_sent.connect(touch_heartbeat_file, weak=False)
