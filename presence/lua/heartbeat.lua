-- heartbeat.lua: start or refresh the presence of a batch of users, atomically
-- with the deadline index and the outbox. Requires lib.lua (KEYS[1..5]).
--
-- KEYS[6..5+n]  the users' presence keys, presence:user:{userId}, in ARGV order
-- ARGV[1]       TTL in milliseconds
-- ARGV[2..1+n]  user ids (the caller removes duplicates)
--
-- Every key gets SET key 1 PX ttl (the seed's format); the index gets the
-- deadline now+ttl. A user not in the index starts a new session: its online
-- event is appended to the outbox in the same step. A user still in the index
-- (a refresh, or a key that lapsed but whose offline was not claimed yet)
-- continues its session silently.
--
-- Returns {now_ms, r1, ..., rn}: ri is the online event's version when user i
-- started a session, 0 when it was a refresh.
check_epoch()
local ttl = tonumber(ARGV[1])
local deadline = string.format('%d', NOW_MS + ttl)
local n = #ARGV - 1
local ids, zargs = {}, {}
for i = 1, n do
  ids[i] = ARGV[i + 1]
  zargs[2 * i - 1] = deadline
  zargs[2 * i] = ids[i]
end
-- One ZMSCORE and one variadic ZADD per call instead of a ZADD per id: on
-- the refresh path Redis is the bottleneck.
local scores = redis.call('ZMSCORE', KEYS[1], unpack(ids))
redis.call('ZADD', KEYS[1], unpack(zargs))
local res = {NOW_MS}
for i = 1, n do
  redis.call('SET', KEYS[i + 5], '1', 'PX', ttl)
  if scores[i] == false then
    local v = emit('online', ids[i], 'heartbeat')
    redis.call('HSET', KEYS[2], ids[i], string.format('%d', v))
    res[#res + 1] = v
  else
    res[#res + 1] = 0
  end
end
save_clock()
return res
