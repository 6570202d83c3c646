-- Create a request and attach it to the in-flight generation for the same
-- (environment, upload, language), or start a new generation due now.
-- KEYS: none (all keys derive from the prefix; not for Redis Cluster)
-- ARGV: prefix, request_id, new_generation_id, upload_id, language_code, name,
--       environment, dedup_field, ttl_seconds, fingerprint, max_joins, site,
--       duration_band, (callback field, value)...
-- Callback fields are on_ready/on_error, split by the caller into parts that keep the
-- request hash a compact listpack (state/base.py, split_field).
-- dedup_field is [site#]env|upload|lowercased language (finish.lua and cancel.lua
-- rebuild it); site is the alias of a named site, '' for the default one.
-- duration_band is the upload's duration band (schedule.duration_band) or '': a new
-- generation keeps it for the learned schedule; a joined one keeps its own.
-- fingerprint identifies the parameters: the same request id with another one is a
-- conflict, not a retry.
-- Returns {generation_id, joined(0|1), status}: status 'created', 'existed',
-- 'conflict' (generation_id is then the existing one's) or 'full' (too many joins).
-- Redis does not undo a script that fails halfway, so everything that can fail is
-- read and checked before the first write.
local prefix, rid, new_gid = ARGV[1], ARGV[2], ARGV[3]
local upload, lang, name, env, dedup = ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local ttl, fingerprint, max_joins, site = tonumber(ARGV[9]), ARGV[10], tonumber(ARGV[11]), ARGV[12]
local band = ARGV[13]

local req_key = prefix .. ':req:' .. rid
local existing = redis.call('HMGET', req_key, 'gen', 'fp')
if existing[1] then
  -- Same request id again. A web retry with the same parameters is idempotent; an
  -- older request stored no fingerprint and is taken as the same.
  if existing[2] and existing[2] ~= fingerprint then
    return {existing[1], 0, 'conflict'}
  end
  return {existing[1], 0, 'existed'}
end

-- A new generation waits in its site's submit set (claim_due.lua); the poll set it
-- moves to after its POST is checked too, so a broken schedule is refused at the edge
-- rather than by the first step.
local suffix = site == '' and '' or ':' .. site
local active_key, submit_key = prefix .. ':active', prefix .. ':submit' .. suffix
local sites_key = prefix .. ':sites'
local expected = {{active_key, 'hash'}, {prefix .. ':due' .. suffix, 'zset'}, {submit_key, 'zset'}}
if site ~= '' then expected[#expected + 1] = {sites_key, 'set'} end
for _, pair in ipairs(expected) do
  local kind = redis.call('TYPE', pair[1])['ok']
  if kind ~= pair[2] and kind ~= 'none' then
    return redis.error_reply(pair[1] .. ' holds a ' .. kind .. ', not a ' .. pair[2])
  end
end

local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local deadline = now + ttl
local gid = redis.call('HGET', active_key, dedup)
local gen_key, subs, old_deadline
if gid then
  gen_key = prefix .. ':gen:' .. gid
  local gen = redis.call('HMGET', gen_key, 'phase', 'subs', 'deadline')
  if gen[1] and gen[1] ~= 'done' then
    subs, old_deadline = gen[2] or '', tonumber(gen[3])
  end
end
if subs then
  local _, commas = string.gsub(subs, ',', '')
  if commas + 1 >= max_joins then
    return {gid, 1, 'full'}
  end
elseif redis.call('EXISTS', prefix .. ':gen:' .. new_gid) == 1 then
  return redis.error_reply('generation id ' .. new_gid .. ' is taken')
end

-- From here on only writes that cannot fail.
local joined = 0
if subs then
  redis.call('HSET', gen_key, 'subs', subs .. ',' .. rid)
  if old_deadline == nil or deadline > old_deadline then
    redis.call('HSET', gen_key, 'deadline', string.format('%.6f', deadline))
  end
  joined = 1
else
  gid = new_gid
  gen_key = prefix .. ':gen:' .. gid
  -- Empty and zero fields are left out (readers default them): 100,000 waiting
  -- generations should fit in well under 1 KB each.
  local fields = {'upload', upload, 'lang', lang, 'phase', 'submit',
    'created', string.format('%.6f', now), 'deadline', string.format('%.6f', deadline),
    'due', string.format('%.6f', now), 'subs', rid}
  if name ~= '' then fields[#fields + 1] = 'name'; fields[#fields + 1] = name end
  if env ~= '' then fields[#fields + 1] = 'env'; fields[#fields + 1] = env end
  if site ~= '' then fields[#fields + 1] = 'site'; fields[#fields + 1] = site end
  if band ~= '' then fields[#fields + 1] = 'dband'; fields[#fields + 1] = band end
  redis.call('HSET', gen_key, unpack(fields))
  redis.call('HSET', active_key, dedup, gid)
  redis.call('ZADD', submit_key, now, gid)
  if site ~= '' then redis.call('SADD', sites_key, site) end
end
redis.call('HSET', req_key, 'gen', gid, 'upload', upload, 'lang', lang, 'state', 'waiting',
  'created', string.format('%.6f', now), 'deadline', string.format('%.6f', deadline), 'fp', fingerprint)
-- Callback parts in small batches: unpack() of thousands of values would overflow
-- Lua's stack (the edge caps their size; this keeps the script safe regardless).
for i = 14, #ARGV, 100 do
  redis.call('HSET', req_key, unpack(ARGV, i, math.min(i + 99, #ARGV)))
end
return {gid, joined, 'created'}
