-- conns.lua: connections, gateway leases, held offlines and disconnect
-- tombstones; prepended after lib.lua to every script that includes the
-- library (see scripts.go), so its helpers may use everything lib.lua
-- defines.
--
-- Layout (only for users that ever had a connection id, a gateway, a
-- sequence or a held offline; a user heartbeating with plain ids costs
-- nothing more than lib.lua's layout):
--   <p>c:<h % (4*shards)>  connections shard (HASH; see CONN_SPREAD):
--                         "<id>"        -> "<n>", the number of connection
--                                          records of id, or "0 <reason>
--                                          <until ms>" while its offline is
--                                          held (see hold)
--                         "<id> <conn>" -> "<lease> <seq> <deadline ms>
--                                          <since ms>[ <gatewayId>]" per
--                                          connection (conn "" is the
--                                          implicit connection of plain
--                                          heartbeats; the gateway id is
--                                          kept only for a gateway without
--                                          a lease, lease 0)
--                       A record whose deadline passed is a dead connection,
--                       pruned when the user's connections are next listed.
--                       The user key's TTL is the latest live deadline.
--   <p>g:<lease>:<h % shards>  lease index (HASH "<id> <conn>" -> "1"): the
--                       connections registered under a gateway lease, read
--                       whole when the lease is lost.
--   <p>gw:<gatewayId>   a gateway's current lease, "<lease> <instanceId>",
--                       PX the lease time.
--   <p>leases           ZSET lease -> its expiry (ms): the sweep ends the
--                       connections of a lease once it is due.
--   <p>leasegw          HASH lease -> gatewayId; <p>leasen HASH lease ->
--                       connections registered under it; <p>leasecur HASH
--                       lease -> the lapse sweep's next bucket; all three
--                       forgotten with the lease.
--   <p>t:<window>:<h % TOMB_SHARDS>  tombstones (HASH "<id> <conn>" -> seq of
--                       the disconnect), so a heartbeat the disconnect
--                       overtook does not reopen the connection; a window is
--                       one TTL long and kept two.
--   <p>conns, <p>holds  markers (see conns_on): until they exist, scripts
--                       skip the connection and hold steps.
--   A deadline index entry filed under "<id> C" instead of the id is a
--   check entry (see CHECK).

-- Per-entry results of the connection scripts besides versions, 0 and
-- KEY_CONFLICT: the user has MAX_CONNS live connections and this one is new
-- (nothing written); the entry's seq is not above the last applied for its
-- connection (ignored).
local TOO_MANY = -2
local STALE = -3
-- TOMB_SHARDS: buckets per tombstone window.
local TOMB_SHARDS = 1024

-- Two markers let plain users skip every connection step: <p>conns exists
-- once a named connection, a gateway or a sequence was stored (a plain
-- refresh then checks for the user's implicit record); <p>holds once an
-- offline was held (the paths where a key is gone then check for a hold).
local CONNS, HOLDS = nil, nil
local function conns_on()
  if CONNS == nil then CONNS = redis.call('EXISTS', P .. 'conns') == 1 end
  return CONNS
end
local function holds_on()
  if HOLDS == nil then HOLDS = redis.call('EXISTS', P .. 'holds') == 1 end
  return HOLDS
end
-- any_on: the data set may hold a summary field for some user.
local function any_on()
  return conns_on() or holds_on()
end

local function conns_mark()
  if not conns_on() then
    redis.call('SET', P .. 'conns', '1')
    CONNS = true
  end
end
local function holds_mark()
  if not holds_on() then
    redis.call('SET', P .. 'holds', '1')
    HOLDS = true
  end
end

-- CONN_SPREAD: connections shards per sessions shard. A user with
-- connections has a summary field and a record per connection, about 2.3
-- fields; four times the shards keep a shard near 40 fields when the
-- shard count matches the load, a compact listpack under Redis's default
-- hash-max-listpack-entries of 128.
local CONN_SPREAD = 4
local function conn_key(h)
  return string.format('%sc:%d', P, h % (SHARDS * CONN_SPREAD))
end

local function lease_key(lease, h)
  return string.format('%sg:%d:%d', P, lease, h % SHARDS)
end

-- parse_rec splits a connection record "<lease> <seq> <deadline> <since>[
-- <gatewayId>]": lease, seq, deadline, since, and the gateway id of a
-- connection whose gateway holds no lease (lease 0; "" for none).
local function parse_rec(r)
  local l, q, d, s, g = string.match(r, '^(%d+) (%d+) (%d+) (%d+) ?(%S*)$')
  return tonumber(l), tonumber(q), tonumber(d), tonumber(s), g
end

local function fmt_rec(lease, seq, deadline, since, gw)
  if lease == 0 and gw ~= nil and gw ~= '' then
    return string.format('0 %d %d %d %s', seq, deadline, since, gw)
  end
  return string.format('%d %d %d %d', lease, seq, deadline, since)
end

-- summary reads id's summary field: its record count (nil: the user has no
-- connection data) and, while its offline is held, the reason and until.
local function summary(id, h)
  local v = redis.call('HGET', conn_key(h), id)
  if not v then return nil end
  local n, reason, untl = string.match(v, '^(%d+) ?(%S*) ?(%d*)$')
  if reason == '' then return tonumber(n) end
  return tonumber(n), reason, tonumber(untl)
