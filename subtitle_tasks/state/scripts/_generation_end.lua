-- Shared by finish.lua and cancel.lua: RedisStore puts this file in front of each of
-- them when it loads them (Lua scripts cannot include one another).

-- [site#]env|upload|lowercased language: the key create.lua filed this generation under.
local function dedup_of(gen_key)
  local f = redis.call('HMGET', gen_key, 'env', 'upload', 'lang', 'site')
  local key = (f[1] or '') .. '|' .. f[2] .. '|' .. string.lower(f[3])
  if f[4] then key = f[4] .. '#' .. key end
  return key
end

-- Take a generation off every schedule set it may be in: its site's submit and poll
-- sets and the shared P:due of before per-site schedules; a named site left with
-- nothing scheduled leaves the list of sites claim_due.lua looks at.
local function unschedule(prefix, gid, site)
  local submits, polls = prefix .. ':submit', prefix .. ':due'
  redis.call('ZREM', polls, gid)
  if site then
    submits, polls = submits .. ':' .. site, polls .. ':' .. site
    redis.call('ZREM', polls, gid)
  end
  redis.call('ZREM', submits, gid)
  if site and redis.call('ZCARD', submits) == 0 and redis.call('ZCARD', polls) == 0 then
    redis.call('SREM', prefix .. ':sites', site)
  end
end
