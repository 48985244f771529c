-- Prepended to every script. Times come from Redis TIME so that every pod shares one clock.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Integers as plain digits: tostring() would switch to exponent notation for large values.
local function int(n)
  return string.format('%d', n)
end

-- Mirrors Keys::pod_jobs (keys.rs). Only used for a previous owner's set, whose name is
-- known only once the job's hash has been read.
local function pod_jobs_key(prefix, pod)
  return prefix .. ':pod:' .. pod .. ':jobs'
end

-- Mirrors Keys::job (keys.rs), for scripts that walk an index of job ids.
local function job_key(prefix, id)
  return prefix .. ':job:' .. id
end

-- Whether a job of this status and resume mode waits for a pod of its service to take it.
local function waits_for_a_pod(status, resume_mode)
  return (status == 'interrupted' or status == 'orphaned') and resume_mode == 'deliver'
end

-- A job let go (`interrupted` by its owner, `orphaned` by the recoverer) waits for a pod of
-- its service when it is a `deliver` job: it is put in the handoffs index (KEYS `handoffs`),
-- scored by now, for the recoverer to offer it again should its event be lost (due_handoffs).
-- Any other job, or a job that ended, is taken out.
local function index_handoff(handoffs, job, job_id)
  local h = redis.call('HMGET', job, 'status', 'resume_mode')
  if waits_for_a_pod(h[1], h[2]) then
    redis.call('ZADD', handoffs, int(now_ms()), job_id)
  else
    redis.call('ZREM', handoffs, job_id)
  end
end

-- Whether the owner holding `fence` may write the job: 1 yes, it runs under that fence;
-- 0 no, it moved on (a later fence: another owner; or it left `running`); 2 the store has
-- forgotten it: no hash, or a fence below the owner's. Fences only grow and jobs are never
-- deleted, so only lost data (Redis restarted empty, a failover to a replica behind, FLUSHDB,
-- eviction) makes either 2 case; never a takeover, which leaves a higher fence behind.
local function may_write(job, fence)
  local h = redis.call('HMGET', job, 'fence', 'status')
  if not h[1] then
    return 2
  end
  local stored, mine = tonumber(h[1]), tonumber(fence)
  if stored and mine and stored < mine then
    return 2
  end
  if h[1] ~= fence or h[2] ~= 'running' then
    return 0
  end
  return 1
end

-- The replay point an owner's checkpoints left (checkpoint.lua): where the job resumes when
-- its owner died without saying where it stands, because its app may hold the rest unread (a
-- pod killed takes the app with it). Moves the job's offset and messages there and records
-- how many messages that moved back as `replayed`. Either way the replay point is used up.
-- Returns the offset and messages moved to, or nil when no replay point was stored.
local function rewind_to_replay(job)
  local h = redis.call('HMGET', job, 'replay_offset', 'replay_messages', 'messages')
  redis.call('HDEL', job, 'replay_offset', 'replay_messages')
  local offset, at, forwarded = h[1], h[2], h[3]
  if not offset or not at or not string.match(at, '^%d+$') then
    return nil
  end
  local back = (tonumber(forwarded) or 0) - tonumber(at)
  if back < 0 then
    return nil
  end
  redis.call('HSET', job, 'offset', offset, 'messages', at, 'replayed', int(back))
  return offset, at
end
