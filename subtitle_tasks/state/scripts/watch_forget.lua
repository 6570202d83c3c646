-- callback_watch: remove a worker's registration and holds. With `stale` (not ''),
-- only if its heartbeat is still older than that and it holds nothing any more.
-- ARGV: prefix, worker, stale.  Returns 1 when forgotten.
local prefix, worker, stale = ARGV[1], ARGV[2], ARGV[3]
local holds = prefix .. ':cbhold:' .. worker
if stale ~= '' then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
  local seen = redis.call('ZSCORE', prefix .. ':cbworkers', worker)
  if seen and tonumber(seen) > now - tonumber(stale) then
    return 0
  end
  if redis.call('HLEN', holds) > 0 then
    return 0
  end
end
redis.call('ZREM', prefix .. ':cbworkers', worker)
redis.call('DEL', prefix .. ':cbworker:' .. worker, holds)
return 1
