-- Running jobs whose lease has run out by the Redis clock (their owners are presumed dead).
-- KEYS: 1 leases zset
-- ARGV: 1 maximum number of ids
-- Reply: job ids, oldest expiry first

return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', int(now_ms()), 'LIMIT', 0, ARGV[1])
