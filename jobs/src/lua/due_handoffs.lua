-- The `deliver` jobs due to be offered again: let go (`interrupted` or `orphaned`) at least
-- `first` ago (their index score) and not claimed by any pod since. Each is rescheduled with a
-- backoff that doubles per offer (`handoff_offers` counts them) up to `max`, so a job no pod can
-- take costs one event per `max` at most: its score becomes the time that makes it due again
-- `first` later. An id whose job no longer waits (claimed, finished, gone, or not a `deliver`
-- job) leaves the index.
-- KEYS: 1 handoffs zset
-- ARGV: 1 prefix, 2 maximum number of jobs, 3 first (ms), 4 max (ms)
-- Reply: a flat list of job id, status (`interrupted` | `orphaned`), offers so far

local handoffs, prefix = KEYS[1], ARGV[1]
local first, cap = tonumber(ARGV[3]), tonumber(ARGV[4])
local now = now_ms()
local due = {}
local ids = redis.call('ZRANGEBYSCORE', handoffs, '-inf', int(now - first), 'LIMIT', 0, ARGV[2])
for _, id in ipairs(ids) do
  local job = job_key(prefix, id)
  local h = redis.call('HMGET', job, 'status', 'resume_mode', 'handoff_offers')
  if waits_for_a_pod(h[1], h[2]) then
    local offers = (tonumber(h[3]) or 0) + 1
    local delay = math.min(first * 2 ^ offers, cap)
    redis.call('HSET', job, 'handoff_offers', int(offers))
    redis.call('ZADD', handoffs, int(now + delay - first), id)
    table.insert(due, id)
    table.insert(due, h[1])
    table.insert(due, int(offers))
  else
    redis.call('ZREM', handoffs, id)
  end
end
return due
