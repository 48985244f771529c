-- Declare a running job's owner dead: bump the fence (the dead owner, if it is a zombie, can no
-- longer write) and mark the job `orphaned` so another pod takes it over from its checkpoint.
-- Idempotent: a job that is not `running` (or does not match) is left alone, so two recoverers
-- can run at once without double effects.
-- KEYS: 1 job hash, 2 leases zset, 3 handoffs zset
-- ARGV: 1 prefix, 2 job id, 3 condition: 'lease' (its lease has expired) | 'owner' (owned by
--       the pod named ARGV[4] in namespace ARGV[7] with uid ARGV[8], by any instance but ARGV[5]
--       when ARGV[5] is not empty), 4 pod, 5 instance to spare, 6 reason (last_error),
--       7 namespace, 8 uid ('' when unknown), 9 '1' when a job whose owner recorded no namespace
--       may be taken (the pod name is not live in another namespace)
-- Reply: {'orphaned', new fence} | {'skipped', why}
--
-- Owner matching (mirrored by `Owner::same_pod` in model.rs): uids known on both sides decide;
-- else namespaces; a job without a namespace (an older sidecar) only with ARGV[9].

local job = KEYS[1]
local h = redis.call('HMGET', job, 'status', 'fence', 'owner_pod', 'owner_instance',
  'lease_expires_at', 'owner_namespace', 'owner_uid')
local status, fence, pod, instance, expires = h[1], h[2], h[3], h[4], h[5]
local namespace, uid = h[6] or '', h[7] or ''
if status ~= 'running' then
  return { 'skipped', 'status ' .. tostring(status) }
end
local now = now_ms()
if ARGV[3] == 'lease' then
  if (tonumber(expires) or 0) > now then
    return { 'skipped', 'lease live' }
  end
elseif ARGV[3] == 'owner' then
  if pod ~= ARGV[4] then
    return { 'skipped', 'other pod' }
  end
  if uid ~= '' and ARGV[8] ~= '' then
    if uid ~= ARGV[8] then
      return { 'skipped', 'other pod uid' }
    end
  elseif namespace ~= '' then
    if namespace ~= ARGV[7] then
      return { 'skipped', 'other namespace' }
    end
  elseif ARGV[9] ~= '1' then
    return { 'skipped', 'namespace unknown' }
  end
  if ARGV[5] ~= '' and instance == ARGV[5] then
    return { 'skipped', 'live instance' }
  end
else
  return redis.error_reply('unknown condition ' .. tostring(ARGV[3]))
end
if not (fence and string.match(fence, '^%d+$')) then
  return { 'skipped', 'corrupt fence' }
end
local next_fence = int(tonumber(fence) + 1)
redis.call('HSET', job, 'status', 'orphaned', 'fence', next_fence, 'updated_at', int(now),
  'lease_expires_at', '', 'last_error', ARGV[6])
if pod then
  redis.call('SREM', pod_jobs_key(ARGV[1], pod), ARGV[2])
end
redis.call('ZREM', KEYS[2], ARGV[2])
index_handoff(KEYS[3], job, ARGV[2])
return { 'orphaned', next_fence }
