-- The limiter: admits a request against every limit of every subject atomically (all taken,
-- or none), and settles it (frees its slot and reservation, counts its real tokens).
-- The clock is Redis' own (TIME), so gateways on different machines agree.
--
-- KEYS[1]: the request's settled marker (settle is idempotent); KEYS[1 + i]: subject i's key
--   prefix, whose keys are <prefix>:req, :inflight, :reserved, :tok and :day:<YYYYMMDD>.
-- ARGV: 'admit' | 'lookup' | 'settle', clock offset ms (tests), window ms, token bucket ms,
--   lease ms, request id, tokens (admit: to reserve; settle: used), then per subject: rpm,
--   tpm, max_concurrent, daily_tokens (-1: none).
-- 'lookup' is an admit that also reads a response cache entry, KEYS[#KEYS], in the same
--   round trip: when it exists and the last ARGV is '1' (hits are free), the request is a
--   hit that reserves nothing and takes no lease (nothing to settle), so a cache hit costs
--   one round trip in all. It returns admit's reply plus the entry (nil: a miss, or refused).
-- admit returns {allowed 0|1, refused kind (1 requests, 2 tokens, 3 concurrent,
--   4 daily_tokens), refusing subject (1-based), retry after ms, requests limit, remaining,
--   reset ms, tokens limit, remaining, reset ms} (-1: no such limit); settle returns 1, or 0
--   when the request was settled already.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[2])
local window, bucket_ms, lease = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local rid, tokens = ARGV[6], tonumber(ARGV[7])
local nbuckets = math.floor(window / bucket_ms)
local cur = math.floor(now / bucket_ms)
local DAY_MS = 86400000
local DAY_TTL_S = 2 * 86400
local day = math.floor(now / DAY_MS)

local function int(x) return string.format('%d', x) end

