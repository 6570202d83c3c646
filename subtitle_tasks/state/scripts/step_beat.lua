-- step_watch: a worker's heartbeat (server clock). Its holds live as long as the
-- registration would, so a worker nobody sweeps leaves nothing behind.
-- ARGV: prefix, worker, ttl_ms.  Returns 1 if the worker was registered already, 0 if
-- this beat registered it (its first beat, or a sweeper had presumed it dead).
local prefix, worker = ARGV[1], ARGV[2]
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local added = redis.call('ZADD', prefix .. ':stepworkers', now, worker)
redis.call('PEXPIRE', prefix .. ':stepworkers', ARGV[3])
redis.call('PEXPIRE', prefix .. ':stephold:' .. worker, ARGV[3])
redis.call('PEXPIRE', prefix .. ':stepclaim:' .. worker, ARGV[3])
return 1 - added
