-- Record a step's outcome and when the next step is due, unless the generation has
-- finished meanwhile (a cancel or a concurrent finisher won: then do nothing).
-- The entry goes to its site's submit set while the phase is `submit`, to its poll
-- set after (claim_due.lua shares each claim between the two), and leaves the other
-- one, and the old shared P:due if it was filed there before per-site schedules.
-- With a fence (a lock name and token, both '' for none) nothing is written unless
-- that token still holds P:lock:{name}: a step whose lock lapsed or was broken (the
-- step watch judged its worker dead) must not record a POST it is about to send.
-- ARGV: prefix, generation_id, delay_seconds, fence_lock, fence_token, field, value, ...
-- Returns 1 when applied, 0 when the generation is finished or gone or the fence failed.
local prefix, gid, delay = ARGV[1], ARGV[2], tonumber(ARGV[3])
local gen_key = prefix .. ':gen:' .. gid
if ARGV[4] ~= '' and redis.call('GET', prefix .. ':lock:' .. ARGV[4]) ~= ARGV[5] then
  return 0
end
local current = redis.call('HMGET', gen_key, 'phase', 'site')
local phase, site = current[1], current[2] or ''
if (not phase) or phase == 'done' then
  return 0
end
for i = 6, #ARGV - 1, 2 do
  if ARGV[i] == 'phase' and ARGV[i + 1] ~= '' then phase = ARGV[i + 1] end
end
local suffix = site == '' and '' or ':' .. site
local submits, polls = prefix .. ':submit' .. suffix, prefix .. ':due' .. suffix
local target, other = polls, submits
if phase == 'submit' then target, other = submits, polls end
-- Checked before the first write: Redis does not undo a script that fails halfway.
local expected = {{target, 'zset'}, {other, 'zset'}}
if site ~= '' then
  expected[3], expected[4] = {prefix .. ':due', 'zset'}, {prefix .. ':sites', 'set'}
end
for _, pair in ipairs(expected) do
  local kind = redis.call('TYPE', pair[1])['ok']
  if kind ~= pair[2] and kind ~= 'none' then
    return redis.error_reply(pair[1] .. ' holds a ' .. kind .. ', not a ' .. pair[2])
  end
end
local t = redis.call('TIME')
local due = tonumber(t[1]) + tonumber(t[2]) / 1000000 + delay
-- An empty value removes the field (readers default it), keeping hashes small.
for i = 6, #ARGV - 1, 2 do
  if ARGV[i + 1] == '' then
    redis.call('HDEL', gen_key, ARGV[i])
  else
    redis.call('HSET', gen_key, ARGV[i], ARGV[i + 1])
  end
end
redis.call('HSET', gen_key, 'due', string.format('%.6f', due))
redis.call('ZREM', other, gid)
if site ~= '' then
  redis.call('ZREM', prefix .. ':due', gid)  -- filed there before per-site schedules
  redis.call('SADD', prefix .. ':sites', site)
end
redis.call('ZADD', target, due, gid)
return 1
