-- callback_watch: workers whose heartbeat is older than `stale` seconds.
-- ARGV: prefix, stale, limit.  Returns flat triples: worker, broker, fence ('' when
-- the registration has expired).
local prefix, stale, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local ids = redis.call('ZRANGEBYSCORE', prefix .. ':cbworkers', '-inf', now - stale, 'LIMIT', 0, limit)
local out = {}
for _, worker in ipairs(ids) do
  local reg = redis.call('HMGET', prefix .. ':cbworker:' .. worker, 'broker', 'fence')
  out[#out + 1] = worker
  out[#out + 1] = reg[1] or ''
  out[#out + 1] = reg[2] or ''
end
return out
