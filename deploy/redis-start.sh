#!/bin/sh
# Starts the fleet's Redis: writes the `subtitle_tasks` ACL user, with the password from
# a secret, to a private file on a tmpfs, then runs redis-server with redis.conf plus
# that file. redis.conf itself disables the default user, so nothing answers without
# this user's password (deploy/README.md, "Redis access").
#
#   redis-start.sh /path/to/redis.conf [more redis-server options]
#
# Password: $SUBTITLE_TASKS_REDIS_PASSWORD, or the file named by
# $SUBTITLE_TASKS_REDIS_PASSWORD_FILE. It goes into redis:// URLs unescaped, so only
# URL-safe characters are accepted; at least 32 of them (`openssl rand -hex 32`).
# $REDIS_USERS_FILE (default /run/subtitle-tasks-redis/users.conf) must be on a
# writable, non-persistent mount (compose: tmpfs; Kubernetes: an emptyDir in memory).
# It holds only the password's SHA-256, never the password itself.
#
# Docker Compose (docker-compose.yml) and Kubernetes (k8s/redis.yaml, a verbatim copy
# in the ConfigMap) both run this file; tests/test_deploy.py runs it against a real
# redis-server and checks the copies match.
set -eu

if [ "$#" -lt 1 ]; then
    echo "usage: $0 /path/to/redis.conf [redis-server options]" >&2
    exit 64
fi
conf=$1
shift
users=${REDIS_USERS_FILE:-/run/subtitle-tasks-redis/users.conf}

password=${SUBTITLE_TASKS_REDIS_PASSWORD:-}
if [ -z "$password" ] && [ -n "${SUBTITLE_TASKS_REDIS_PASSWORD_FILE:-}" ]; then
    password=$(cat "$SUBTITLE_TASKS_REDIS_PASSWORD_FILE")
fi
if [ -z "$password" ]; then
    echo "subtitle-tasks redis: SUBTITLE_TASKS_REDIS_PASSWORD is not set (pass it from a secret); not starting" >&2
    exit 78
fi
case "$password" in
*[!A-Za-z0-9._~-]*)
    echo "subtitle-tasks redis: the password may hold only A-Z a-z 0-9 . _ ~ - (it goes into redis:// URLs); not starting" >&2
    exit 78
    ;;
esac
if [ "${#password}" -lt 32 ]; then
    echo "subtitle-tasks redis: the password is shorter than 32 characters (use: openssl rand -hex 32); not starting" >&2
    exit 78
fi
digest=$(printf '%s' "$password" | sha256sum | cut -d' ' -f1)
unset password SUBTITLE_TASKS_REDIS_PASSWORD

# The fleet's user (workers, beat, dispatchers, and the web apps that enqueue):
#   ~* &*          every key and pub/sub channel: kombu keeps one list per queue, and the
#                  callbacks go to whatever queues your signatures name; see README.
#   +@all -@dangerous
#                  everything a client uses (strings, hashes, sorted sets, lists, pub/sub,
#                  EVAL/EVALSHA/SCRIPT, MULTI/EXEC, TIME, SELECT, PING, CLIENT SETNAME...),
#                  but none of FLUSHALL/FLUSHDB, KEYS, CONFIG, DEBUG, SHUTDOWN, ACL,
#                  MONITOR, REPLICAOF, MIGRATE/RESTORE, SAVE/BGSAVE, CLIENT KILL/LIST...
#   +info          back from @dangerous: the fleet compares the broker's and the
#                  state's run_id (INFO server) to queue callbacks transactionally.
umask 077
mkdir -p "$(dirname "$users")"
printf 'user subtitle_tasks on #%s ~* &* +@all -@dangerous +info\n' "$digest" > "$users"

exec "${REDIS_SERVER:-redis-server}" "$conf" --include "$users" "$@"
