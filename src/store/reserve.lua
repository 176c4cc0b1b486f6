-- Atomic check-and-reserve for a batch of calls, each charging one or more counters of one
-- tenant. Every call is decided on its own, in order, exactly as if it ran alone: all of its
-- counters fit their limits and are all incremented, or none is touched.
--
-- A call may carry an idempotency marker: if the marker exists, the call repeats one already
-- admitted and is a replay, charged nothing; if it is admitted, the marker is set.
--
-- KEYS: per call, its marker (only if it has one), then its counters.
-- ARGV: number of calls, then per call: its number of counters n, its marker's expire-at
--       (unix seconds; 0: no marker), then per counter: units, limit (-1: never blocks),
--       expire-at (unix seconds).
-- Returns one string of space-separated integers, per call: status (1 admitted, 2 replay,
-- 0 denied, -1 a counter is not an integer), the 1-based index of the counter that did not fit
-- (0 if none), then the n counter values (after the reservation when admitted, unchanged
-- otherwise). One string rather than a list of integers: the gateway parses a batch's reply on
-- the request path's thread, and one bulk reply costs it a fraction of one integer reply each.
local out = {}
local k = 0 -- KEYS consumed
local a = 2 -- next ARGV
for _ = 1, tonumber(ARGV[1]) do
  local n = tonumber(ARGV[a])
  local marker_exp = tonumber(ARGV[a + 1])
  a = a + 2
  local marker = nil
  if marker_exp > 0 then
    k = k + 1
    marker = KEYS[k]
  end
  local used, status, denied = {}, 1, 0
  for i = 1, n do
    local raw = redis.pcall('GET', KEYS[k + i])
    local v = 0
    if type(raw) == 'string' then v = tonumber(raw) end
    if type(raw) == 'table' or v == nil or v ~= math.floor(v) then
      status, v = -1, 0
    end
    used[i] = v
  end
  if status == 1 and marker and redis.call('EXISTS', marker) == 1 then
    status = 2
  end
  if status == 1 then
    for i = 1, n do
      local limit = tonumber(ARGV[a + 3 * (i - 1) + 1])
      if limit >= 0 and used[i] + tonumber(ARGV[a + 3 * (i - 1)]) > limit then
        status, denied = 0, i
        break
      end
    end
  end
  if status == 1 then
    for i = 1, n do
      local key = KEYS[k + i]
      local units = tonumber(ARGV[a + 3 * (i - 1)])
      used[i] = redis.call('INCRBY', key, units)
      -- The expiry is the same for every call of a period: set it when the counter is created
      -- (or was refunded back to zero), not on every call.
      if used[i] == units then redis.call('EXPIREAT', key, ARGV[a + 3 * (i - 1) + 2]) end
    end
    if marker then redis.call('SET', marker, '1', 'EXAT', marker_exp) end
  end
  out[#out + 1] = status
  out[#out + 1] = denied
  for i = 1, n do out[#out + 1] = string.format('%d', used[i]) end
  k = k + n
  a = a + 3 * n
end
return table.concat(out, ' ')
