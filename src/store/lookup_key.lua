-- A runtime API key and its tenant's plan override in one round trip.
-- KEYS[1]: tg:key:<sha256 hex>. Returns {tenant, id, plan or ''}, or nil when no such key.
-- (It reads the tenant's hash, which is not in KEYS: fine on one Redis server; on a Redis
-- Cluster the store makes two look-ups instead, see `RedisStore::lookup_key`.)
local r = redis.call('HMGET', KEYS[1], 'tenant', 'id')
if not r[1] then return false end
local plan = redis.call('HGET', 'tg:{' .. r[1] .. '}:tenant', 'plan')
return {r[1], r[2] or '', plan or ''}
