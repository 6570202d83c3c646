-- callback_watch: worker holds task_id's message (value "tag|once|received_at|header").
-- ARGV: prefix, worker, task_id, value, ttl_ms
local key = ARGV[1] .. ':cbhold:' .. ARGV[2]
redis.call('HSET', key, ARGV[3], ARGV[4])
redis.call('PEXPIRE', key, ARGV[5])
return 1
