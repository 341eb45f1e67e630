-- reannounce.lua: one step of the walk that follows a partial-loss reset
-- (reset.lua): every session opened before the reset gets a new online
-- event (reason "resync"), since consumers cleared it on the reset.
-- Requires lib.lua.
--
-- KEYS[6]  re-announce cursor (STRING "<reset version>:<next shard>:<the
--          reset's outbox entry>"; absent when no walk is due)
-- ARGV[3]  sessions shards to walk in this call, at most
-- ARGV[4]  TTL in ms (a session whose key has no TTL is refiled one TTL on)
-- ARGV[5]  the outbox's consumer group
--
-- The walk starts once the reset has been published (its entry delivered
-- and acknowledged in the consumer group), so that consumers get the reset
-- before any re-announcement, whichever replicas publish them.
--
-- Each session in the shards walked whose version is below the reset's gets
-- a new online event; its session field takes the new version and it is
-- filed in the index with it (the entry it had carries the old version and
-- is dropped when its slot comes due), at its key's deadline, or due at once
-- when its key is gone (the sweep then decides, as for any session). The
-- cursor moves past the shards walked in the same step, and is deleted
-- after the last shard: any replica can take the next step, none walks a
-- shard twice, and a replica dying between steps leaves the cursor where it
-- was. Sessions opened after the reset carry higher versions and are left
-- alone, and so is a session re-announced once, should a shard be walked
-- again after a newer reset restarted the walk.
--
-- Returns {announced, more, waiting}: more is 1 while shards remain;
-- waiting is 1 when the reset is not published yet (nothing was done).
local err = check_epoch()
if err then return err end
local cur = redis.call('GET', KEYS[6])
if not cur then
  flush()
  return {0, 0, 0}
end
local rv, s, rid = string.match(cur, '^(%d+):(%d+):(.+)$')
rv, s = tonumber(rv), tonumber(s)
-- Has the reset been published? Its entry must be delivered to the group
-- (at or below the group's last delivered id) and not pending.
local function waiting()
  local groups = redis.pcall('XINFO', 'GROUPS', KEYS[3])
  if groups.err then return true end
  local last = nil
  for _, g in ipairs(groups) do
    local name, ld
    for i = 1, #g, 2 do
      if g[i] == 'name' then name = g[i + 1] elseif g[i] == 'last-delivered-id' then ld = g[i + 1] end
    end
    if name == ARGV[5] then last = ld end
  end
  if last == nil then return true end
  local lm, ls = string.match(last, '^(%d+)-(%d+)$')
  local rm, rs = string.match(rid, '^(%d+)-(%d+)$')
  lm, ls, rm, rs = tonumber(lm), tonumber(ls), tonumber(rm), tonumber(rs)
  if lm < rm or (lm == rm and ls < rs) then return true end
  return #redis.call('XPENDING', KEYS[3], ARGV[5], rid, rid, 1) > 0
end
if waiting() then
  flush()
  return {0, 1, 1}
end
local ttl = tonumber(ARGV[4])
local stop = math.min(s + tonumber(ARGV[3]), SHARDS)
local n = 0
for sh = s, stop - 1 do
  local key = string.format('%ss:%d', P, sh)
  local kv = redis.call('HGETALL', key)
  local upd = {}
  for j = 1, #kv, 2 do
    if tonumber(kv[j + 1]) < rv then
      local id = kv[j]
      local v = string.format('%d', emit('online resync ' .. id))
      local pttl = redis.call('PTTL', user_key(id))
      local deadline = NOW_MS
      if pttl > 0 then
        deadline = NOW_MS + pttl
      elseif pttl == -1 then
        deadline = NOW_MS + ttl
      end
      file(id, hash(id), deadline, v)
      upd[#upd + 1] = id
      upd[#upd + 1] = v
      n = n + 1
      if #upd >= 1000 then
        redis.call('HSET', key, unpack(upd))
        upd = {}
      end
    end
  end
  if #upd > 0 then
    redis.call('HSET', key, unpack(upd))
  end
end
local more = 1
if stop >= SHARDS then
  redis.call('DEL', KEYS[6])
  more = 0
else
  redis.call('SET', KEYS[6], string.format('%d:%d:', rv, stop) .. rid)
end
flush()
return {n, more, 0}
