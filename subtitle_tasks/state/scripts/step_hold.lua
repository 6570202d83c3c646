-- step_watch: worker `worker` has received generation `gid`'s step (prefetched or
-- running). Recorded in P:stephold:{worker}; and if the step is still leased and
-- unsettled (score ahead, recorded due time passed: see step_release.lua), its lease
-- is stretched to `lease` seconds from now. A claim leases a step only for the
-- delivery lease (long enough to reach a worker); once a live, watched worker holds
-- it, its death is noticed within seconds, so the step may take the full lease.
-- ARGV: prefix, worker, gid, received_at, lease_seconds (0: record only)
local prefix, worker, gid, lease = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[5])
redis.call('HSET', prefix .. ':stephold:' .. worker, gid, ARGV[4])
if lease <= 0 then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local gen = redis.call('HMGET', prefix .. ':gen:' .. gid, 'phase', 'site', 'due')
local phase, site, due = gen[1], gen[2] or '', tonumber(gen[3] or '0') or 0
if (not phase) or phase == 'done' or due > now then
  return 0
end
local set = prefix .. (phase == 'submit' and ':submit' or ':due') .. (site == '' and '' or ':' .. site)
local score = tonumber(redis.call('ZSCORE', set, gid) or '0') or 0
if score > now and score < now + lease then
  redis.call('ZADD', set, now + lease, gid)
  return 1
end
return 0
