-- Hand out generations whose next step is due, each with a lease: its due time is
-- pushed `lease` seconds ahead, so if the task sent for it is lost (worker killed,
-- broker hiccup) it simply comes due again. Nothing waits in a worker's memory.
-- With `pace` > 0 the whole fleet hands out at most `pace` steps per `window`
-- seconds (about one API call each): beyond the API quota, due steps wait here,
-- in due order, instead of bouncing off the rate limiter as messages.
-- ARGV: prefix, lease_seconds, limit, pace, window_seconds
-- Returns a flat list {generation_id, phase, ...}
local prefix, lease, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local pace, window = tonumber(ARGV[4] or '0'), tonumber(ARGV[5] or '0')
local paced_key = prefix .. ':dispatched'
if pace > 0 then
  local used = tonumber(redis.call('GET', paced_key) or '0')
  limit = math.min(limit, pace - used)
  if limit <= 0 then
    return {}
  end
end
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
if pace > 0 and #out > 0 then
  redis.call('INCRBY', paced_key, #out / 2)
  if redis.call('PTTL', paced_key) < 0 then
    redis.call('PEXPIRE', paced_key, math.max(1, math.floor(window * 1000)))
  end
end
return out
