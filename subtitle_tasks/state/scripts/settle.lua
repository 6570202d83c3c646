-- After its callbacks were handed to the broker: finishing -> ready|failed, and the
-- request starts its retention countdown.
-- ARGV: prefix, request_id, final_state, retention.  Returns 1 if it was finishing.
local prefix, rid, final, retention = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local req_key = prefix .. ':req:' .. rid
redis.call('ZREM', prefix .. ':finishing', rid)
if redis.call('HGET', req_key, 'state') ~= 'finishing' then
  return 0
end
local t = redis.call('TIME')
redis.call('HSET', req_key, 'state', final,
  'finished', string.format('%.6f', tonumber(t[1]) + tonumber(t[2]) / 1000000))
redis.call('PEXPIRE', req_key, math.max(1, math.floor(retention * 1000)))
return 1
