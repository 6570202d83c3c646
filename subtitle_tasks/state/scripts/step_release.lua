-- step_watch: make the steps a dead worker held due now, instead of a lease later.
--
-- ARGV: prefix, 'dead', stale, limit
--         every worker silent for `stale` seconds: all its holds, then the worker and
--         its holds are forgotten;
--   or: prefix, 'gone', worker
--         all holds of a worker that has shut down, then it is forgotten;
--   or: prefix, 'lost', worker, gid...
--         those holds of a live worker whose pool child died running them.
-- For each held generation: the worker's lock on it (a token "worker/...") is
-- deleted, so the next holder need not wait for it to expire. If it held the lock, it
-- died inside the step: the generation is due now. Otherwise, if the step is still
-- leased and unsettled (its schedule score lies ahead while its recorded due time,
-- which only advance.lua writes, has passed), its score becomes now; a step that
-- settled meanwhile keeps its own due time. A step that had ended its generation
-- may have died notifying: its requests still `finishing` become due for recovery now
-- (score 0 in P:finishing) and the worker's notify locks on them are deleted.
-- Returns {released, worker...} (the workers forgotten).
local prefix, mode = ARGV[1], ARGV[2]
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000

local function release(worker, gid)
  local lock_key = prefix .. ':lock:gen:' .. gid
  local token = redis.call('GET', lock_key)
  local mid_step = token and string.sub(token, 1, #worker + 1) == worker .. '/'
  if mid_step then
    redis.call('DEL', lock_key)
  end
  local gen = redis.call('HMGET', prefix .. ':gen:' .. gid, 'phase', 'site', 'due', 'subs')
  local phase, site, due = gen[1], gen[2] or '', tonumber(gen[3] or '0') or 0
  if phase == 'done' then
    local found = 0
    for rid in string.gmatch(gen[4] or '', '[^,]+') do
      if redis.call('ZSCORE', prefix .. ':finishing', rid) then
        redis.call('ZADD', prefix .. ':finishing', 0, rid)
        local notify_key = prefix .. ':lock:notify:' .. rid
        local holder = redis.call('GET', notify_key)
        if holder and string.sub(holder, 1, #worker + 1) == worker .. '/' then
          redis.call('DEL', notify_key)
        end
        found = 1
      end
    end
    return found
  end
  if not phase then
    return 0
  end
  local suffix = site == '' and '' or ':' .. site
  local set = prefix .. (phase == 'submit' and ':submit' or ':due') .. suffix
  local score = redis.call('ZSCORE', set, gid)
  if not score or tonumber(score) <= now then
    return 0
  end
  if mid_step then
    -- It died inside the step: whatever due time the step wrote on its way (a submit's
    -- "POST may be going out" mark waits a lease) is not a schedule. Due now: the next
    -- holder reconciles, and never POSTs again before the learned wait.
    redis.call('HSET', prefix .. ':gen:' .. gid, 'due', string.format('%.6f', now))
  elseif due > now then
    return 0  -- it settled before its worker died: its next step keeps its time
  end
  redis.call('ZADD', set, now, gid)
  return 1
end

local released, forgotten = 0, {}
local workers_key = prefix .. ':stepworkers'
local function forget(worker)
  -- What it received (P:stephold) and what its dispatcher claimed but had not yet
  -- published (P:stepclaim, claim_due.lua).
  for _, kind in ipairs({':stephold:', ':stepclaim:'}) do
    local holds_key = prefix .. kind .. worker
    for _, gid in ipairs(redis.call('HKEYS', holds_key)) do
      released = released + release(worker, gid)
    end
    redis.call('DEL', holds_key)
  end
  redis.call('ZREM', workers_key, worker)
  forgotten[#forgotten + 1] = worker
end
if mode == 'dead' then
  local stale, limit = tonumber(ARGV[3]), tonumber(ARGV[4])
  for _, worker in ipairs(redis.call('ZRANGEBYSCORE', workers_key, '-inf', now - stale, 'LIMIT', 0, limit)) do
    forget(worker)
  end
elseif mode == 'gone' then
  forget(ARGV[3])
else
  local worker = ARGV[3]
  for i = 4, #ARGV do
    released = released + release(worker, ARGV[i])
    redis.call('HDEL', prefix .. ':stephold:' .. worker, ARGV[i])
  end
end
local out = {released}
for _, worker in ipairs(forgotten) do out[#out + 1] = worker end
return out
