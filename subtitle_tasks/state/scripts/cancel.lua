-- Cancel one waiting request: it alone moves to finishing with a `cancelled` error.
-- When no other request still waits on its generation, the generation ends too
-- (DatoCMS cannot cancel a job; we just stop watching it).
-- ARGV: prefix, request_id, error_json, retention
-- Returns the request's state before the call ('waiting' means it was cancelled).
-- dedup_of and unschedule: _generation_end.lua, loaded in front of this script.

local prefix, rid, err, retention = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local req_key = prefix .. ':req:' .. rid
local state = redis.call('HGET', req_key, 'state')
if state ~= 'waiting' then
  return state or 'unknown'
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('HSET', req_key, 'state', 'finishing', 'outcome', 'error', 'error', err)
redis.call('ZADD', prefix .. ':finishing', now, rid)
local gid = redis.call('HGET', req_key, 'gen')
local gen_key = prefix .. ':gen:' .. gid
local subs = redis.call('HGET', gen_key, 'subs') or ''
local still_waiting = false
for other in string.gmatch(subs, '[^,]+') do
  if other ~= rid and redis.call('HGET', prefix .. ':req:' .. other, 'state') == 'waiting' then
    still_waiting = true
  end
end
local phase = redis.call('HGET', gen_key, 'phase')
if not still_waiting and phase and phase ~= 'done' then
  redis.call('HSET', gen_key, 'phase', 'done', 'outcome', 'cancelled', 'finished', string.format('%.6f', now))
  unschedule(prefix, gid, redis.call('HGET', gen_key, 'site'))
  local dedup = dedup_of(gen_key)
  if redis.call('HGET', prefix .. ':active', dedup) == gid then
    redis.call('HDEL', prefix .. ':active', dedup)
  end
  redis.call('PEXPIRE', gen_key, math.max(1, math.floor(retention * 1000)) + 3600000)
end
return 'waiting'
