-- connect.lua: start or refresh connections (heartbeats naming a connection
-- id, a gateway or a sequence), atomically with the users' sessions, the
-- deadline index and the outbox. Requires lib.lua (see its connections
-- layout).
--
-- KEYS[6..5+n]  the users' presence keys, in entry order
-- ARGV[3]       TTL in ms
-- ARGV[4]       live connections one user may have, at most
-- ARGV[5..]     n entries of four: user id, connection id ("" for the
--               implicit one), gateway id ("" for none), seq ("0" for none)
--               (the caller removes duplicate connections)
--
-- A known live connection is refreshed: its record takes the new deadline
-- (and seq, and the gateway's current lease), and the presence key one TTL
-- (it is the latest deadline now): three commands. A new connection is
-- refused when its seq is not above a disconnect's tombstone for it (the
-- disconnect overtook it) or the user has the most live connections
-- allowed; else it is recorded, and when the user had no live connection a
-- session starts (online event) or, when one is open (an offline held, a
-- key lapsed unclaimed), continues silently. A plain user's implicit
-- connection is recorded first, so it keeps counting.
--
-- A gateway's connections are registered under its current lease (see
-- lease.lua); while it holds none their records keep its id.
--
-- Returns {now_ms, r1, ..., rn}: ri is the online event's version when
-- entry i started a session, 0 when it was applied otherwise, KEY_CONFLICT
-- (-1: the user's key holds another type), TOO_MANY (-2) or STALE (-3: its
-- seq is not above the last applied for the connection); nothing is
-- written for an entry refused.
local err = check_epoch()
if err then return err end
local ttl = tonumber(ARGV[3])
local max = tonumber(ARGV[4])
local deadline = NOW_MS + ttl
local leases = {}

-- resolve returns the lease gateway gw's connections are registered
-- under, or 0 when it holds none (or gw is "": no gateway).
local function resolve(gw)
  if gw == '' then return 0 end
  local l = leases[gw]
  if l then return l end
  local v = redis.call('GET', P .. 'gw:' .. gw)
  l = 0
  if v then l = tonumber(string.match(v, '^(%d+)')) end
  leases[gw] = l
  return l
end

conns_mark()
local res = {NOW_MS}
local n = (#ARGV - 4) / 4
for i = 1, n do
  local a = 4 + (i - 1) * 4
  local id, conn, gw, seq = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], tonumber(ARGV[a + 4])
  local key = KEYS[i + 5]
  local h = hash(id)
  local ck = conn_key(h)
  local field = id .. ' ' .. conn
  local lease = resolve(gw)
  local r = 0
  local rec = redis.call('HGET', ck, field)
  local rlease, rseq, rdl, rsince
  if rec then rlease, rseq, rdl, rsince = parse_rec(rec) end
  if rec and seq > 0 and seq <= rseq then
    r = STALE
  elseif rec and rdl > NOW_MS then
    -- a live connection: refresh
    local old = redis.pcall('SET', key, '1', 'PX', ARGV[3])
    if type(old) == 'table' and old.err then
      r = KEY_CONFLICT
    else
      if lease ~= rlease then
        index_conn(rlease, id, h, field, -1)
        index_conn(lease, id, h, field, 1)
      end
      if seq == 0 then seq = rseq end
      redis.call('HSET', ck, field, fmt_rec(lease, seq, deadline, rsince, gw))
    end
  else
    local t = key_type(key)
    if t ~= 'none' and t ~= 'string' then
      r = KEY_CONFLICT
    elseif seq > 0 and tombstone(h, field, ttl) >= seq then
      r = STALE
    else
      local cnt = summary(id, h)
      if cnt ~= nil and cnt >= max then
        -- maybe at the limit: count the live named connections (the
        -- implicit one does not count)
        local live = list_conns(id, h)
        local named = 0
        for _, c in ipairs(live) do
          if c[1] ~= '' then named = named + 1 end
        end
        if named >= max then r = TOO_MANY end
        cnt = #live
        rec = redis.call('HGET', ck, field) -- a dead one was pruned
      end
      if r == 0 then
        if cnt == nil then
          cnt = 0
          if t == 'string' then
            -- a plain user: its live implicit connection becomes a record
            local sv = redis.call('HGET', shard_key(h), id)
            local since = NOW_MS
            if sv then since = math.floor(tonumber(sv) / 1000) end
            redis.call('HSET', ck, id .. ' ', fmt_rec(0, 0, NOW_MS + redis.call('PTTL', key), since))
            cnt = 1
          end
        end
        if rec then
          index_conn(rlease, id, h, field, -1) -- a dead record, replaced
        else
          cnt = cnt + 1
        end
        redis.call('HSET', ck, field, fmt_rec(lease, seq, deadline, NOW_MS, gw))
        index_conn(lease, id, h, field, 1)
        set_summary(id, h, cnt) -- drops a held offline
        if not redis.call('SET', key, '1', 'PX', ARGV[3], 'GET') then
          local v = string.format('%d', peek_version())
          if redis.call('HSETNX', shard_key(h), id, v) == 1 then
            file(id, h, deadline, v)
            r = emit(ONLINE .. id)
            COUNT_DELTA = COUNT_DELTA + 1
          end
        end
      end
    end
  end
  res[i + 1] = r
end
flush()
return res
