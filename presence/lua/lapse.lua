-- lapse.lua: one step of ending the connections of a gateway lease that is
-- due (not renewed in time, replaced by a restarted gateway, or ended).
-- Requires lib.lua (see its connections layout).
--
-- ARGV[3]  index entries to read in this call, at most (whole buckets)
-- ARGV[4]  offline grace in ms (0: none)
-- ARGV[5]  lease time in ms
--
-- Takes the lease due first (ZSET <p>leases). The gateway's key is deleted
-- if it still names that lease, so its connections' next heartbeats do not
-- register under it. Then the lease's index buckets are read in order from
-- the lease's cursor: each connection still registered under the lease is
-- ended; a user left with no live connection goes offline with reason
-- "gateway_lost" (held for the grace), one with another live connection
-- keeps its session silently. A bucket read is deleted and the cursor
-- moves in the same call, so any replica may take any step and none reads
-- a bucket twice; after the last bucket the lease is forgotten.
--
-- Returns {ended, left, more}: connections ended, users left with no live
-- connection (their offline published, or held), and 1 when a lease is
-- still due (call again at once).
local err = check_epoch()
if err then return err end
local limit = tonumber(ARGV[3])
local grace = tonumber(ARGV[4])
local lease_ms = tonumber(ARGV[5])
-- A lease that lapsed during an outage (the gap between two sweeps that
-- sweep.lua recorded: NATS, Redis or every replica down, so no gateway
-- could renew) is extended to one lease time after the outage instead of
-- ending its connections: that would be an offline storm.
local from, to
local gap = redis.call('GET', P .. 'outage')
if gap then
  from, to = string.match(gap, '^(%d+) (%d+)$')
  from, to = tonumber(from), tonumber(to)
end
local lease, score
while true do
  local due = redis.call('ZRANGEBYSCORE', P .. 'leases', '-inf', string.format('%d', NOW_MS), 'WITHSCORES', 'LIMIT', 0, 1)
  if #due == 0 then
    flush()
    return {0, 0, 0}
  end
  lease, score = due[1], tonumber(due[2])
  if not (from and score > from and score < to + lease_ms) then break end
  redis.call('ZADD', P .. 'leases', string.format('%d', to + lease_ms), lease)
end
local ln = tonumber(lease)
local gw = redis.call('HGET', P .. 'leasegw', lease)
if gw then
  local cur = redis.call('GET', P .. 'gw:' .. gw)
  if cur and string.match(cur, '^(%d+)') == lease then
    redis.call('DEL', P .. 'gw:' .. gw)
  end
end
local b = tonumber(redis.call('HGET', P .. 'leasecur', lease) or '0')
-- BUCKETS_PER_CALL bounds the buckets one call reads, empty ones included.
local BUCKETS_PER_CALL = 4096
local ended, offline, read, stop = 0, 0, 0, b + BUCKETS_PER_CALL
while b < SHARDS and b < stop and read < limit do
  local bk = string.format('%sg:%s:%d', P, lease, b)
  local e = redis.call('HGETALL', bk)
  -- The bucket's users share one sessions shard (b = hash mod shards) and
  -- at most CONN_SPREAD connections shards, so the records and summaries
  -- are read with one HMGET and removed with one HDEL per connections
  -- shard, and the sessions of the users left without a connection are
  -- claimed with one HMGET and one HDEL: besides those, a user whose last
  -- connection this was (most) costs one GETDEL of its key.
  local groups, order = {}, {}
  for j = 1, #e, 2 do
    local field = e[j]
    local id = string.sub(field, 1, string.find(field, ' ', 1, true) - 1)
    local h = hash(id)
    local ck = conn_key(h)
    local g = groups[ck]
    if not g then
      g = {ck = ck, args = {}, hs = {}}
      groups[ck] = g
      order[#order + 1] = g
    end
    g.args[#g.args + 1] = field
    g.args[#g.args + 1] = id
    g.hs[#g.hs + 1] = h
  end
  local gone, gone_h = {}, {} -- users whose last connection ended here
  for _, g in ipairs(order) do
    local v = redis.call('HMGET', g.ck, unpack(g.args))
    local del = {}
    for i = 1, #g.hs do
      local field, id, h = g.args[2 * i - 1], g.args[2 * i], g.hs[i]
      local rec, sum = v[2 * i - 1], v[2 * i]
      if rec and tonumber(string.match(rec, '^(%d+)')) == ln then
        ended = ended + 1
        local n = 1
        if sum then n = tonumber(string.match(sum, '^(%d+)')) end
        if n <= 1 then
          del[#del + 1] = field
          del[#del + 1] = id
          gone[#gone + 1] = id
          gone_h[#gone_h + 1] = h
        else
          -- the user has other connections (two on this gateway, even):
          -- one at a time, reading again
          redis.call('HDEL', g.ck, field)
          -- another program's key of another type is left alone
          -- (last_gone refuses it; others_after would set its expiry)
          local t = key_type(user_key(id))
          if not ((t ~= 'none' and t ~= 'string') or others_after(id, h, n)) then
            last_gone(id, h, OFFLINE_GATEWAY_LOST, 'gateway_lost', grace)
            offline = offline + 1
          end
        end
      end
    end
    if #del > 0 then redis.call('HDEL', g.ck, unpack(del)) end
  end
  if #gone > 0 then
    offline = offline + #gone
    if grace > 0 then
      for i, id in ipairs(gone) do
        last_gone(id, gone_h[i], OFFLINE_GATEWAY_LOST, 'gateway_lost', grace, true)
      end
    else
      -- last_gone without a grace, for the bucket at once: GETDEL each key
      -- (another program's key is refused, and its session left to the
      -- sweep), then claim the sessions together
      local claim = {}
      for _, id in ipairs(gone) do
        local old = redis.pcall('GETDEL', user_key(id))
        if not (type(old) == 'table' and old.err) then claim[#claim + 1] = id end
      end
      if #claim > 0 then
        local sk = shard_key(gone_h[1])
        local sv = redis.call('HMGET', sk, unpack(claim))
        local ended_ids = {}
        for i, id in ipairs(claim) do
          if sv[i] then ended_ids[#ended_ids + 1] = id end
        end
        if #ended_ids > 0 then
          redis.call('HDEL', sk, unpack(ended_ids))
          COUNT_DELTA = COUNT_DELTA - #ended_ids
          for _, id in ipairs(ended_ids) do emit(OFFLINE_GATEWAY_LOST .. id) end
        end
      end
    end
  end
  read = read + #e / 2
  if #e > 0 then redis.call('DEL', bk) end
  b = b + 1
end
local more = 1
if b >= SHARDS then
  redis.call('ZREM', P .. 'leases', lease)
  redis.call('HDEL', P .. 'leasegw', lease)
  redis.call('HDEL', P .. 'leasen', lease)
  redis.call('HDEL', P .. 'leasecur', lease)
  if redis.call('ZCOUNT', P .. 'leases', '-inf', string.format('%d', NOW_MS)) == 0 then more = 0 end
else
  redis.call('HSET', P .. 'leasecur', lease, string.format('%d', b))
end
flush()
return {ended, offline, more}
