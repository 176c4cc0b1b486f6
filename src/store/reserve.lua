-- Atomic check-and-reserve for a batch of calls, each charging one or more counters of one
-- tenant. Every call is decided on its own, in order, exactly as if it ran alone: all of its
-- counters fit their limits and are all incremented, or none is touched.
--
-- A call may carry an idempotency marker: if the marker exists, the call repeats one already
-- admitted and is a replay, charged nothing; if it is admitted, the marker is set.
--
-- A call may also carry a shared burst limit (`rate_limit.shared`), checked first: GCRA on
-- the server's clock, its state the theoretical arrival time (TAT) of the tenant's next call
-- in microseconds. A call over it is refused before anything else is looked at.
--
-- KEYS: per call, its burst key (only if it has a burst limit), its marker (only if it has
--       one), then its counters.
-- ARGV: number of calls, then per call: its number of counters n, its marker's expire-at
--       (unix seconds; 0: no marker), its burst interval in microseconds (0: no burst limit)
--       followed, when not 0, by the burst size; then per counter: units, limit (-1: never
--       blocks), expire-at (unix seconds).
-- Returns one string of space-separated words. Per call: a status word only when the call was
-- not admitted (`bU` refused by the burst limit, retry after U microseconds, and nothing else
-- for that call; `r` a replay, `dI` denied because counter I, 1-based, did not fit, `e` a
-- counter does not hold an integer), then its n counter values (after the reservation when
-- admitted, unchanged otherwise), then, when it has a burst limit, the calls left in it. An
-- admitted call, the common case, is just its values.
--
-- What this script costs Redis is what each batch waits for, so the common case is kept to
-- one INCRBY per counter and little else:
-- - each counter is incremented first and checked after, and a call that does not fit is
--   rolled back before the script ends. Nothing else runs between the two (a script is
--   atomic), so no other call can see the intermediate value. (Reading each counter with GET
--   first cost Redis a second command per counter and call.)
-- - arguments go to Redis as the strings they arrived as, and are turned into numbers only
--   where a number is compared (a Lua number passed to redis.call is formatted back into a
--   string);
-- - one string rather than a list of integers: the gateway parses a batch's reply on the
--   request path's thread, and one bulk reply costs it a fraction of one integer reply each;
--   and no status word for an admitted call: every number written costs Redis a float
--   formatting. (All three measured with redis-benchmark, 12 calls per script run: about a
--   third less Redis time per run than the script that wrote "1 0 <value>" per call with
--   string.format.)
local out = {}
local k = 0 -- KEYS consumed
local a = 2 -- next ARGV
local now = nil -- the server's clock in microseconds, read once, when a call needs it

-- The value of counter `key`, read: 0 when absent, nil when it does not hold an integer.
local function read(key)
  local raw = redis.pcall('GET', key)
  if raw == false then return 0 end
  if type(raw) ~= 'string' then return nil end
  local v = tonumber(raw)
  if v == nil or v ~= math.floor(v) then return nil end
  return v
end

-- Takes one call from the allowance at `key` (GCRA: each call moves the TAT on by `interval`;
-- a call is admitted while the TAT stays within `size` intervals of now). Returns the calls
-- left after it, or nil and the microseconds until one would be admitted.
local function take_burst(key, interval, size)
  if now == nil then
    local t = redis.call('TIME')
    now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  end
  local raw = redis.pcall('GET', key)
  local tat = type(raw) == 'string' and tonumber(raw) or now
  if tat < now then tat = now end
  local next_tat = tat + interval
  local allowed_at = next_tat - size * interval
  if now < allowed_at then
    return nil, allowed_at - now
  end
  redis.call('SET', key, string.format('%d', next_tat), 'PX',
    string.format('%d', math.ceil((next_tat - now) / 1000)))
  return math.floor((now - allowed_at) / interval), 0
end

for _ = 1, tonumber(ARGV[1]) do
  local n = tonumber(ARGV[a])
  local marker_exp = ARGV[a + 1]
  local interval = ARGV[a + 2]
  a = a + 3
  local left, wait = nil, 0
  if interval ~= '0' then
    k = k + 1
    left, wait = take_burst(KEYS[k], tonumber(interval), tonumber(ARGV[a]))
    a = a + 1
  end
  local marker = nil
  if marker_exp ~= '0' then
    k = k + 1
    marker = KEYS[k]
  end
  local used, status, denied = {}, 1, 0
  if wait > 0 then
    status = 3
  elseif marker and redis.call('EXISTS', marker) == 1 then
    -- A replay is charged nothing: report the counters as they are.
    status = 2
    for i = 1, n do
      local v = read(KEYS[k + i])
      if v == nil then status, v = -1, 0 end
      used[i] = v
    end
  else
    local done = 0 -- counters incremented so far
    for i = 1, n do
      local j = a + 3 * (i - 1) -- this counter's units; its limit and expire-at follow
      local v = redis.pcall('INCRBY', KEYS[k + i], ARGV[j])
      if type(v) == 'table' and v.err and string.sub(v.err, 1, 8) == 'READONLY' then
        -- A replica now (a failover): nothing can have been written. The error goes back as
        -- it is, so the gateway connects again, to the new primary.
        return redis.error_reply(v.err)
      end
      if type(v) ~= 'number' then
        status = -1 -- not an integer (or out of range): INCRBY changed nothing
        break
      end
      done = i
      used[i] = v
      local limit = ARGV[j + 1]
      if limit ~= '-1' and v > tonumber(limit) then
        status, denied = 0, i
        break
      end
    end
    if status == 1 then
      for i = 1, n do
        -- The expiry is the same for every call of a period: set it when the counter is
        -- created (or was refunded back to zero), not on every call.
        local j = a + 3 * (i - 1)
        if used[i] == tonumber(ARGV[j]) then
          redis.call('EXPIREAT', KEYS[k + i], ARGV[j + 2])
        end
      end
      if marker then redis.call('SET', marker, '1', 'EXAT', marker_exp) end
    else
      -- Undo every increment of this call; a counter this call created is removed again, so
      -- a refused call leaves Redis exactly as it found it.
      for i = 1, done do
        local key = KEYS[k + i]
        local units = ARGV[a + 3 * (i - 1)]
        local v = redis.call('DECRBY', key, units)
        if v == 0 and used[i] == tonumber(units) then redis.call('DEL', key) end
        used[i] = v
      end
      for i = done + 1, n do
        used[i] = read(KEYS[k + i]) or 0
      end
    end
  end
  if status == 3 then
    out[#out + 1] = 'b' .. string.format('%d', wait)
  elseif status == 2 then
    out[#out + 1] = 'r'
  elseif status == 0 then
    out[#out + 1] = 'd' .. denied
  elseif status == -1 then
    out[#out + 1] = 'e'
  end
  for i = 1, (status == 3 and 0 or n) do
    -- table.concat writes a number with %.14g: exact below 1e14, in exponent form above.
    local v = used[i]
    if v < 1e14 and v > -1e14 then
      out[#out + 1] = v
    else
      out[#out + 1] = string.format('%d', v)
    end
  end
  if left ~= nil then out[#out + 1] = left end
  k = k + n
  a = a + 3 * n
end
return table.concat(out, ' ')