end

local function set_summary(id, h, n)
  if n > 0 then
    redis.call('HSET', conn_key(h), id, string.format('%d', n))
  else
    redis.call('HDEL', conn_key(h), id)
  end
end

-- index_conn adds or removes (delta 1 or -1) a connection in its lease's
-- index; lease 0 (no gateway, or a gateway without a lease) has none.
local function index_conn(lease, id, h, field, delta)
  if lease == nil or lease <= 0 then return end
  if delta > 0 then
    redis.call('HSET', lease_key(lease, h), field, '1')
  else
    redis.call('HDEL', lease_key(lease, h), field)
  end
  redis.call('HINCRBY', P .. 'leasen', string.format('%d', lease), string.format('%d', delta))
end

-- each_conn calls fn(field, record) for every connection record of id (one
-- HSCAN of its connections shard, matching "<id> *": ids and connection
-- ids hold no glob characters).
local function each_conn(id, h, fn)
  local key = conn_key(h)
  local cur = '0'
  repeat
    local r = redis.call('HSCAN', key, cur, 'MATCH', id .. ' *', 'COUNT', 1000)
    cur = r[1]
    local kv = r[2]
    for j = 1, #kv, 2 do fn(kv[j], kv[j + 1]) end
  until cur == '0'
end

-- list_conns returns id's live connections as {conn, lease, seq, deadline,
-- since} tables; the records of dead ones (deadline <= NOW_MS) are removed.
local function list_conns(id, h)
  local live = {}
  each_conn(id, h, function(f, rec)
    local lease, seq, dl, since = parse_rec(rec)
    if dl and dl > NOW_MS then
      live[#live + 1] = {string.sub(f, #id + 2), lease, seq, dl, since}
    else
      redis.call('HDEL', conn_key(h), f)
      index_conn(lease, id, h, f, -1)
    end
  end)
  return live
end

-- drop_conns removes every connection record of id and its summary.
local function drop_conns(id, h)
  if not any_on() then return end
  each_conn(id, h, function(f, rec)
    redis.call('HDEL', conn_key(h), f)
    index_conn(parse_rec(rec), id, h, f, -1)
  end)
  redis.call('HDEL', conn_key(h), id)
end

-- extend_conns moves the deadline of every connection record of id to
-- deadline (the grace after an outage: its connections could not
-- heartbeat either).
local function extend_conns(id, h, deadline)
  each_conn(id, h, function(f, rec)
    local lease, seq, _, since, gw = parse_rec(rec)
    if lease then redis.call('HSET', conn_key(h), f, fmt_rec(lease, seq, deadline, since, gw)) end
  end)
end

-- tomb_keys are the tombstone buckets of this window and the one before.
local function tomb_keys(h, ttl)
  local w = math.floor(NOW_MS / ttl)
  local b = h % TOMB_SHARDS
  return string.format('%st:%d:%d', P, w, b), string.format('%st:%d:%d', P, w - 1, b), (w + 2) * ttl
end

-- tombstone returns the seq of the disconnect that ended field's
-- connection within the last one to two TTLs, or 0.
local function tombstone(h, field, ttl)
  local cur, prev = tomb_keys(h, ttl)
  local a = tonumber(redis.call('HGET', cur, field) or '0')
  local b = tonumber(redis.call('HGET', prev, field) or '0')
  return math.max(a, b)
end

local function bury(h, field, seq, ttl)
  local cur, _, expires = tomb_keys(h, ttl)
  redis.call('HSET', cur, field, string.format('%d', seq))
  redis.call('PEXPIREAT', cur, string.format('%d', expires))
end

-- CHECK is the suffix of a check entry's field in the deadline index,
-- "<id> C" (ids hold no spaces): a one-shot look at a session at a
-- deadline earlier than its own entry's (a held offline's end, a key whose
-- expiry moved earlier). It never takes the place of the session's entry
-- (which is filed under the bare id) and is dropped once read, unless a
-- hold is still running; see sweep.lua.
local CHECK = ' C'

