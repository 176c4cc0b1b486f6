-- Settles response-measured meters: KEYS[i] counters, ARGV[i] measured minus reserved units.
-- A counter may go past its limit here (the units were used; the next call is refused), never
-- below zero; a counter that expired meanwhile is not recreated.
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    local v = redis.call('INCRBY', KEYS[i], ARGV[i])
    if v < 0 then redis.call('SET', KEYS[i], 0, 'KEEPTTL') end
  end
end
return 1
