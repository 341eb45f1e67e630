-- lib.lua: prepended to every presence script that writes (see scripts.go),
-- so all of them share one layout, one clock and one outbox format.
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
local EVENTS = {}
local COUNT_DELTA = 0
local DIR_SEEN = {}

-- hash of a user id (djb2 mod 2^32; exact in Lua's doubles).
local function hash(id)
  local h = 5381
  for i = 1, #id do
    h = (h * 33 + string.byte(id, i)) % 4294967296
  end
  return h
end

local function shard_key(h)
  return P .. 's:' .. (h % SHARDS)
end

local function user_key(id)
  return P .. 'user:' .. id
end

local function next_version()
  if CLOCK == nil then
    CLOCK = tonumber(redis.call('GET', KEYS[2]) or '0')
  end
  local v = NOW_US
  if v <= CLOCK then v = CLOCK + 1 end
  CLOCK = v
  return v
end

-- emit queues one event for the outbox; flush writes them all as one entry.
-- deadline (ms) is recorded for offlines the sweep found, to measure lag.
local function emit(status, id, reason, deadline, v)
  v = v or next_version()
  EVENTS[#EVENTS + 1] = status .. ' ' .. id .. ' ' .. string.format('%d', v) .. ' ' .. reason .. ' ' .. (deadline and string.format('%d', deadline) or '')
  return v
end

-- file puts id in the index bucket of the slot holding deadline (ms).
-- Buckets of a slot are spread by the user's hash, about 60 users each when
-- the shard count matches the load; ttl_ms sizes the spread.
local function file(id, h, deadline, ttl_ms)
  local slot = math.floor(deadline / SLOT_MS)
  local spread = math.max(1, math.ceil(SHARDS * SLOT_MS / ttl_ms))
  local b = P .. 'd:' .. slot .. ':' .. (h % spread)
  redis.call('HSET', b, id, deadline - slot * SLOT_MS)
  if not DIR_SEEN[b] then
    DIR_SEEN[b] = true
    redis.call('ZADD', KEYS[5], (slot + 1) * SLOT_MS, b)
  end
end

-- flush persists the clock, the count and the queued events (one outbox
-- entry); every script calls it once before returning.
local function flush()
  if CLOCK ~= nil then
    redis.call('SET', KEYS[2], string.format('%d', CLOCK))
  end
  if COUNT_DELTA ~= 0 then
    redis.call('INCRBY', KEYS[4], COUNT_DELTA)
  end
  if #EVENTS > 0 then
    redis.call('XADD', KEYS[3], '*', 'e', table.concat(EVENTS, '\n'))
  end
end

-- check_epoch runs first in every script. A missing epoch means the
-- presence data set is new or was lost (FLUSHALL, a restart without
-- persistence, a failover to an empty replica): the sessions it held are
-- unknowable, so instead of guessing, one "reset" event goes out before
-- anything else, and consumers resynchronise. Exactly one script call sees
-- the epoch missing, so the reset is published once. The epoch also fixes
-- the shard count for the life of the data set.
local function check_epoch()
  local ep = redis.call('GET', KEYS[1])
  if ep then
    SHARDS = tonumber(string.match(ep, ':(%d+)$'))
    if SHARDS == nil then
      return redis.error_reply('ERR presence data set ' .. KEYS[1] .. ' has no shard count (written by an older presenced); flush the presence keys')
    end
    return nil
  end
  SHARDS = tonumber(ARGV[2])
  redis.call('SET', KEYS[1], string.format('%d', NOW_US) .. ':' .. SHARDS)
  emit('reset', '', 'data_loss')
  return nil
end

-- end_session claims id's open session (exactly one caller gets true) and
-- queues its offline event.
local function end_session(id, h, reason, deadline)
  if redis.call('HDEL', shard_key(h), id) == 0 then return 0 end
  COUNT_DELTA = COUNT_DELTA - 1
  return emit('offline', id, reason, deadline)
end
