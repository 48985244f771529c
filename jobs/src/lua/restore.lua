-- Write a job back from its owner's own state after the store forgot it (may_write said 2):
-- the owner is the truth for a job it runs. Only then: if the job runs under the owner's fence
-- again (a concurrent restore) nothing changes; if a higher fence is there now, the owner is
-- fenced as by any write.
-- KEYS: 1 job hash, 2 leases zset, 3 the owner's pod job set
-- ARGV: 1 job id, 2 service, 3 method, 4 request (base64), 5 request_json, 6 owner pod,
--       7 owner instance, 8 fence, 9 '1' when an offset is given, 10 offset, 11 messages,
--       12 lease ttl (ms), 13 note for last_error, 14 owner namespace, 15 owner uid ('' unknown),
--       16 resume mode
-- Reply: 1 written (or already back under this fence), 0 fenced

local job = KEYS[1]
local allowed = may_write(job, ARGV[8])
if allowed ~= 2 then
  return allowed
end
local now = now_ms()
local lease = int(now + tonumber(ARGV[12]))
-- A copy behind the owner's (a replica that missed writes) keeps its history counters.
local old = redis.call('HMGET', job, 'started_at', 'resumes')
local started, resumes = int(now), '0'
if old[1] and string.match(old[1], '^%d+$') then
  started = old[1]
end
if old[2] and string.match(old[2], '^%d+$') then
  resumes = old[2]
end
local offset = ''
if ARGV[9] == '1' then
  offset = ARGV[10]
end
redis.call('DEL', job)
redis.call('HSET', job, 'service', ARGV[2], 'method', ARGV[3], 'request', ARGV[4],
  'request_json', ARGV[5], 'status', 'running', 'offset', offset, 'owner_pod', ARGV[6],
  'owner_instance', ARGV[7], 'owner_namespace', ARGV[14], 'owner_uid', ARGV[15], 'fence', ARGV[8], 'started_at', started, 'updated_at', int(now),
  'finished_at', '', 'messages', ARGV[11], 'resumes', resumes, 'last_error', ARGV[13],
  'lease_expires_at', lease, 'resume_mode', ARGV[16])
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('ZADD', KEYS[2], lease, ARGV[1])
return 1
