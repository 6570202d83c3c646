"""The machine's RabbitMQ for broker tests: required in CI, a skip elsewhere."""

from __future__ import annotations

import os
import socket

import pytest

RABBITMQ = "amqp://guest:guest@127.0.0.1:5672//"


def require_rabbitmq() -> str:
    """RabbitMQ's URL; fails the test in CI (tests/run.sh starts it) and skips it elsewhere."""
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=1).close()
    except OSError:
        if os.environ.get("CI"):
            pytest.fail("RabbitMQ is not reachable on 127.0.0.1:5672 (tests/run.sh starts it when installed)")
        pytest.skip("no RabbitMQ on 127.0.0.1:5672 and none installed")
    return RABBITMQ
