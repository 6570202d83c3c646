-- Hand out generations whose next step is due, each with a lease: its due time is
-- pushed `lease` seconds ahead, so if the task sent for it is lost (worker killed,
-- broker hiccup) it simply comes due again. Nothing waits in a worker's memory.
-- ARGV: prefix, lease_seconds, limit
-- Returns a flat list {generation_id, phase, ...}
local prefix, lease, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local due_key = prefix .. ':due'
local ids = redis.call('ZRANGEBYSCORE', due_key, '-inf', now, 'LIMIT', 0, limit)
local out = {}
for _, gid in ipairs(ids) do
  local phase = redis.call('HGET', prefix .. ':gen:' .. gid, 'phase')
  if (not phase) or phase == 'done' then
    redis.call('ZREM', due_key, gid)
  else
    redis.call('ZADD', due_key, now + lease, gid)
    out[#out + 1] = gid
    out[#out + 1] = phase
  end
end
return out
