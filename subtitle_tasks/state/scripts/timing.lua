-- Learned poll timing (schedule.py's update()): add one observed duration to a site's
-- histogram of a phase. Every count is multiplied by decay, counts below prune are
-- dropped, then the observation's bucket gets +1; written back as schedule.encode()
-- writes it (%.4g, trailing empty buckets left out) with a fresh TTL.
-- KEYS[1]: P:timing:{phase}[:{site}]   ARGV: decay, buckets, prune, ttl_ms, bucket (1-based)
-- An unreadable value or one of another layout starts over (it only tunes polling); a
-- key of another type is refused before any write.
local key = KEYS[1]
local decay, n, prune = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local ttl, bucket = tonumber(ARGV[4]), tonumber(ARGV[5])
local kind = redis.call('TYPE', key)['ok']
if kind ~= 'string' and kind ~= 'none' then
  return redis.error_reply(key .. ' holds a ' .. kind .. ', not a string')
end
local counts = {}
for i = 1, n do counts[i] = 0 end
if kind == 'string' then
  local i, ok = 0, true
  for part in string.gmatch(redis.call('GET', key), '[^,]+') do
    i = i + 1
    local v = tonumber(part)
    if i > n or v == nil or v ~= v or v < 0 or v == math.huge then ok = false; break end
    counts[i] = v
  end
  if not ok then for j = 1, n do counts[j] = 0 end end
end
local last = 0
for i = 1, n do
  local v = counts[i] * decay
  if v < prune then v = 0 end
  if i == bucket then v = v + 1 end
  counts[i] = v
  if v > 0 then last = i end
end
local parts = {}
for i = 1, last do parts[i] = string.format('%.4g', counts[i]) end
redis.call('SET', key, table.concat(parts, ','), 'PX', ttl)
return last
