-- Claim a job for a new run or a takeover.
-- KEYS: 1 job hash, 2 leases zset, 3 the claiming pod's job set, 4 handoffs zset
-- ARGV: 1 prefix, 2 job id, 3 service, 4 method, 5 request (base64), 6 request_json,
--       7 owner pod, 8 owner instance, 9 lease ttl (ms), 10 '1' for a takeover only (a handoff:
--       never create a job nor restart a finished one), 11 owner namespace, 12 owner uid (both
--       '' when unknown), 13 resume mode (`on_request` | `deliver`)
-- Reply: {'fresh', fence} | {'resumed', fence, offset, messages, previous status}
--      | {'gone', status or ''} (takeover only: nothing waits to be resumed)
--      | {'busy', owner pod, owner instance, lease remaining (ms), owner namespace, owner uid}
--      | {'corrupt', field, value}
-- Everything is validated before the first write: a script that errors halfway is not undone.

local job, leases, my_jobs = KEYS[1], KEYS[2], KEYS[3]
local prefix, job_id = ARGV[1], ARGV[2]
local pod, instance, namespace, uid = ARGV[7], ARGV[8], ARGV[11], ARGV[12]
local now = now_ms()
local lease = now + tonumber(ARGV[9])

local function own(fence)
  redis.call('HSET', job, 'status', 'running', 'owner_pod', pod, 'owner_instance', instance,
    'owner_namespace', namespace, 'owner_uid', uid, 'fence', fence, 'updated_at', int(now), 'finished_at', '', 'lease_expires_at', int(lease),
    'resume_mode', ARGV[13])
  redis.call('HDEL', job, 'handoff_offers')
  redis.call('SADD', my_jobs, job_id)
  redis.call('ZADD', leases, int(lease), job_id)
  redis.call('ZREM', KEYS[4], job_id)
end

local function start(fence)
  redis.call('HSET', job, 'service', ARGV[3], 'method', ARGV[4], 'request', ARGV[5],
    'request_json', ARGV[6], 'offset', '', 'started_at', int(now), 'messages', '0',
    'resumes', '0', 'last_error', '')
  redis.call('HDEL', job, 'replay_offset', 'replay_messages', 'replayed')
  own(fence)
  return { 'fresh', fence }
end

local takeover_only = ARGV[10] == '1'

if redis.call('EXISTS', job) == 0 then
  if takeover_only then
    return { 'gone', '' }
  end
  return start('1')
end

local h = redis.call('HMGET', job, 'status', 'fence', 'owner_pod', 'owner_instance',
  'lease_expires_at', 'offset', 'messages', 'resumes', 'owner_namespace', 'owner_uid')
local status, fence, old_pod, old_instance = h[1], h[2], h[3], h[4]
local expires, offset, messages, resumes = h[5], h[6], h[7], h[8]
local old_namespace, old_uid = h[9], h[10]

local function is_count(v)
  return v and string.match(v, '^%d+$') ~= nil
end
if not is_count(fence) then
  return { 'corrupt', 'fence', fence or '' }
end
local next_fence = int(tonumber(fence) + 1)

if status == 'completed' or status == 'failed' then
  if takeover_only then
    return { 'gone', status }
  end
  return start(next_fence)
end
if status == 'running' then
  local until_ms = tonumber(expires) or 0
  if until_ms > now then
    return { 'busy', old_pod or '', old_instance or '', int(until_ms - now), old_namespace or '',
      old_uid or '' }
  end
  -- An expired lease means a dead owner: fall through to a takeover.
elseif status ~= 'interrupted' and status ~= 'orphaned' then
  return { 'corrupt', 'status', status or '' }
end
if not is_count(messages) then
  return { 'corrupt', 'messages', messages or '' }
end
if not is_count(resumes) then
  return { 'corrupt', 'resumes', resumes or '' }
end

if old_pod then
  redis.call('SREM', pod_jobs_key(prefix, old_pod), job_id)
end
-- An owner that died without letting the job go (`orphaned`, or `running` with its lease
-- expired) starts the takeover at its replay point, so that what its app never read is sent
-- again, never skipped (common.lua). A job let go (`interrupted`) resumes where it says.
if status == 'orphaned' or status == 'running' then
  local at, count = rewind_to_replay(job)
  if at then
    offset, messages = at, count
  end
else
  redis.call('HDEL', job, 'replay_offset', 'replay_messages')
end
redis.call('HINCRBY', job, 'resumes', 1)
own(next_fence)
return { 'resumed', next_fence, offset or '', messages, status }
