-- Take a job out of `running`.
-- KEYS: 1 job hash, 2 leases zset, 3 handoffs zset
-- ARGV: 1 prefix, 2 job id, 3 fence, 4 new status, 5 '1' when an offset is given (else the
--       job moves to its replay point, if one is stored: see rewind_to_replay), 6 offset,
--       7 messages, 8 '1' when an error is given, 9 error text
-- Reply: 1 written, 0 fenced, 2 forgotten (nothing written; see may_write)

local job = KEYS[1]
local allowed = may_write(job, ARGV[3])
if allowed == 0 and (ARGV[4] == 'completed' or ARGV[4] == 'failed') then
  -- Its lease lapsed while the owner could not reach Redis, the recoverer orphaned it, and
  -- nobody has taken it up since (a takeover bumps the fence again): the owner's end of the
  -- job is still the truth, and a job left `orphaned` would wait forever for an app that is
  -- done. A takeover that comes later finds it finished.
  local h = redis.call('HMGET', job, 'status', 'fence')
  if h[1] == 'orphaned' and tonumber(h[2]) == tonumber(ARGV[3]) + 1 then
    allowed = 1
  end
end
if allowed ~= 1 then
  return allowed
end
local now = now_ms()
local finished = ''
if ARGV[4] == 'completed' or ARGV[4] == 'failed' then
  finished = int(now)
end
redis.call('HSET', job, 'status', ARGV[4], 'messages', ARGV[7], 'updated_at', int(now),
  'finished_at', finished, 'lease_expires_at', '')
if ARGV[5] == '1' then
  redis.call('HSET', job, 'offset', ARGV[6])
  redis.call('HDEL', job, 'replay_offset', 'replay_messages')
else
  -- No offset: whoever finishes does not know where the job stands (a dead owner's job
  -- released by its successor), so it stands at the dead owner's replay point, if any.
  rewind_to_replay(job)
end
if ARGV[8] == '1' then
  redis.call('HSET', job, 'last_error', ARGV[9])
end
local pod = redis.call('HGET', job, 'owner_pod')
if pod then
  redis.call('SREM', pod_jobs_key(ARGV[1], pod), ARGV[2])
end
redis.call('ZREM', KEYS[2], ARGV[2])
index_handoff(KEYS[3], job, ARGV[2])
return 1
