-- lib.lua: prepended to every presence script (see scripts.go), so all of
-- them share one layout, one hash, one clock and one outbox format. The
-- read-only scripts (status, list) use only read_shards, hash and the
-- prefix; KEYS[1] and ARGV[1] mean the same in them.
--
-- Every script that includes it takes the same first five keys and two args:
--   KEYS[1]  epoch (STRING "<µs>:<shards>": marks the data set, fixes the shard count)
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
--   <p>d:<slot>:<b>     deadline index bucket (HASH id -> deadline - slot
--                       start, ms). A slot is SLOT_MS of deadlines; a user is
--                       filed in the slot of its deadline when its session
--                       starts. A refresh does not move it (it only extends
--                       the key's TTL): when the slot comes due, the sweep
--                       reads the key's TTL and files a user still online
--                       again, in the slot of its current deadline, and ends
--                       the session of a user whose key is gone. So each open
--                       session is in the index at a slot no later than its
--                       deadline, and a refresh costs one command.
--   <p>dir              which buckets exist, scored by the end of their slot,
--                       so a sweep reads only the buckets due.
--
-- Versions are Redis server time in microseconds, made strictly increasing
-- by the clock key, so one user's successive events always carry increasing
-- versions, even when the server clock steps back.
local T = redis.call('TIME')
local NOW_MS = tonumber(T[1]) * 1000 + math.floor(tonumber(T[2]) / 1000)
local NOW_US = tonumber(T[1]) * 1000000 + tonumber(T[2])
local P = ARGV[1]
local SLOT_MS = 100
local SHARDS = nil
local CLOCK = nil
local FIRST_V = nil
local EVENTS = {}
local COUNT_DELTA = 0
local FILED = {} -- bucket key -> {id, ms, id, ms, ...}, written by flush
local NFILED = {}

-- Event lines (see outbox.go): "<status> <reason> <userId>[ <deadline ms>]".
local ONLINE = 'online heartbeat '
local OFFLINE_DISCONNECT = 'offline disconnect '
local OFFLINE_EXPIRED = 'offline expired '

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
  return P .. 's:' .. (h % SHARDS)
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

-- file puts id in the index bucket of the slot holding deadline (ms);
-- flush writes each bucket with one HSET. A slot's users are spread over
-- SHARDS/256 buckets by their hash (64 by default): with the shard count
-- matching the load (peak online / 64), users spread evenly over a 60 s TTL
-- make ~26 per bucket, and bursts of new sessions up to ~80k/s stay under
-- Redis's 128-entry limit for compact hashes.
local function file(id, h, deadline)
  local slot = math.floor(deadline / SLOT_MS)
  local b = P .. 'd:' .. slot .. ':' .. (h % math.ceil(SHARDS / 256))
  local l = FILED[b]
  if l == nil then
    l = {}
    FILED[b] = l
    NFILED[b] = (slot + 1) * SLOT_MS
  end
  l[#l + 1] = id
  l[#l + 1] = deadline - slot * SLOT_MS
end

-- flush writes the index entries, the clock, the count and the queued
-- events (one outbox entry); every writing script calls it once, last.
local function flush()
  local dir = {}
  for b, l in pairs(FILED) do
    for i = 1, #l, 2000 do
      redis.call('HSET', b, unpack(l, i, math.min(i + 1999, #l)))
    end
    dir[#dir + 1] = NFILED[b]
    dir[#dir + 1] = b
    if #dir >= 2000 then
      redis.call('ZADD', KEYS[5], unpack(dir))
      dir = {}
    end
  end
  if #dir > 0 then
    redis.call('ZADD', KEYS[5], unpack(dir))
  end
  if FIRST_V ~= nil then
    redis.call('SET', KEYS[2], CLOCK)
    redis.call('XADD', KEYS[3], '*', 'v', FIRST_V, 'e', table.concat(EVENTS, '\n'))
  end
  if COUNT_DELTA ~= 0 then
    redis.call('INCRBY', KEYS[4], COUNT_DELTA)
  end
end

-- check_epoch runs first in every script. A missing epoch means the
-- presence data set is new or was lost (FLUSHALL, a restart without
-- persistence, a failover to an empty replica): the sessions it held are
-- unknowable, so instead of guessing, one "reset" event goes out before
-- anything else, and consumers resynchronise. Exactly one script call sees
-- the epoch missing, so the reset is published once. The epoch also fixes
-- the shard count for the life of the data set.
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
  redis.call('SET', KEYS[1], string.format('%d', NOW_US) .. ':' .. SHARDS)
  emit('reset data_loss ')
  return nil
end

-- end_session claims id's open session (exactly one caller gets a
-- version) and queues its offline event: line is OFFLINE_DISCONNECT or
-- OFFLINE_EXPIRED, deadline (ms) is recorded for offlines the sweep found.
local function end_session(id, h, line, deadline)
  if redis.call('HDEL', shard_key(h), id) == 0 then return 0 end
  COUNT_DELTA = COUNT_DELTA - 1
  if deadline then
    return emit(line .. id .. ' ' .. deadline)
  end
  return emit(line .. id)
end
