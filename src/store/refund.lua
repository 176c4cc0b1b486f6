-- Takes back reserved units. KEYS[i]: counters; ARGV[i]: units.
-- A counter that expired meanwhile is not recreated; a counter never goes below zero.
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    local v = redis.call('DECRBY', KEYS[i], ARGV[i])
    if v < 0 then redis.call('SET', KEYS[i], 0, 'KEEPTTL') end
  end
end
return 1
