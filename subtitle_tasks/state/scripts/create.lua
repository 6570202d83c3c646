-- Create a request and attach it to the in-flight generation for the same
-- (environment, upload, language), or start a new generation due now.
-- KEYS: none (all keys derive from the prefix; not for Redis Cluster)
-- ARGV: prefix, request_id, new_generation_id, upload_id, language_code, name,
--       environment, dedup_field, ttl_seconds, (callback field, value)...
-- Callback fields are on_ready/on_error, split by the caller into parts that keep the
-- request hash a compact listpack (state/base.py, split_field).
-- dedup_field is env|upload|lowercased language (finish.lua and cancel.lua rebuild it).
-- Returns {generation_id, joined(0|1), existed(0|1)}
local prefix, rid, new_gid = ARGV[1], ARGV[2], ARGV[3]
local upload, lang, name, env, dedup = ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local ttl = tonumber(ARGV[9])

local req_key = prefix .. ':req:' .. rid
local existing_gen = redis.call('HGET', req_key, 'gen')
if existing_gen then
  -- Same request id again (a web retry): idempotent, nothing new is created.
  return {existing_gen, 0, 1}
end

local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local deadline = now + ttl
local active_key = prefix .. ':active'
local gid = redis.call('HGET', active_key, dedup)
local joined = 0
if gid and redis.call('HGET', prefix .. ':gen:' .. gid, 'phase') and
   redis.call('HGET', prefix .. ':gen:' .. gid, 'phase') ~= 'done' then
  local gen_key = prefix .. ':gen:' .. gid
  local subs = redis.call('HGET', gen_key, 'subs')
  redis.call('HSET', gen_key, 'subs', subs .. ',' .. rid)
  local old_deadline = tonumber(redis.call('HGET', gen_key, 'deadline'))
  if deadline > old_deadline then
    redis.call('HSET', gen_key, 'deadline', string.format('%.6f', deadline))
  end
  joined = 1
else
  gid = new_gid
  local gen_key = prefix .. ':gen:' .. gid
  -- Empty and zero fields are left out (readers default them): 100,000 waiting
  -- generations should fit in well under 1 KB each.
  local fields = {'upload', upload, 'lang', lang, 'phase', 'submit',
    'created', string.format('%.6f', now), 'deadline', string.format('%.6f', deadline),
    'due', string.format('%.6f', now), 'subs', rid}
  if name ~= '' then fields[#fields + 1] = 'name'; fields[#fields + 1] = name end
  if env ~= '' then fields[#fields + 1] = 'env'; fields[#fields + 1] = env end
  redis.call('HSET', gen_key, unpack(fields))
  redis.call('HSET', active_key, dedup, gid)
  redis.call('ZADD', prefix .. ':due', now, gid)
end
local req_fields = {'gen', gid, 'upload', upload, 'lang', lang, 'state', 'waiting',
  'created', string.format('%.6f', now), 'deadline', string.format('%.6f', deadline)}
for i = 10, #ARGV do
  req_fields[#req_fields + 1] = ARGV[i]
end
redis.call('HSET', req_key, unpack(req_fields))
return {gid, joined, 0}
