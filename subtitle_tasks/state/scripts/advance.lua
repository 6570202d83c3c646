-- Record a step's outcome and when the next step is due, unless the generation has
-- finished meanwhile (a cancel or a concurrent finisher won: then do nothing).
-- ARGV: prefix, generation_id, delay_seconds, field, value, ...
-- Returns 1 when applied, 0 when the generation is finished or gone.
local prefix, gid, delay = ARGV[1], ARGV[2], tonumber(ARGV[3])
local gen_key = prefix .. ':gen:' .. gid
local phase = redis.call('HGET', gen_key, 'phase')
if (not phase) or phase == 'done' then
  return 0
end
local t = redis.call('TIME')
local due = tonumber(t[1]) + tonumber(t[2]) / 1000000 + delay
-- An empty value removes the field (readers default it), keeping hashes small.
for i = 4, #ARGV - 1, 2 do
  if ARGV[i + 1] == '' then
    redis.call('HDEL', gen_key, ARGV[i])
  else
    redis.call('HSET', gen_key, ARGV[i], ARGV[i + 1])
  end
end
redis.call('HSET', gen_key, 'due', string.format('%.6f', due))
redis.call('ZADD', prefix .. ':due', due, gid)
return 1
