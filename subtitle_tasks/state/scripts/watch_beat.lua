-- callback_watch: a worker's heartbeat (server clock), its broker and its fence.
-- Holds the worker recorded before `fence` (its own clock) are never sent again, only
-- restored ("inf": the worker is stopping). Registration and holds live for the
-- retention after the last beat, so a worker nobody sweeps leaves nothing behind.
-- ARGV: prefix, worker, broker, fence, ttl_ms.  Returns 1 if the worker was known,
-- 0 if this beat registered it (first beat, or a sweeper had presumed it dead).
local prefix, worker = ARGV[1], ARGV[2]
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local added = redis.call('ZADD', prefix .. ':cbworkers', now, worker)
local reg = prefix .. ':cbworker:' .. worker
redis.call('HSET', reg, 'broker', ARGV[3], 'fence', ARGV[4])
redis.call('PEXPIRE', reg, ARGV[5])
redis.call('PEXPIRE', prefix .. ':cbhold:' .. worker, ARGV[5])
return 1 - added
