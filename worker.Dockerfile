# syntax=docker/dockerfile:1
#
# The subtitle-tasks worker fleet image; the same file builds the (optional) beat image.
#
#   docker build -f worker.Dockerfile -t subtitle-tasks-worker .
#   docker build -f worker.Dockerfile --build-arg ROLE=beat -t subtitle-tasks-beat .
#
# ROLE only sets the default; `-e ROLE=beat` on a worker image works the same way.
# No secret is baked in: DATOCMS_API_TOKEN, CELERY_BROKER_URL and SUBTITLE_TASKS_* come
# from the runtime environment (deploy/README.md).

FROM python:3.11-slim

ARG ROLE=worker

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    ROLE=${ROLE} \
    WORKER_CONCURRENCY=2 \
    LOG_LEVEL=INFO \
    HEARTBEAT_FILE=/tmp/subtitle-tasks-worker.heartbeat \
    BEAT_SCHEDULE_FILE=/tmp/celerybeat-schedule

# A fixed numeric uid so Kubernetes' runAsNonRoot can check it without a passwd lookup.
# (A gid without a group entry would make Celery print a SecurityWarning at start.)
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/app --create-home --shell /usr/sbin/nologin app

# Only what the package build needs (pyproject names README.md as its readme), so edits
# to tests, examples or deploy/ do not rebuild this layer.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY subtitle_tasks ./subtitle_tasks
# tzdata: Celery needs the UTC zone and a slim base may ship no /usr/share/zoneinfo.
RUN pip install --no-cache-dir . tzdata \
    && rm -rf /src

# Entrypoint and healthcheck (the heartbeat hook is subtitle_tasks.health, in the package).
COPY --chmod=0755 deploy/entrypoint.sh /usr/local/bin/subtitle-tasks-entrypoint
COPY --chmod=0755 deploy/healthcheck.sh /usr/local/bin/subtitle-tasks-healthcheck

USER 10001:10001
WORKDIR /home/app

# Celery's warm shutdown: stop taking tasks, finish the running ones, exit. Give the
# container at least SUBTITLE_TASKS_LEASE + a few seconds before SIGKILL (compose's
# stop_grace_period, Kubernetes' terminationGracePeriodSeconds); a kill is still safe,
# it only delays the killed worker's steps by one lease.
STOPSIGNAL SIGTERM

# Cheap by design: a stat of a file, no Python start, no broker round trip. The worker
# touches the file on every Celery event heartbeat (every 2 s, from its main event loop)
# while its dispatcher thread is alive; beat's schedule file is rewritten every few
# minutes. See deploy/README.md, "Health checks", for why not `celery inspect ping`.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["/usr/local/bin/subtitle-tasks-healthcheck"]

ENTRYPOINT ["/usr/local/bin/subtitle-tasks-entrypoint"]
CMD []
