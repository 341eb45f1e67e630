-- sweep.lua: the reconciler's step. Reads the index buckets whose slot has
-- ended, files users still online again at their current deadline, and
-- claims the sessions of users whose key is gone, or, after an outage,
-- grants grace instead. Requires lib.lua.
--
-- KEYS[6]  sweep marker (STRING, NOW_MS of the last sweep by any replica)
-- KEYS[7]  grace cutoff (STRING, present while a grace pass is running)
-- ARGV[3]  index entries to read in this call, at most (whole buckets are read)
-- ARGV[4]  outage threshold in ms: a gap between sweeps longer than this
--          means no replica could see heartbeats (NATS cut, Redis down,
--          every replica stopped)
-- ARGV[5]  TTL in ms (the grace granted)
--
-- Grace: when the gap is detected, every user whose key is gone and whose
-- slot ended before the detection gets its key back for one TTL instead of
-- an offline event: those users could not heartbeat, so they are not known
-- to be gone. Users still connected refresh within the TTL; the rest go
-- offline one TTL later.
-- The cost of a call is O(log B + entries read), B the number of buckets:
-- users whose slot has not ended are never read.
--
-- Returns {claimed, graced, more}: more is 1 when the limit was reached and
-- the caller should call again at once.
local err = check_epoch()
if err then return err end
local limit = tonumber(ARGV[3])
local outage = tonumber(ARGV[4])
local ttl = tonumber(ARGV[5])
local last = redis.call('GET', KEYS[6])
redis.call('SET', KEYS[6], string.format('%d', NOW_MS))
local cutoff = redis.call('GET', KEYS[7])
if cutoff == false and last and NOW_MS - tonumber(last) > outage then
  cutoff = string.format('%d', NOW_MS)
  redis.call('SET', KEYS[7], cutoff)
end
local upto = cutoff or string.format('%d', NOW_MS)
local buckets = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', upto, 'WITHSCORES', 'LIMIT', 0, 256)
local claimed, graced, read = 0, 0, 0
local i = 1
while i <= #buckets and read < limit do
  local b = buckets[i]
  local start = tonumber(buckets[i + 1]) - SLOT_MS
  local e = redis.call('HGETALL', b)
  for j = 1, #e, 2 do
    local id = e[j]
    local k = user_key(id)
    local pttl = redis.call('PTTL', k)
    if pttl > 0 then
      file(id, hash(id), NOW_MS + pttl)
    elseif pttl == -1 then
      -- persisted by someone else: keep watching it at one TTL from now
      file(id, hash(id), NOW_MS + ttl)
    elseif cutoff then
      local h = hash(id)
      if redis.call('HGET', shard_key(h), id) then
        redis.call('SET', k, '1', 'PX', ARGV[5])
        file(id, h, NOW_MS + ttl)
        graced = graced + 1
      end
    elseif end_session(id, hash(id), OFFLINE_EXPIRED, start + tonumber(e[j + 1])) ~= 0 then
      claimed = claimed + 1
    end
  end
  read = read + #e / 2
  redis.call('DEL', b)
  redis.call('ZREM', KEYS[5], b)
  i = i + 2
end
local more = 0
if i <= #buckets or #buckets == 512 then more = 1 end
if cutoff and more == 0 then
  redis.call('DEL', KEYS[7])
end
flush()
return {claimed, graced, more}
