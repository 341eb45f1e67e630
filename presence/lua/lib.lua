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
-- Connections, gateway leases, held offlines and tombstones: see
-- conns.lua, prepended after this file.
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
-- end_session, and the connection helpers of conns.lua; FIRST_V, EVENTS, OUTBOX_ID, COUNT_DELTA, FILED, OFFSETS and
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
