-- finishing -> ready|failed, and the request starts its retention countdown.
-- With a Redis broker on this server, the writes that queue the request's callbacks
-- ride along (handoff.py): settled and sent happen together or not at all.
-- ARGV: prefix, request_id, final_state, retention, undelivered_json, give_up(0|1)
--       [, state_db, broker_db, then per callback: index, n, n x (command, key, value)]
-- undelivered_json: callbacks the notifier gave up on ('' for none), kept on the request.
-- give_up = 0: a callback whose writes fail the checks below fails the whole call.
-- give_up = 1 (the notifier's last attempt): that callback is left out and recorded.
-- Returns 1 if it was finishing (and is now settled), else 0.
local prefix, rid, final, retention = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local undelivered, give_up = ARGV[5], ARGV[6] == '1'
local state_db, broker_db = ARGV[7], ARGV[8]
local switch_db = state_db ~= nil and state_db ~= broker_db
local req_key = prefix .. ':req:' .. rid

if redis.call('HGET', req_key, 'state') ~= 'finishing' then
  redis.call('ZREM', prefix .. ':finishing', rid)
  return 0
end

-- Keys a callback may never write: ours, and those kombu keeps beside its queues.
local function forbidden(key)
  if string.sub(key, 1, #prefix + 1) == prefix .. ':' or string.find(key, '_kombu.', 1, true) then
    return true
  end
  for _, suffix in ipairs({'unacked', 'unacked_index', 'unacked_mutex'}) do
    if string.sub(key, -#suffix) == suffix then return true end
  end
  return false
end

-- Redis does not undo a script that fails halfway, so every broker write is checked
-- before anything is written.
local groups, skipped = {}, {}
if switch_db then redis.call('SELECT', broker_db) end
local i = 9
while i <= #ARGV do
  local index, n = ARGV[i], tonumber(ARGV[i + 1])
  local first, last = i + 2, i + 1 + 3 * n
  local problem = nil
  for j = first, last, 3 do
    local command, key = ARGV[j], ARGV[j + 1]
    if command ~= 'lpush' and command ~= 'pexpire' and command ~= 'publish' then
      problem = 'unsupported broker write ' .. tostring(command)
    elseif command ~= 'publish' and forbidden(key) then
      problem = 'broker key ' .. key .. ' is reserved'
    elseif command == 'lpush' then
      local kind = redis.call('TYPE', key)['ok']
      if kind ~= 'list' and kind ~= 'none' then
        problem = 'broker key ' .. key .. ' holds a ' .. kind .. ', not a queue'
      end
    end
    if problem then break end
  end
  if problem and not give_up then
    if switch_db then redis.call('SELECT', state_db) end
    return redis.error_reply('callback ' .. index .. ': ' .. problem)
  end
  if problem then
    skipped[#skipped + 1] = {index = tonumber(index), reason = problem}
  else
    groups[#groups + 1] = {first, last}
  end
  i = last + 1
end
if switch_db then redis.call('SELECT', state_db) end

redis.call('ZREM', prefix .. ':finishing', rid)
local t = redis.call('TIME')
redis.call('HSET', req_key, 'state', final,
  'finished', string.format('%.6f', tonumber(t[1]) + tonumber(t[2]) / 1000000))
if #skipped > 0 then
  local all = undelivered ~= '' and cjson.decode(undelivered) or {}
  for _, entry in ipairs(skipped) do all[#all + 1] = entry end
  undelivered = cjson.encode(all)
end
if undelivered ~= '' then
  redis.call('HSET', req_key, 'undelivered', undelivered)
end
redis.call('PEXPIRE', req_key, math.max(1, math.floor(retention * 1000)))
-- The newest settled requests, for `subtitle-tasks list` (bounded: no scan, no growth).
redis.call('LPUSH', prefix .. ':recent', rid)
redis.call('LTRIM', prefix .. ':recent', 0, 9999)

if switch_db then redis.call('SELECT', broker_db) end
for _, range in ipairs(groups) do
  for j = range[1], range[2], 3 do
    local command, key, value = ARGV[j], ARGV[j + 1], ARGV[j + 2]
    if command == 'lpush' then
      redis.call('LPUSH', key, value)
    elseif command == 'pexpire' then
      redis.call('PEXPIRE', key, value)
    else
      redis.call('PUBLISH', key, value)
    end
  end
end
if switch_db then redis.call('SELECT', state_db) end
return 1
