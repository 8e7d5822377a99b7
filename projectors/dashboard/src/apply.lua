-- One batch of prism-dashboard, applied atomically (Redis runs a script alone).
--
-- Checks first, writes after: a refused batch writes nothing.
--   1. the fence: the partition's stored offset is the one the writer last read;
--   2. the version guard: each account's stored version is the one the fold started from.
-- Then the account states, the summed increments, the expiries, the feed entries and the
-- position. Everything arrives in ARGV, in sections each preceded by its length:
--
--   pos_key expected_offset offset event_id event_time writer updated_at
--   n_accounts  (key expected_version version currency status) * n
--   n_hincr     (key field increment) * n
--   n_zincr     (key member increment) * n
--   n_pfadd     (key n_members member * n_members) * n
--   n_expire    (key unix_seconds) * n
--   feed_key feed_max n_entries (n_fields (field value) * n_fields) * n_entries
--
-- pos_key is empty for a batch from no partition (a rebuild). Returns {'ok'},
-- {'fenced', stored_offset} or {'stale', account_key, stored_version}.

local a = ARGV
local i = 1
local function take()
  local v = a[i]
  i = i + 1
  return v
end

-- (Lua leaves the order of evaluation within one expression list unspecified: every
-- take() below is a statement of its own.)
local pos_key = take()
local expected_offset = take()
local offset = take()
local event_id = take()
local event_time = take()
local writer = take()
local updated_at = take()
if pos_key ~= '' then
  local stored = redis.call('HGET', pos_key, 'offset') or ''
  if stored ~= expected_offset then
    return {'fenced', stored}
  end
end

local n_accounts = tonumber(take())
local accounts_at = i
for _ = 1, n_accounts do
  local key = take()
  local expected = take()
  i = i + 3
  local stored = redis.call('HGET', key, 'v') or '0'
  if stored ~= expected then
    return {'stale', key, stored}
  end
end

i = accounts_at
for _ = 1, n_accounts do
  local key = take()
  i = i + 1
  local version = take()
  local currency = take()
  local status = take()
  redis.call('HSET', key, 'v', version, 'c', currency, 's', status)
end

for _ = 1, tonumber(take()) do
  local key = take()
  local field = take()
  local by = take()
  redis.call('HINCRBY', key, field, by)
end

for _ = 1, tonumber(take()) do
  local key = take()
  local member = take()
  local by = take()
  redis.call('ZINCRBY', key, by, member)
end

for _ = 1, tonumber(take()) do
  local key = take()
  local n = tonumber(take())
  -- unpack has a stack limit: add members in slices.
  local from = i
  while from < i + n do
    local to = math.min(from + 999, i + n - 1)
    redis.call('PFADD', key, unpack(a, from, to))
    from = to + 1
  end
  i = i + n
end

for _ = 1, tonumber(take()) do
  local key = take()
  local at = take()
  redis.call('EXPIREAT', key, at)
end

local feed_key = take()
local feed_max = take()
for _ = 1, tonumber(take()) do
  local n = tonumber(take())
  redis.call('XADD', feed_key, 'MAXLEN', '=', feed_max, '*', unpack(a, i, i + 2 * n - 1))
  i = i + 2 * n
end

if pos_key ~= '' then
  redis.call('HSET', pos_key, 'offset', offset, 'writer', writer, 'updated_at', updated_at)
  if event_id ~= '' then
    redis.call('HSET', pos_key, 'event_id', event_id, 'event_time', event_time)
  end
end
return {'ok'}
