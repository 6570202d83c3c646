-- finishing -> ready|failed, and the request starts its retention countdown.
-- With a Redis broker on this server, the writes that queue the request's callbacks
-- ride along (handoff.py): settled and sent happen together or not at all.
-- ARGV: prefix, request_id, final_state, retention
--       [, state_db, broker_db, (command, key, value)...]   Returns 1 if it was finishing.
local prefix, rid, final, retention = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local state_db, broker_db = ARGV[5], ARGV[6]
local first_write = 7
local switch_db = state_db ~= nil and state_db ~= broker_db
local req_key = prefix .. ':req:' .. rid

if redis.call('HGET', req_key, 'state') ~= 'finishing' then
  redis.call('ZREM', prefix .. ':finishing', rid)
  return 0
end

-- Redis does not undo a script that fails halfway, so every broker write is checked
-- before anything is written.
if switch_db then redis.call('SELECT', broker_db) end
for i = first_write, #ARGV, 3 do
  local command, key = ARGV[i], ARGV[i + 1]
  if command == 'lpush' then
    local kind = redis.call('TYPE', key)['ok']
    if kind ~= 'list' and kind ~= 'none' then
      return redis.error_reply('broker key ' .. key .. ' holds a ' .. kind .. ', not a queue')
    end
  elseif command ~= 'pexpire' and command ~= 'publish' then
    return redis.error_reply('unsupported broker write ' .. tostring(command))
  end
end
if switch_db then redis.call('SELECT', state_db) end

redis.call('ZREM', prefix .. ':finishing', rid)
local t = redis.call('TIME')
redis.call('HSET', req_key, 'state', final,
  'finished', string.format('%.6f', tonumber(t[1]) + tonumber(t[2]) / 1000000))
redis.call('PEXPIRE', req_key, math.max(1, math.floor(retention * 1000)))

if switch_db then redis.call('SELECT', broker_db) end
for i = first_write, #ARGV, 3 do
  local command, key, value = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if command == 'lpush' then
    redis.call('LPUSH', key, value)
  elseif command == 'pexpire' then
    redis.call('PEXPIRE', key, value)
  else
    redis.call('PUBLISH', key, value)
  end
end
return 1
