-- callback_watch: drop worker's hold on task_id if it is still the delivery `tag`
-- (a newer delivery of the same task id is left alone). Returns 1 when dropped: a
-- sweeper that gets 1 is the only one acting on that hold.
-- ARGV: prefix, worker, task_id, tag
local key = ARGV[1] .. ':cbhold:' .. ARGV[2]
local value = redis.call('HGET', key, ARGV[3])
local tag = ARGV[4] .. '|'
if value and string.sub(value, 1, #tag) == tag then
  return redis.call('HDEL', key, ARGV[3])
end
return 0
