-- sweep.lua: the reconciler's step. Reads the index buckets whose slot has
-- ended, drops the entries that are not their user's open session's (see
-- the layout in lib.lua), files users still online again at their current
-- deadline, and claims the sessions of users whose key is gone, or, after
-- an outage, grants grace instead. A key of another type than a string
-- without a TTL is not presenced's (presenced's keys always have one) and
-- counts as gone: its session is claimed, never graced, and the key is
-- left as it is. (One with a TTL keeps the session until it expires.)
-- Requires lib.lua.
--
-- KEYS[6]  sweep marker (STRING, NOW_MS of the last sweep by any replica)
-- KEYS[7]  grace cutoff (STRING, present while a grace pass is running)
-- KEYS[8]  re-announce cursor (STRING, present while the walk after a
--          partial-loss reset is under way; see reannounce.lua)
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
-- A user whose offline is held (its last connection ended, see last_gone
-- in lib.lua) keeps its entries until the hold ends; then its session ends
-- with the hold's reason, counted as claimed. A check entry (see CHECK in
-- lib.lua) ends a session whose key is gone like any entry, and is dropped
-- otherwise. A user whose key is gone loses its connection records with
-- its session.
--
-- Returns {claimed, graced, more, walk}: more is 1 when the limit was
-- reached and the caller should call again at once; walk is 1 while the
-- re-announce walk is under way (the caller takes its steps).
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
  -- the gap, for the gateway leases that lapsed in it (see lapse.lua)
  redis.call('SET', P .. 'outage', last .. ' ' .. cutoff)
end
local upto = cutoff or string.format('%d', NOW_MS)
-- DIR_PAGE: the most due buckets one call reads from the directory (the
-- reply holds a member and a score for each).
local DIR_PAGE = 256
local buckets = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', upto, 'WITHSCORES', 'LIMIT', 0, DIR_PAGE)
local claimed, graced, read = 0, 0, 0
local i = 1
while i <= #buckets and read < limit do
  local b = buckets[i]
  local start = tonumber(buckets[i + 1]) - SLOT_MS
  local e = redis.call('HGETALL', b)
  for j = 1, #e, 2 do
    local f = e[j]
    local id = f
    local check = string.sub(f, -#CHECK) == CHECK
    if check then id = string.sub(f, 1, -#CHECK - 1) end
    local ev, off = entry_version(e[j + 1])
    local h = hash(id)
    local k = user_key(id)
    local pttl = redis.call('PTTL', k)
    if pttl == -1 and key_type(k) ~= 'string' then
      -- another program's key of another type, without a TTL: not
      -- presenced's (which always has one), so the session is gone
      pttl = -2
    end
    local held, untl
    if pttl == -2 and any_on() then
      local _
      _, held, untl = summary(id, h)
    end
    if held then
      -- the user's last connection ended and its offline is held: the
      -- entry (the hold's check entry, or the session's own) waits until
      -- the hold ends, then the session ends with the hold's reason.
      -- Entries of other sessions are dropped.
      local sv = redis.call('HGET', shard_key(h), id)
      if sv and (ev == nil or ev == sv) then
        if untl > NOW_MS then
          file(f, h, untl, sv)
        else
          set_summary(id, h, 0)
          if end_session(id, h, 'offline ' .. held .. ' ') ~= 0 then
            claimed = claimed + 1
          end
        end
      end
    elseif pttl == -2 and not cutoff then
      -- removing the session is the claim (no session: nothing to do; the
      -- user's key lapsed, so whichever entry comes due first ends it, as
      -- the keyspace path does)
      if close_user(id, h, OFFLINE_EXPIRED, start + off) ~= 0 then
        claimed = claimed + 1
      end
    elseif check then
      -- a check entry with the key alive (or an outage grace running): the
      -- session's own entry decides; the check is done
    else
      -- An entry of a session that ended, or of an earlier session of a
      -- user whose later one has its own entry, is dropped with its bucket.
      local sv = redis.call('HGET', shard_key(h), id)
      if sv and (ev == nil or ev == sv) then
        if pttl > 0 then
          file(id, h, NOW_MS + pttl, sv)
        elseif pttl == -1 then
          -- a string persisted by someone else: keep watching it at one TTL from now
          file(id, h, NOW_MS + ttl, sv)
        elseif key_type(k) == 'none' then
          redis.call('SET', k, '1', 'PX', ARGV[5])
          file(id, h, NOW_MS + ttl, sv)
          graced = graced + 1
          if conns_on() then
            -- the user's connections get the same grace as its key
            extend_conns(id, h, NOW_MS + ttl)
          end
        elseif close_user(id, h, OFFLINE_EXPIRED, start + off) ~= 0 then
          -- never graced: SET would overwrite another program's key
          claimed = claimed + 1
        end
      end
    end
  end
  read = read + #e / 2
  redis.call('DEL', b)
  redis.call('ZREM', KEYS[5], b)
  i = i + 2
end
local more = 0
if i <= #buckets or #buckets == 2 * DIR_PAGE then more = 1 end
if cutoff and more == 0 then
  redis.call('DEL', KEYS[7])
end
flush()
return {claimed, graced, more, redis.call('EXISTS', KEYS[8])}