-- 'YYYYMMDD' of a day number since 1970-01-01 (H. Hinnant's civil_from_days).
local function civil(z)
  z = z + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
    - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400 + (m <= 2 and 1 or 0)
  return string.format('%04d%02d%02d', y, m, d)
end
local day_key_suffix
local function day_suffix()
  day_key_suffix = day_key_suffix or (':day:' .. civil(day))
  return day_key_suffix
end

local function limits(i)
  local base = 7 + (i - 1) * 4
  return {rpm = tonumber(ARGV[base + 1]), tpm = tonumber(ARGV[base + 2]),
          conc = tonumber(ARGV[base + 3]), daily = tonumber(ARGV[base + 4])}
end

-- Drops leases past their expiry and their reservations; returns the leases left.
local function prune_leases(p)
  local inflight, reserved = p .. ':inflight', p .. ':reserved'
  while true do
    local expired = redis.call('ZRANGEBYSCORE', inflight, '-inf', now, 'LIMIT', 0, 1000)
    if #expired == 0 then break end
    redis.call('ZREM', inflight, unpack(expired))
    local freed = 0
    for _, a in ipairs(redis.call('HMGET', reserved, unpack(expired))) do
      if a then freed = freed + tonumber(a) end
    end
    redis.call('HDEL', reserved, unpack(expired))
    if freed > 0 then redis.call('HINCRBY', reserved, '#total', -freed) end
  end
  return redis.call('ZCARD', inflight)
end

-- Drops token buckets that left the window; returns the tokens left in it, and whether any
-- bucket is left. Invariant: every bucket lies in [#first, #last], shorter than the window.
local function prune_tokens(p)
  local tok = p .. ':tok'
  local meta = redis.call('HMGET', tok, '#first', '#last', '#sum')
  if not meta[1] then return 0, false end
  local first, last, sum = tonumber(meta[1]), tonumber(meta[2]), tonumber(meta[3])
  local oldest = cur - nbuckets + 1
  if first >= oldest then return sum, true end
  if last < oldest then redis.call('DEL', tok); return 0, false end
  local ids = {}
  for b = first, last do ids[#ids + 1] = int(b) end
  local gone, new_first = {}, last
  for k, v in ipairs(redis.call('HMGET', tok, unpack(ids))) do
    local b = first + k - 1
    if b < oldest then
      gone[#gone + 1] = ids[k]
      if v then sum = sum - tonumber(v) end
    elseif v and b < new_first then
      new_first = b
    end
  end
  redis.call('HDEL', tok, unpack(gone))
  redis.call('HSET', tok, '#first', int(new_first), '#sum', int(sum))
  return sum, true
end

-- When enough buckets leave the window to free ``excess`` tokens (ms).
local function tokens_free_in(p, excess)
  local meta = redis.call('HMGET', p .. ':tok', '#first', '#last')
  if meta[1] then
    local first, last = tonumber(meta[1]), tonumber(meta[2])
    local ids = {}
    for b = first, last do ids[#ids + 1] = int(b) end
    local acc = 0
    for k, v in ipairs(redis.call('HMGET', p .. ':tok', unpack(ids))) do
      if v then acc = acc + tonumber(v) end
      if acc >= excess then return (first + k - 1 + nbuckets) * bucket_ms - now end
    end
  end
  return 1000 -- reservations in flight hold the rest: they end with their requests
end

-- When the oldest counted usage leaves the window (ms; 0: nothing counted).
local function requests_reset(p)
  local oldest = redis.call('ZRANGE', p .. ':req', 0, 0, 'WITHSCORES')
  if #oldest == 0 then return 0 end
  return math.max(tonumber(oldest[2]) + window - now, 0)
end
local function tokens_reset(p)
  local first = redis.call('HGET', p .. ':tok', '#first')
  if not first then return 0 end
  return math.max((tonumber(first) + nbuckets) * bucket_ms - now, 0)
end

local op = ARGV[1]
local entry_key = op == 'lookup' and KEYS[#KEYS] or nil
local n = #KEYS - 1 - (entry_key and 1 or 0)
local entry = entry_key and redis.call('GET', entry_key) or false
local leases = true -- whether admission takes a lease (and reserves) that settle frees
if entry and ARGV[8 + 4 * n] == '1' then tokens, leases = 0, false end

local function settle()
  if not redis.call('SET', KEYS[1], 1, 'NX', 'PX', lease) then return 0 end
  for i = 1, n do
    local p, s = KEYS[1 + i], limits(i)
    redis.call('ZREM', p .. ':inflight', rid)
    local reserved = p .. ':reserved'
    local held = redis.call('HGET', reserved, rid)
    if held then
      redis.call('HDEL', reserved, rid)
      redis.call('HINCRBY', reserved, '#total', -tonumber(held))
    end
    if tokens > 0 and s.tpm >= 0 then
      local tok = p .. ':tok'
      local _, found = prune_tokens(p)
      redis.call('HINCRBY', tok, int(cur), tokens)
      redis.call('HINCRBY', tok, '#sum', tokens)
      if found then
        redis.call('HSET', tok, '#last', int(cur))
      else
        redis.call('HSET', tok, '#first', int(cur), '#last', int(cur))
      end
      redis.call('PEXPIRE', tok, window)
    end
    if tokens > 0 and s.daily >= 0 then
      if redis.call('INCRBY', p .. day_suffix(), tokens) == tokens then -- the day's first
        redis.call('EXPIRE', p .. day_suffix(), DAY_TTL_S)
      end
    end
  end
  return 1
end

-- Checks every limit of every subject; returns the refusal with the longest wait (or 0s).
local function check(state)
  local refused, refused_by, retry = 0, 0, 0
  local function refuse(kind, i, ms)
    if refused == 0 or ms > retry then refused, refused_by, retry = kind, i, ms end
  end
  for i = 1, n do
    local p, s = KEYS[1 + i], limits(i)
    state[i] = s
    if s.rpm >= 0 then
      redis.call('ZREMRANGEBYSCORE', p .. ':req', '-inf', now - window)
      s.count = redis.call('ZCARD', p .. ':req')
      if s.count >= s.rpm then refuse(1, i, requests_reset(p)) end
    end
    s.leased = s.conc >= 0 or s.tpm >= 0 or s.daily >= 0
    if s.leased then
      s.inflight = prune_leases(p)
      s.reserved = tonumber(redis.call('HGET', p .. ':reserved', '#total') or '0')
    end
    if s.tpm >= 0 then
      s.used = prune_tokens(p)
      local excess = s.used + s.reserved - s.tpm + 1
      if excess > 0 then refuse(2, i, tokens_free_in(p, excess)) end
    end
    if s.conc >= 0 and s.inflight >= s.conc then refuse(3, i, 1000) end
    if s.daily >= 0 then
      local today = tonumber(redis.call('GET', p .. day_suffix()) or '0')
      if today >= s.daily then
        refuse(4, i, (day + 1) * DAY_MS - now)
      elseif today + s.reserved >= s.daily then
        refuse(4, i, 1000)
      end
    end
  end
  return refused, refused_by, retry
end

-- Takes every limit of every subject.
local function take(state)
  for i = 1, n do
    local p, s = KEYS[1 + i], state[i]
    if s.rpm >= 0 then
      s.count = s.count + redis.call('ZADD', p .. ':req', now, rid) -- 0: a repeated id
      redis.call('PEXPIRE', p .. ':req', window)
    end
    if s.leased and leases then
      redis.call('ZADD', p .. ':inflight', now + lease, rid)
      redis.call('PEXPIRE', p .. ':inflight', lease)
      if tokens > 0 then
        local reserved, before = p .. ':reserved', 0
        if redis.call('HSETNX', reserved, rid, tokens) == 0 then -- a repeated id
          before = tonumber(redis.call('HGET', reserved, rid))
          redis.call('HSET', reserved, rid, tokens)
        end
        s.reserved = redis.call('HINCRBY', reserved, '#total', tokens - before)
        redis.call('PEXPIRE', reserved, lease)
      end
    end
  end
end

-- The headers' numbers: the most constrained subject for requests, and for tokens.
local function headers(state)
  local h, rq, tk = {-1, -1, -1, -1, -1, -1}, 0, 0
  for i = 1, n do
    local s = state[i]
    if s.rpm >= 0 then
      local left = math.max(s.rpm - s.count, 0)
      if h[2] < 0 or left < h[2] then h[1], h[2], rq = s.rpm, left, i end
    end
    if s.tpm >= 0 then
      local left = math.max(s.tpm - s.used - s.reserved, 0)
      if h[5] < 0 or left < h[5] then h[4], h[5], tk = s.tpm, left, i end
    end
  end
  if rq > 0 then h[3] = requests_reset(KEYS[1 + rq]) end
  if tk > 0 then h[6] = tokens_reset(KEYS[1 + tk]) end
  return h
end

if op == 'settle' then return settle() end
local state = {}
local refused, refused_by, retry = check(state)
if refused == 0 then take(state) end
local h = headers(state)
return {refused == 0 and 1 or 0, refused, refused_by, math.max(retry, 0),
        h[1], h[2], h[3], h[4], h[5], h[6], refused == 0 and leases and 1 or 0,
        refused == 0 and entry or false}
