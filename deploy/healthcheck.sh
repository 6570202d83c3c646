#!/bin/sh
# Container health: the age of a file the process keeps fresh (see worker.Dockerfile).
#   worker: $HEARTBEAT_FILE, touched every 2 s while the main loop and dispatcher run
#   beat:   $BEAT_SCHEDULE_FILE (and its .db/.dat/... siblings), synced every ~3 min
# A container that runs another command from the image (the simulator, the CLI) should
# set its own health check, as deploy/docker-compose.yml does for the simulator.
set -eu

case "${ROLE:-worker}" in
worker) file=${HEARTBEAT_FILE:-/tmp/subtitle-tasks-worker.heartbeat}; max_age=${HEALTH_MAX_AGE:-60} ;;
beat)   file=${BEAT_SCHEDULE_FILE:-/tmp/celerybeat-schedule};         max_age=${HEALTH_MAX_AGE:-600} ;;
*)      echo "unknown ROLE '${ROLE}'"; exit 1 ;;
esac

newest=0
for f in "$file" "$file".*; do
    [ -e "$f" ] || continue
    m=$(stat -c %Y "$f")
    if [ "$m" -gt "$newest" ]; then newest=$m; fi
done
if [ "$newest" -eq 0 ]; then
    echo "unhealthy: $file does not exist yet"
    exit 1
fi
age=$(( $(date +%s) - newest ))
if [ "$age" -gt "$max_age" ]; then
    echo "unhealthy: $file is ${age}s old (limit ${max_age}s)"
    exit 1
fi
echo "ok: $file is ${age}s old"
