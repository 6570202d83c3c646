-- Learned poll timing (schedule.py's update()): add one observed duration to a site's
-- histogram of a phase. Every count is multiplied by decay, counts below prune are
-- dropped, then the observation's buckets get their shares (schedule.spread(), summing
-- to 1); written back as schedule.encode() writes it (%.4g, trailing empty buckets left
-- out) with a fresh TTL.
-- KEYS[1]: P:timing:{phase}[:{site}]
-- ARGV: decay, buckets, prune, ttl_ms, then pairs: bucket (1-based), share
-- An unreadable value or one of another layout starts over (it only tunes polling); a
-- key of another type is refused before any write.
local key = KEYS[1]
local decay, n, prune = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
local shares = {}
for j = 5, #ARGV - 1, 2 do shares[tonumber(ARGV[j])] = tonumber(ARGV[j + 1]) end
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
  if shares[i] then v = v + shares[i] end
  counts[i] = v
  if v > 0 then last = i end
end
local parts = {}
for i = 1, last do parts[i] = string.format('%.4g', counts[i]) end
redis.call('SET', key, table.concat(parts, ','), 'PX', ttl)
return last
