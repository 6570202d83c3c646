-- Hand out generations whose next step is due, each with a lease: its due time is
-- pushed `lease` seconds ahead, so if the task sent for it is lost (worker killed,
-- broker hiccup) it simply comes due again. Nothing waits in a worker's memory.
--
-- Fairness. Each site keeps its schedule in two sorted sets: generations still in
-- phase `submit` (P:submit[:{site}]) and those being polled (P:due[:{site}]); named
-- sites with entries are listed in P:sites (the default site is always looked at).
-- A claim's room is shared equally among the sites with due work, what one site
-- cannot use going to the others (water-filling); within a site, submissions and
-- polls each get half, what one side cannot use going to the other. So a backlog on
-- one site, or of one kind, never holds up another's step beyond the next claim.
-- With `pace` > 0 each site hands out at most `pace` steps per `window` seconds
-- (P:dispatched[:{site}], shared by every dispatcher): each site has its own token
-- and quota, so beyond it that site's due steps wait here, in due order, instead of
-- bouncing off the rate limiter as messages, and another site's never wait for them.
--
-- Migration: before per-site schedules every generation lived in P:due. That set is
-- still the default site's poll set, so old entries are handed out from it (with the
-- default site's share and pace) and advance.lua moves each to its own set.
--
-- Claimed by a worker (`holder`, optional): each claimed entry is also recorded in
-- P:stepclaim:{holder} until its task is published, so a worker killed between claim
-- and publish has them handed out again by the step watch (step_release.lua) within
-- seconds, not a lease later.
-- ARGV: prefix, lease_seconds, limit, pace, window_seconds[, holder]
-- Returns a flat list {generation_id, phase, ...}
-- A failure halfway (a key of the wrong type) returns nothing: the entries leased by
-- then come due again after their lease, and no pace was counted for them.
local prefix, lease, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local pace, window = tonumber(ARGV[4] or '0'), tonumber(ARGV[5] or '0')
if limit <= 0 then
  return {}
end
-- A leased entry must not be due again within this claim, which reads a set more
-- than once.
lease = math.max(lease, 0.001)
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000

local function suffix(site)
  if site == '' then return '' end
  return ':' .. site
end

local sites_key = prefix .. ':sites'
local sites = redis.call('SMEMBERS', sites_key)
table.sort(sites)
table.insert(sites, 1, '')
-- Whose turn it is to go first (and to get an odd slot), so a room smaller than the
-- number of sites is still shared over successive claims.
local turn_key = prefix .. ':claim_turn'
local turn = tonumber(redis.call('GET', turn_key) or '0')

local out = {}

-- Claim up to n due entries of one sorted set. Returns how many were handed out and
-- whether the set ran out of due entries (a stale entry is dropped, not counted).
local function take(key, n)
  if n <= 0 then return 0, false end
  local ids = redis.call('ZRANGEBYSCORE', key, '-inf', now, 'LIMIT', 0, n)
  local got = 0
  for _, gid in ipairs(ids) do
    local phase = redis.call('HGET', prefix .. ':gen:' .. gid, 'phase')
    if (not phase) or phase == 'done' then
      redis.call('ZREM', key, gid)
    else
      redis.call('ZADD', key, now + lease, gid)
      out[#out + 1] = gid
      out[#out + 1] = phase
      got = got + 1
    end
  end
  return got, #ids < n
end

-- Claim up to `want` of one site's steps, half for submissions and half for polls.
local function claim_site(site, want)
  local submits, polls = prefix .. ':submit' .. suffix(site), prefix .. ':due' .. suffix(site)
  local submit_share = math.floor(want / 2)
  if want % 2 == 1 and turn % 2 == 0 then submit_share = submit_share + 1 end
  local s_got, s_out = take(submits, submit_share)
  local p_got, p_out = take(polls, want - s_got)
  local more = 0
  if s_got + p_got < want and not s_out then
    more, s_out = take(submits, want - s_got - p_got)
  end
  return s_got + p_got + more, s_out and p_out
end

local function pace_key(site)
  return prefix .. ':dispatched' .. suffix(site)
end

-- Sites in turn order, each with what its pace still allows.
local active = {}
for i = 0, #sites - 1 do
  local site = sites[(turn + i) % #sites + 1]
  local budget = limit
  if pace > 0 then
    budget = math.min(limit, pace - tonumber(redis.call('GET', pace_key(site)) or '0'))
  end
  if budget > 0 then
    active[#active + 1] = {site = site, budget = budget, got = 0, out = false}
  end
end

-- Water-filling: an equal share each (the first few in turn order get one more when
-- it does not divide), again and again, until the room is used or no site can use it.
local room, spent = limit, {}
while room > 0 and #active > 0 do
  local share = math.floor(room / #active)
  local extra = room - share * #active
  local still = {}
  for i, s in ipairs(active) do
    local want = share
    if i <= extra then want = want + 1 end
    want = math.min(want, s.budget)
    if want > 0 then
      local got, ran_out = claim_site(s.site, want)
      s.got, s.budget, room = s.got + got, s.budget - got, room - got
      s.out = ran_out
    end
    if s.budget > 0 and not s.out then
      still[#still + 1] = s
    end
    spent[s.site] = s
  end
  active = still
end

for site, s in pairs(spent) do
  if pace > 0 and s.got > 0 then
    local key = pace_key(site)
    redis.call('INCRBY', key, s.got)
    if redis.call('PTTL', key) < 0 then
      redis.call('PEXPIRE', key, math.max(1, math.floor(window * 1000)))
    end
  end
  -- A named site whose sets are empty leaves the list (finish.lua and cancel.lua
  -- do the same; this catches entries removed by other means).
  if site ~= '' and s.out and s.got == 0 and redis.call('ZCARD', prefix .. ':submit' .. suffix(site)) == 0
      and redis.call('ZCARD', prefix .. ':due' .. suffix(site)) == 0 then
    redis.call('SREM', sites_key, site)
  end
end
if #out > 0 then
  redis.call('INCR', turn_key)
  local holder = ARGV[6] or ''
  if holder ~= '' then
    local claims = prefix .. ':stepclaim:' .. holder
    for i = 1, #out, 2 do
      redis.call('HSET', claims, out[i], string.format('%.3f', now))
    end
  end
end
return out
