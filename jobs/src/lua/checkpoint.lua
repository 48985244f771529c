-- Record an owner's progress and renew its lease.
-- KEYS: 1 job hash, 2 leases zset
-- ARGV: 1 job id, 2 fence, 3 '1' when an offset is given, 4 offset, 5 messages, 6 lease ttl (ms),
--       7 '1' when a replay point is given, 8 its offset, 9 its messages (where a takeover
--       resumes if this owner dies: see claim.lua)
-- Reply: 1 written, 0 fenced, 2 forgotten (nothing written; see may_write)

local allowed = may_write(KEYS[1], ARGV[2])
if allowed ~= 1 then
  return allowed
end
local now = now_ms()
local lease = int(now + tonumber(ARGV[6]))
if ARGV[3] == '1' then
  redis.call('HSET', KEYS[1], 'offset', ARGV[4])
end
if ARGV[7] == '1' then
  redis.call('HSET', KEYS[1], 'replay_offset', ARGV[8], 'replay_messages', ARGV[9])
end
redis.call('HSET', KEYS[1], 'messages', ARGV[5], 'updated_at', int(now), 'lease_expires_at', lease)
redis.call('ZADD', KEYS[2], lease, ARGV[1])
return 1
