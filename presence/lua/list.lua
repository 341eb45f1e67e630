-- list.lua: one page of the open sessions, read-only (no lib.lua). Walks the
-- sessions shards in order: a compact shard (128 ids or fewer) whole with
-- HKEYS, a larger one with HSCAN in steps of about the limit.
--
-- KEYS[1]  epoch (STRING "<µs>:<shards>", see lib.lua)
-- ARGV[1]  key prefix
-- ARGV[2]  shard to continue from (0 to start)
-- ARGV[3]  HSCAN cursor within that shard (0 to start)
-- ARGV[4]  limit: steps are taken until the page holds at least this many
--          ids, so a page may exceed it by one step (a compact shard: at
--          most 128 ids, about 64 when the shard count matches the load)
--
-- Returns {shard, cursor, id1, id2, ...}: where the next page starts; shard
-- -1 when the listing is complete. A user online for the whole listing is
-- returned at least once (exactly once unless an oversized shard is resized
-- during the listing); one who comes or goes during it may or may not be.
local ep = redis.call('GET', KEYS[1])
local shards = ep and tonumber(string.match(ep, ':(%d+)$'))
if not shards then return {-1, '0'} end
local s = tonumber(ARGV[2])
local cur = ARGV[3]
local limit = tonumber(ARGV[4])
local res = {-1, '0'}
local n = 0
while s < shards and n < limit do
  local key = ARGV[1] .. 's:' .. s
  if cur == '0' and redis.call('HLEN', key) <= 128 then
    -- a compact shard: all its ids at once, without their values
    local ids = redis.call('HKEYS', key)
    for j = 1, #ids do res[n + 3] = ids[j]; n = n + 1 end
    s = s + 1
  else
    local r = redis.call('HSCAN', key, cur, 'COUNT', limit - n)
    local kv = r[2]
    for j = 1, #kv, 2 do res[n + 3] = kv[j]; n = n + 1 end
    cur = r[1]
    if cur == '0' then s = s + 1 end
  end
end
if s < shards then
  res[1] = s
  res[2] = cur
end
return res
