-- lib.lua: prepended to every presence script (see scripts.go), so all of
-- them share one layout, one hash, one clock and one outbox format. The
-- read-only scripts (status, list) use only read_shards, hash and the
-- prefix; KEYS[1] and ARGV[1] mean the same in them.
--
-- Every script that includes it takes the same first five keys and two args:
--   KEYS[1]  epoch (STRING "<version>:<shards>": marks the data set with the
--            version of the reset that announced it, fixes the shard count)
--   KEYS[2]  version clock (STRING, the last version handed out)
--   KEYS[3]  outbox (STREAM of event batches waiting to be published)
--   KEYS[4]  online count (STRING, the number of open sessions)
--   KEYS[5]  index directory (ZSET bucket key -> end of its slot, ms)
--   ARGV[1]  key prefix, e.g. "presence:"
--   ARGV[2]  shard count to use when this call creates the data set
--
-- Layout, per user (the seed's key plus about 40 bytes):
--   <p>user:<id>        "1" PX ttl: the seed's key; while it exists the user
--                       is online, and its TTL is the deadline.
--   <p>s:<h % shards>   sessions shard (HASH id -> version of the session's
--                       online event). A field is an open session; removing
--                       it (HDEL returning 1) is the claim, so exactly one
--                       caller ends each session. Shards hold ~64 users when
--                       the shard count matches the load, so Redis keeps
--                       them as compact listpacks.
--   <p>d:<slot>:<b>     deadline index bucket (HASH id -> the session's
--                       version followed by two digits, the deadline's ms
--                       into the slot: "<version><00..99>", an integer Redis
--                       keeps in 8 bytes in a listpack). A slot is SLOT_MS of
--                       deadlines; a user is filed in the slot of its
--                       deadline when its session starts. A refresh does not
--                       move it (it only extends the key's TTL): when the
--                       slot comes due, the sweep drops an entry whose
--                       version is not the user's open session's (the
--                       session ended, or a later one has its own entry),
--                       files a user still online again, in the slot of its
--                       current deadline, and ends the session of a user
--                       whose key is gone. So each open session has exactly
--                       one entry once the slots of the sessions before it
--                       have come due, at a slot no later than its
--                       deadline, and a refresh costs one command.
--   <p>dir              which buckets exist, scored by the end of their slot,
--                       so a sweep reads only the buckets due.
--
-- Connections (only for users that ever had a connection id, a gateway, a
-- sequence or a held offline; a user heartbeating with plain ids costs
-- nothing more than the above):
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
--
-- A presence key that holds another type than a string (another program's
-- hash under the prefix) is not presenced's: the scripts never write or
-- delete it, refuse its id (KEY_CONFLICT), and the sweep treats it as gone.
--
-- Versions are Redis server time in microseconds, made strictly increasing
-- by the clock key, so one user's successive events always carry increasing
-- versions, even when the server clock steps back.
--
-- The protocol of a writing script (heartbeat, disconnect, sweep, claim,
-- reset, reannounce):
--   1. local err = check_epoch(); if err then return err end  -- first
--   2. its body, through the names below
--   3. flush()                                                 -- last, once
-- Names it may use: NOW_MS, NOW_US (this call's Redis time), P (the
-- prefix), SLOT_MS, SHARDS (set by check_epoch), KEY_CONFLICT, TOO_MANY,
-- STALE, CHECK, the event line prefixes ONLINE, OFFLINE_DISCONNECT,
-- OFFLINE_EXPIRED, OFFLINE_KICKED, OFFLINE_GATEWAY_LOST, and hash,
-- shard_key, user_key, key_type, peek_version, emit, file, entry_version,
-- end_session, and the connection helpers (conns_on ... close_user, below
-- the epoch); FIRST_V, EVENTS, OUTBOX_ID, COUNT_DELTA, FILED, OFFSETS and
-- the markers' cache are this call's state, which emit, file and
-- end_session fill and flush writes. Every writing script flushes before
-- each return, or what check_epoch queued (a data-loss reset) is lost.
-- The read-only scripts (status, list) call read_shards and use hash,
-- conn_key, parse_rec and P only. Errors a script raises are reported by the store as
-- "<script>.lua:<line>" (or "lib.lua:<line>"), not as the line of the
-- combined text Redis runs.
local T = redis.call('TIME')
local NOW_MS = tonumber(T[1]) * 1000 + math.floor(tonumber(T[2]) / 1000)
local NOW_US = tonumber(T[1]) * 1000000 + tonumber(T[2])
local P = ARGV[1]
local SLOT_MS = 100
local SHARDS = nil
local CLOCK = nil
local FIRST_V = nil
local EVENTS = {}
local OUTBOX_ID = nil -- the id of the outbox entry flush wrote, if any
local COUNT_DELTA = 0
local FILED = {} -- slot -> {hash of its first id, id, ms, id, ms, ...}, written by flush
local OFFSETS = {} -- offset into a slot (ms) -> its two digits, filled as used

-- KEY_CONFLICT is a per-id result of the heartbeat and disconnect scripts:
-- the id's presence key holds another type, and nothing of that id changed.
local KEY_CONFLICT = -1

-- Event lines (see outbox.go): "<status> <reason> <userId>[ <deadline ms>]".
local ONLINE = 'online heartbeat '
local OFFLINE_DISCONNECT = 'offline disconnect '
local OFFLINE_EXPIRED = 'offline expired '
local OFFLINE_KICKED = 'offline kicked '
local OFFLINE_GATEWAY_LOST = 'offline gateway_lost '

-- Per-entry results of the connection scripts besides versions, 0 and
-- KEY_CONFLICT: the user has MAX_CONNS live connections and this one is new
-- (nothing written); the entry's seq is not above the last applied for its
-- connection (ignored).
local TOO_MANY = -2
local STALE = -3
-- TOMB_SHARDS: buckets per tombstone window.
local TOMB_SHARDS = 1024

-- hash of a user id (djb2 mod 2^32, four bytes a step; exact in Lua's
-- doubles, since 2^32 * 33^4 < 2^53).
local function hash(id)
  local h, n = 5381, #id
  local i = 1
  while i + 3 <= n do
    local a, b, c, d = string.byte(id, i, i + 3)
    h = ((((h * 33 + a) * 33 + b) * 33 + c) * 33 + d) % 4294967296
    i = i + 4
  end
  while i <= n do
    h = (h * 33 + string.byte(id, i)) % 4294967296
    i = i + 1
  end
  return h
end

local function shard_key(h)
  return string.format('%ss:%d', P, h % SHARDS)
end

local function user_key(id)
  return P .. 'user:' .. id
end

-- peek_version is the version the next event will get. Versions of one
-- script call are consecutive (only the first can jump, to NOW_US), so an
-- outbox entry stores the first and each event's is first + its position.
local function peek_version()
  if CLOCK == nil then
    CLOCK = tonumber(redis.call('GET', KEYS[2]) or '0')
  end
  if NOW_US > CLOCK then return NOW_US end
  return CLOCK + 1
end

-- emit queues one event line for the outbox and returns its version;
-- flush writes the call's events as one entry.
local function emit(line)
  local v = peek_version()
  CLOCK = v
  if FIRST_V == nil then FIRST_V = v end
  EVENTS[#EVENTS + 1] = line
  return v
end

-- file puts id in the index of the slot holding deadline (ms); flush
-- writes it. Which bucket of the slot an entry lands in does not matter to
-- anyone (the sweep reads whole slots; nothing looks a user up by bucket),
-- so flush writes a call's entries of one slot in runs of FILE_RUN, each run
-- with one HSET into the next of the slot's ceil(SHARDS/256) buckets (64 by
-- default), starting at a bucket picked by the first id's hash: a call of
-- 100 new users costs 13 HSETs instead of one per bucket touched (~55), and
-- a call of 512 or more fills every bucket of the slot evenly. With the
-- shard count matching the load (peak online / 64) and users spread over a
-- 60 s TTL a bucket holds ~26 entries; in a burst of 40k new users/s in
-- 100-id calls a bucket gets 65 on average, and more than Redis's 128 for a
-- compact listpack (17 runs, 4 standard deviations) is rare: such a bucket
-- becomes a hash table until its slot comes due (more memory for a while,
-- same behaviour).
-- version is the session's version as the sessions shard holds it (a
-- string of digits): the entry is that version followed by the two digits
-- of the deadline's offset into the slot (see entry_version).
local FILE_RUN = 8
-- SHARDS_PER_BUCKET: a slot has one index bucket per this many sessions
-- shards (64 buckets a slot at the default 16384 shards).
local SHARDS_PER_BUCKET = 256
-- ZADD_ARGS: flush adds directory entries in ZADDs of at most this many
-- arguments (score, member pairs), to bound one command's size.
local ZADD_ARGS = 2000
local function file(id, h, deadline, version)
  local slot = math.floor(deadline / SLOT_MS)
  local l = FILED[slot]
  if l == nil then
    l = {h}
    FILED[slot] = l
  end
  local off = deadline - slot * SLOT_MS
  local o = OFFSETS[off]
  if o == nil then
    o = string.format('%02d', off)
    OFFSETS[off] = o
  end
  l[#l + 1] = id
  l[#l + 1] = version .. o
end

-- entry_version splits an index entry into the session version it was
-- filed for (a string, as the sessions shard holds it) and the deadline's
-- offset into the slot (ms).
-- An entry of one or two digits (an offset alone) carries no version and
-- stands for whichever session is open.
local function entry_version(e)
  if #e <= 2 then return nil, tonumber(e) end
  return string.sub(e, 1, -3), tonumber(string.sub(e, -2))
end

-- key_type is the type of a presence key: 'none', 'string' (presenced's,
-- or a string another program wrote), or another type (not presenced's).
local function key_type(k)
  return redis.call('TYPE', k)['ok']
end

-- flush writes the index entries, the clock, the count and the queued
-- events (one outbox entry); every writing script calls it once, last.
-- Numbers are passed to redis.call as strings made with '%d': Redis formats
-- a Lua number argument with "%.17g", which costs more than the command.
local function flush()
  local dir = {}
  local nb = math.ceil(SHARDS / SHARDS_PER_BUCKET)
  for slot, l in pairs(FILED) do
    local r = l[1] % nb
    local ends = string.format('%d', (slot + 1) * SLOT_MS)
    for i = 2, #l, 2 * FILE_RUN do
      local b = string.format('%sd:%d:%d', P, slot, r)
      redis.call('HSET', b, unpack(l, i, math.min(i + 2 * FILE_RUN - 1, #l)))
      dir[#dir + 1] = ends
      dir[#dir + 1] = b
      r = (r + 1) % nb
      if #dir >= ZADD_ARGS then
        redis.call('ZADD', KEYS[5], unpack(dir))
        dir = {}
      end
    end
  end
  if #dir > 0 then
    redis.call('ZADD', KEYS[5], unpack(dir))
  end
  if FIRST_V ~= nil then
    redis.call('SET', KEYS[2], string.format('%d', CLOCK))
    OUTBOX_ID = redis.call('XADD', KEYS[3], '*', 'v', string.format('%d', FIRST_V), 'e', table.concat(EVENTS, '\n'))
  end
  if COUNT_DELTA ~= 0 then
    redis.call('INCRBY', KEYS[4], string.format('%d', COUNT_DELTA))
  end
end

-- check_epoch runs first in every script. A missing epoch means the
-- presence data set is new or was lost (FLUSHALL, a restart without
-- persistence, a failover to an empty replica): the sessions it held are
-- unknowable, so instead of guessing, one "reset" event goes out before
-- anything else, and consumers resynchronise. Exactly one script call sees
-- the epoch missing, so the reset is published once. The epoch records
-- that reset's version (reset.lua rewrites it with the version of the reset
-- that announces a partial loss) and fixes the shard count for the life of
-- the data set.
-- read_shards returns the shard count recorded in the epoch key, or nil
-- when there is no data set (or it has no shard count).
local function read_shards()
  local ep = redis.call('GET', KEYS[1])
  return ep and tonumber(string.match(ep, ':(%d+)$')), ep
end

local function check_epoch()
  local shards, ep = read_shards()
  if ep then
    SHARDS = shards
    if SHARDS == nil then
      return redis.error_reply('ERR presence data set ' .. KEYS[1] .. ' has no shard count (written by an older presenced); flush the presence keys')
    end
    return nil
  end
  SHARDS = tonumber(ARGV[2])
  local v = emit('reset data_loss ')
  redis.call('SET', KEYS[1], string.format('%d', v) .. ':' .. SHARDS)
  return nil
end

-- Connections (see the layout above). ---------------------------------

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

-- end_session claims id's open session (exactly one caller gets a
-- version) and queues its offline event: line is OFFLINE_DISCONNECT or
-- OFFLINE_EXPIRED, deadline (ms) is recorded for offlines the sweep found.
local function end_session(id, h, line, deadline)
  if redis.call('HDEL', shard_key(h), id) == 0 then return 0 end
  COUNT_DELTA = COUNT_DELTA - 1
  if deadline then
    return emit(line .. id .. ' ' .. string.format('%d', deadline))
  end
  return emit(line .. id)
end

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
  if seq > 0 then
    local rec = n and redis.call('HGET', conn_key(h), field)
    if rec and select(2, parse_rec(rec)) >= seq then return STALE end
    bury(h, field, seq, ttl)
  end
  if held then return 0 end
  if n == nil or n == 0 then
    if conn ~= '' then return 0 end
    return last_gone(id, h, OFFLINE_DISCONNECT, 'disconnect', grace)
  end
  local rec = redis.call('HGET', conn_key(h), field)
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
