-- Renew a lock only if we still hold it; 1 if renewed. A step that finds it lost (it
-- outlived the lock, and another worker may be running the same step) must stop.
-- KEYS: the lock.  ARGV: token, ttl in milliseconds.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
