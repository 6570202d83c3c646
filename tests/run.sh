#!/usr/bin/env bash
# The test command: installs what the tests need (from pyproject.toml) into .venv,
# makes sure a RabbitMQ broker is there for the broker tests, runs mypy --strict and
# ruff, then pytest, and stops whatever it started. Redis servers are started by the
# tests themselves.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'

started_rabbit=""
rabbit_up() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }
if ! rabbit_up && command -v rabbitmq-server >/dev/null 2>&1; then
  echo "starting rabbitmq-server for the broker tests"
  rabbitmq-server -detached >/dev/null 2>&1 || true
  for _ in $(seq 1 60); do rabbit_up && break; sleep 1; done
  rabbit_up && started_rabbit=yes
fi
cleanup() {
  if [ -n "$started_rabbit" ]; then rabbitmqctl stop >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

# Static checks first: cheap, and a type or lint error fails the run like a test would.
# (Their configuration, and the pinned versions, are in pyproject.toml.)
.venv/bin/python -m mypy
.venv/bin/python -m ruff check subtitle_tasks tests bench examples

.venv/bin/python -m pytest "$@"
