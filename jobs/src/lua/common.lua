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

-- An owner's write goes through only while the job runs under the owner's fence.
local function fenced(job, fence)
  local h = redis.call('HMGET', job, 'fence', 'status')
  return h[1] ~= fence or h[2] ~= 'running'
end
