-- Count an upstream break the owner is resuming from.
-- KEYS: 1 job hash
-- ARGV: 1 fence, 2 error text
-- Reply: 1 written, 0 fenced, 2 forgotten (nothing written; see may_write)

local allowed = may_write(KEYS[1], ARGV[1])
if allowed ~= 1 then
  return allowed
end
redis.call('HINCRBY', KEYS[1], 'resumes', 1)
redis.call('HSET', KEYS[1], 'last_error', ARGV[2], 'updated_at', int(now_ms()))
return 1
