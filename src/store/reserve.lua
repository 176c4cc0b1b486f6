-- Atomic check-and-reserve of several counters (one tenant: one cluster slot).
-- KEYS[i]: counters. ARGV per key i: units (3i-2), limit or -1 for none (3i-1), expire-at unix s (3i).
-- Returns {1, 0, used_after...} when every charge fits and was added,
--      or {0, i, used...} naming the first charge that does not fit; then nothing was added.
local n = #KEYS
local used = {}
for i = 1, n do
  used[i] = tonumber(redis.call('GET', KEYS[i]) or '0')
end
for i = 1, n do
  local limit = tonumber(ARGV[3 * i - 1])
  if limit >= 0 and used[i] + tonumber(ARGV[3 * i - 2]) > limit then
    local out = {0, i}
    for j = 1, n do out[j + 2] = used[j] end
    return out
  end
end
local out = {1, 0}
for i = 1, n do
  out[i + 2] = redis.call('INCRBY', KEYS[i], ARGV[3 * i - 2])
  redis.call('EXPIREAT', KEYS[i], ARGV[3 * i])
end
return out