-- last_gone: id's last live connection ended (line and reason say how: a
-- disconnect or a gateway lost). The presence key goes. With grace > 0 and
-- the key still there (a connection that had expired already is not held
-- again), the session stays open and its offline is held until NOW_MS +
-- grace, by the summary "0 <reason> <until>" and a check entry due then; a
-- connection within it continues the session (revive). Else the session
-- ends now (its summary too, unless the caller removed it: summary_gone).
-- Returns the offline's version, or 0.
local function last_gone(id, h, line, reason, grace, summary_gone)
  -- GETDEL deletes a string and refuses any other type (WRONGTYPE): another
  -- program's key is left alone, and so is the session on it (the sweep
  -- ends a session whose key is not presenced's).
  local old = redis.pcall('GETDEL', user_key(id))
  if type(old) == 'table' and old.err then return 0 end
  local existed = old ~= false
  if grace > 0 and existed then
    local sv = redis.call('HGET', shard_key(h), id)
    if sv then
      local untl = NOW_MS + grace
      redis.call('HSET', conn_key(h), id, string.format('0 %s %d', reason, untl))
      holds_mark()
      file(id .. CHECK, h, untl, sv)
      return 0
    end
  end
  if not summary_gone and any_on() then set_summary(id, h, 0) end
  return end_session(id, h, line)
end

-- others_after: id lost one connection record (already removed) and had n
-- before; returns whether a live connection remains, and if so moves the
-- presence key's expiry to the latest live deadline (with a check entry
-- there when that is earlier than the key's: the session's own entry may
-- sit at the later one) and writes the count.
local function others_after(id, h, n)
  if n <= 1 then return false end
  local live = list_conns(id, h)
  if #live == 0 then return false end
  local latest = 0
  for _, c in ipairs(live) do
    if c[4] > latest then latest = c[4] end
  end
  set_summary(id, h, #live)
  local k = user_key(id)
  local pttl = redis.call('PTTL', k)
  if pttl > 0 and NOW_MS + pttl > latest then
    local sv = redis.call('HGET', shard_key(h), id)
    if sv then file(id .. CHECK, h, latest, sv) end
  end
  redis.call('PEXPIREAT', k, string.format('%d', latest))
  return true
end

-- release ends connection conn of id (seq: the disconnect's sequence, 0
-- for none) by a disconnect. A seq not above the connection's last applied
-- one is STALE (nothing changes); any other seq is buried, so a heartbeat
-- it overtook does not reopen the connection. The user's offline comes
-- when no live connection remains (held for grace). A plain user's
-- implicit connection is its presence key. Returns the offline's version,
-- 0, or STALE.
local function release(id, h, conn, seq, ttl, grace)
  local field = id .. ' ' .. conn
  local n, held = nil, nil
  if any_on() then n, held = summary(id, h) end
  local rec = n and redis.call('HGET', conn_key(h), field)
  if seq > 0 then
    if rec and select(2, parse_rec(rec)) >= seq then return STALE end
    bury(h, field, seq, ttl)
  end
  if held then return 0 end
  if n == nil or n == 0 then
    if conn ~= '' then return 0 end
    return last_gone(id, h, OFFLINE_DISCONNECT, 'disconnect', grace)
  end
  if not rec then return 0 end
  redis.call('HDEL', conn_key(h), field)
  index_conn(parse_rec(rec), id, h, field, -1)
  if others_after(id, h, n) then return 0 end
  return last_gone(id, h, OFFLINE_DISCONNECT, 'disconnect', grace)
end

-- revive: a connection came for id while its key was gone and its session
-- open (its offline held, or its key lapsed and not claimed yet): the
-- session continues without events. A held offline is dropped and so are
-- the records of connections that died meanwhile.
local function revive(id, h)
  if not any_on() then return end
  local n, held = summary(id, h)
  if n == nil then return end
  if held then
    set_summary(id, h, 0)
  else
    drop_conns(id, h)
  end
end

-- close_user ends id's session with line (an expiry), after removing its
-- connection records. Returns the offline's version, or 0.
local function close_user(id, h, line, deadline)
  drop_conns(id, h)
  return end_session(id, h, line, deadline)
end
