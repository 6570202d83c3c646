#!/bin/sh
# Entry point of worker.Dockerfile: runs celery as PID 1 (exec) so it gets SIGTERM itself.
#
#   (no arguments)        the role's default command, from $ROLE (worker | beat)
#   -X / --opt ...        extra celery options appended to it (e.g. -Q subtitles,celery)
#   any other command     run as is, e.g. `subtitle-tasks status <id>`, `subtitle-tasks simulate`
set -eu

if [ "$#" -gt 0 ] && [ "${1#-}" = "$1" ]; then
    exec "$@"
fi

case "${ROLE:-worker}" in
worker)
    # Fail at start, visibly, rather than on the first submit an hour later.
    if [ -z "${DATOCMS_API_TOKEN:-}" ]; then
        echo "subtitle-tasks worker: DATOCMS_API_TOKEN is not set (pass it at run time, from a secret)" >&2
        exit 78
    fi
    # -O fair: hand a task to a pool process only when it is free, so a slow HTTP call
    # does not hold prefetched tasks behind it.
    # --without-gossip/--without-mingle: every worker would otherwise receive every other
    # worker's heartbeats and sync with them at start; this fleet needs neither.
    # Event heartbeats stay on: subtitle_tasks.health uses them for the health file.
    exec celery -A subtitle_tasks worker \
        --loglevel "${LOG_LEVEL:-INFO}" \
        --concurrency "${WORKER_CONCURRENCY:-2}" \
        -O fair \
        --without-gossip --without-mingle \
        --include subtitle_tasks.health \
        "$@"
    ;;
beat)
    # The schedule file only remembers last run times of the 30 s recovery sweep:
    # losing it with the container is harmless, so it lives in /tmp.
    exec celery -A subtitle_tasks beat \
        --loglevel "${LOG_LEVEL:-INFO}" \
        --schedule "${BEAT_SCHEDULE_FILE:-/tmp/celerybeat-schedule}" \
        "$@"
    ;;
*)
    echo "subtitle-tasks: unknown ROLE '${ROLE}' (expected worker or beat)" >&2
    exit 64
    ;;
esac
