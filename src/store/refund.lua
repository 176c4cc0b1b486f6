-- Takes back a failed call's reservation.
-- ARGV[1]: n, the number of counters; KEYS[1..n]: counters; ARGV[2..n+1]: units.
-- KEYS[n+1], when present: the call's idempotency marker, deleted so a retry is charged.
-- A counter that expired meanwhile is not recreated; a counter never goes below zero.
local n = tonumber(ARGV[1])
for i = 1, n do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    local v = redis.call('DECRBY', KEYS[i], ARGV[i + 1])
    if v < 0 then redis.call('SET', KEYS[i], 0, 'KEEPTTL') end
  end
end
if #KEYS > n then redis.call('DEL', KEYS[n + 1]) end
return 1
