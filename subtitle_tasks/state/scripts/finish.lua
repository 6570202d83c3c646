-- End a generation once: only the first caller gets the list of requests to notify.
-- Each of them moves waiting -> finishing and is listed in the `finishing` set,
-- which recovery uses if the notifier dies before it has sent the callbacks.
-- ARGV: prefix, generation_id, outcome ('ready'|'error'), result_json, retention
-- Returns the request ids to notify (empty when someone else finished it).
-- dedup_of and unschedule: _generation_end.lua, loaded in front of this script.

local prefix, gid, outcome, result, retention = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local gen_key = prefix .. ':gen:' .. gid
local phase = redis.call('HGET', gen_key, 'phase')
if (not phase) or phase == 'done' then
  return {}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('HSET', gen_key, 'phase', 'done', 'outcome', outcome, 'result', result,
  'finished', string.format('%.6f', now))
unschedule(prefix, gid, redis.call('HGET', gen_key, 'site'))
local active_key = prefix .. ':active'
local dedup = dedup_of(gen_key)
if redis.call('HGET', active_key, dedup) == gid then
  redis.call('HDEL', active_key, dedup)
end
local notify = {}
local subs = redis.call('HGET', gen_key, 'subs') or ''
for rid in string.gmatch(subs, '[^,]+') do
  local req_key = prefix .. ':req:' .. rid
  if redis.call('HGET', req_key, 'state') == 'waiting' then
    redis.call('HSET', req_key, 'state', 'finishing', 'outcome', outcome)
    redis.call('ZADD', prefix .. ':finishing', now, rid)
    notify[#notify + 1] = rid
  end
end
-- The generation outlives its requests' retention slightly: status() reads both.
redis.call('PEXPIRE', gen_key, math.max(1, math.floor(retention * 1000)) + 3600000)
return notify
