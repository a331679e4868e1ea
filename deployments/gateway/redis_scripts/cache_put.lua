-- Stores one response and keeps the cache's total size under its bound by evicting the
-- oldest entries (never Redis' global eviction, which would drop rate-limit counters).
--
-- KEYS[1]: the entry, KEYS[2]: the index (sorted set: entry id -> expiry ms),
-- KEYS[3]: the sizes (hash: entry id -> bytes, and '#total').
-- ARGV: value, ttl ms, max total bytes, entry id, the entries' key prefix.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local value, ttl, max_bytes, id, prefix = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]),
  ARGV[4], ARGV[5]
local index, sizes = KEYS[2], KEYS[3]
local size = #value
if size > max_bytes then return 0 end

local total = tonumber(redis.call('HGET', sizes, '#total') or '0')
local function forget(ids)
  if #ids == 0 then return end
  for _, s in ipairs(redis.call('HMGET', sizes, unpack(ids))) do
    if s then total = total - tonumber(s) end
  end
  redis.call('HDEL', sizes, unpack(ids))
  redis.call('ZREM', index, unpack(ids))
end

-- Entries whose TTL passed (their data is gone already), and the one this put replaces.
forget(redis.call('ZRANGEBYSCORE', index, '-inf', now, 'LIMIT', 0, 100))
forget({id})
-- The oldest entries, until this one fits.
while total + size > max_bytes do
  local oldest = redis.call('ZPOPMIN', index)
  if #oldest == 0 then redis.call('DEL', sizes); total = 0; break end -- out of step
  forget({oldest[1]})
  redis.call('DEL', prefix .. oldest[1])
end

redis.call('SET', KEYS[1], value, 'PX', ttl)
redis.call('ZADD', index, now + ttl, id)
redis.call('HSET', sizes, id, size, '#total', total + size)
return 1
