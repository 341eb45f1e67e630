-- sweep.lua: the reconciler's step. Claims users whose deadline has passed
-- and emits their offline events, or, after an outage, grants grace instead.
-- Requires lib.lua (KEYS[1..5]).
--
-- KEYS[6]  sweep marker (STRING, NOW_MS of the last sweep by any replica)
-- KEYS[7]  grace cutoff (STRING, present while a grace pass is running)
-- ARGV[1]  maximum number of users to handle in this call
-- ARGV[2]  outage threshold in ms: a gap between sweeps longer than this
--          means no replica could see heartbeats (NATS cut, Redis down,
--          every replica stopped)
-- ARGV[3]  TTL in ms (the grace granted)
-- ARGV[4]  presence key prefix, e.g. "presence:user:" (keys restored on grace)
--
-- Grace: when the gap is detected, every user with a deadline up to now gets
-- a new deadline now+TTL and its key back, instead of an offline event: those
-- users could not heartbeat, so they are not known to be gone. Users still
-- connected refresh within the TTL; the rest go offline one TTL later.
-- The cost of a call is O(log N + handled): users not due are never read.
--
-- Returns {claimed, graced, more}: more is 1 when the limit was reached and
-- the caller should call again at once.
check_epoch()
local limit = tonumber(ARGV[1])
local outage = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local last = redis.call('GET', KEYS[6])
redis.call('SET', KEYS[6], string.format('%d', NOW_MS))
local cutoff = redis.call('GET', KEYS[7])
if cutoff == false and last and NOW_MS - tonumber(last) > outage then
  cutoff = string.format('%d', NOW_MS)
  redis.call('SET', KEYS[7], cutoff)
end
if cutoff then
  local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', cutoff, 'LIMIT', 0, limit)
  local deadline = string.format('%d', NOW_MS + ttl)
  for _, id in ipairs(ids) do
    redis.call('ZADD', KEYS[1], 'XX', deadline, id)
    redis.call('SET', ARGV[4] .. id, '1', 'PX', ttl)
  end
  save_clock()
  if #ids < limit then
    redis.call('DEL', KEYS[7])
    return {0, #ids, 0}
  end
  return {0, #ids, 1}
end
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', NOW_MS, 'WITHSCORES', 'LIMIT', 0, limit)
for i = 1, #due, 2 do
  end_session(due[i], 'expired', due[i + 1])
end
save_clock()
local n = #due / 2
local more = 0
if n == limit then more = 1 end
return {n, 0, more}
