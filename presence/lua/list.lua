-- list.lua: one page of the open sessions, read-only. Requires lib.lua
-- (read_shards and the prefix only). Walks the sessions shards in order: a
-- compact shard (128 ids or fewer) whole with HKEYS, a larger one with HSCAN
-- in steps of about the limit.
--
-- KEYS[1]  epoch (STRING "<version>:<shards>", see lib.lua)
-- ARGV[1]  key prefix
-- ARGV[2]  shard to continue from (0 to start)
-- ARGV[3]  HSCAN cursor within that shard (0 to start)
-- ARGV[4]  limit: steps are taken until the page holds at least this many
--          ids, so a page may exceed it by one step (a compact shard: at
--          most 128 ids, about 64 when the shard count matches the load)
--
-- Returns {shard, cursor, ids}: where the next page starts (shard -1 when
-- the listing is complete) and the page's ids joined by newlines (one bulk
-- reply instead of one per id; ids never contain newlines, see
-- ValidateUserID). A user online for the whole listing is
-- returned at least once (exactly once unless an oversized shard is resized
-- during the listing); one who comes or goes during it may or may not be.
-- LISTPACK_ENTRIES: Redis's default hash-max-listpack-entries; a shard no
-- larger is a compact listpack, read whole with one HKEYS.
local LISTPACK_ENTRIES = 128
local shards = read_shards()
if not shards then return {-1, '0', ''} end
local s = tonumber(ARGV[2])
local cur = ARGV[3]
local limit = tonumber(ARGV[4])
local parts = {}
local n = 0
while s < shards and n < limit do
  local key = P .. 's:' .. s
  if cur == '0' and redis.call('HLEN', key) <= LISTPACK_ENTRIES then
    -- a compact shard: all its ids at once, without their values
    local ids = redis.call('HKEYS', key)
    if #ids > 0 then
      parts[#parts + 1] = table.concat(ids, '\n')
      n = n + #ids
    end
    s = s + 1
  else
    local r = redis.call('HSCAN', key, cur, 'COUNT', limit - n)
    local kv = r[2]
    local ids = {}
    for j = 1, #kv, 2 do ids[#ids + 1] = kv[j] end
    if #ids > 0 then
      parts[#parts + 1] = table.concat(ids, '\n')
      n = n + #ids
    end
    cur = r[1]
    if cur == '0' then s = s + 1 end
  end
end
if s < shards then
  return {s, cur, table.concat(parts, '\n')}
end
return {-1, '0', table.concat(parts, '\n')}
