-- Recovery: requests stuck in `finishing` for longer than `stale` seconds (their
-- notifier died between deciding and settling). Each is claimed by bumping its
-- score, so two recoverers running at once never take the same request.
-- ARGV: prefix, stale_seconds, limit.  Returns request ids.
local prefix, stale, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local key = prefix .. ':finishing'
local ids = redis.call('ZRANGEBYSCORE', key, '-inf', now - stale, 'LIMIT', 0, limit)
for _, rid in ipairs(ids) do
  redis.call('ZADD', key, now, rid)
end
return ids
