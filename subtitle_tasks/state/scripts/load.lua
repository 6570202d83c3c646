-- A generation's fields plus the server clock, so every deadline and delay is
-- judged on one clock however skewed the workers' clocks are.
-- ARGV: prefix, generation_id.  Returns {now, field, value, ...}
local t = redis.call('TIME')
local now = string.format('%.6f', tonumber(t[1]) + tonumber(t[2]) / 1000000)
local out = redis.call('HGETALL', ARGV[1] .. ':gen:' .. ARGV[2])
table.insert(out, 1, now)
return out
