-- An operator's correction of one counter (`POST /admin/v1/tenants/{t}/usage`): adds ARGV[1]
-- units (negative: a credit), never below zero, and keeps the counter until ARGV[2] (unix
-- seconds), as a reservation does. A credit to a counter that does not exist creates nothing.
-- Returns {applied, value}: the units actually added (a credit larger than the usage applies
-- only what was used) and the counter's new value. A counter that does not hold an integer is
-- an error (INCRBY's), and nothing changes.
local raw = redis.call('GET', KEYS[1])
local delta = tonumber(ARGV[1])
if raw == false and delta <= 0 then
  return {0, 0}
end
local before = 0
if raw then
  before = tonumber(raw) or 0
end
local v = redis.call('INCRBY', KEYS[1], ARGV[1])
if v < 0 then
  redis.call('SET', KEYS[1], 0, 'KEEPTTL')
  v = 0
end
redis.call('EXPIREAT', KEYS[1], ARGV[2])
return {v - before, v}
