-- heartbeat.lua: start or refresh the presence of a batch of users, atomically
-- with the sessions, the deadline index and the outbox. Requires lib.lua.
--
-- KEYS[6..5+n]  the users' presence keys, presence:user:{userId}, in order
-- ARGV[3]       TTL in milliseconds
-- ARGV[4..3+n]  user ids (the caller removes duplicates)
--
-- Every key gets SET key 1 PX ttl (the seed's format). When the key existed
-- that is all: a refresh is one command (the index catches up lazily, see
-- lib.lua). When it did not, a user without an open session starts one: its
-- session field, its index entry (carrying the session's version) and its
-- online event are written in the same step. A user whose key lapsed but
-- whose offline was not claimed yet continues its session silently.
--
-- A key that holds another type (another program's hash, list, ... under
-- the prefix) makes SET ... GET fail with WRONGTYPE, and SET does nothing
-- then. The SET goes through redis.pcall, so that failure costs only its
-- own id: nothing of that user is written, and the other ids of the call
-- are applied as usual.
--
-- The ids are implicit connections (see lib.lua). For a user that also has
-- connection records, the implicit one is recorded too, so that it keeps
-- the user online when the others end; a user whose offline is held, or
-- whose key lapsed unclaimed, continues its session (revive).
--
-- Returns {now_ms, r1, ..., rn}: ri is the online event's version when user i
-- started a session, 0 for a refresh, KEY_CONFLICT (-1) when user i's key
-- holds another type (nothing written for user i).
local err = check_epoch()
if err then return err end
local ttl = tonumber(ARGV[3])
local deadline = NOW_MS + ttl
local res = {NOW_MS}
for i = 1, #ARGV - 3 do
  res[i + 1] = 0
  local old = redis.pcall('SET', KEYS[i + 5], '1', 'PX', ARGV[3], 'GET')
  if not old then
    local id = ARGV[i + 3]
    local h = hash(id)
    local v = string.format('%d', peek_version())
    if redis.call('HSETNX', shard_key(h), id, v) == 1 then
      file(id, h, deadline, v)
      res[i + 1] = emit(ONLINE .. id)
      COUNT_DELTA = COUNT_DELTA + 1
    else
      revive(id, h)
    end
  elseif type(old) ~= 'table' then
    if conns_on() then
      local id = ARGV[i + 3]
      local h = hash(id)
      local n = summary(id, h)
      if n ~= nil then
        local f = id .. ' '
        local rec = redis.call('HGET', conn_key(h), f)
        local lease, seq, dl, since, gw = 0, 0, 0, NOW_MS, ''
        if rec then lease, seq, dl, since, gw = parse_rec(rec) end
        if not rec or dl <= NOW_MS then
          -- a new implicit connection (or one that died: started again)
          since = NOW_MS
          if not rec then set_summary(id, h, n + 1) end
        end
        redis.call('HSET', conn_key(h), f, fmt_rec(lease, seq, deadline, since, gw))
      end
    end
  elseif old.err then
    if string.sub(old.err, 1, 9) ~= 'WRONGTYPE' then
      -- not a conflict (never seen): keep what was done consistent, then fail
      flush()
      return old
    end
    res[i + 1] = KEY_CONFLICT
  end
end
flush()
return res
