-- status.lua: one user's presence, read-only. Requires lib.lua and
-- conns.lua (read_shards, hash, shard_key, conn_key, each_conn, parse_rec,
-- key_type only).
--
-- KEYS[1]  epoch (STRING "<version>:<shards>", see lib.lua)
-- KEYS[2]  the user's presence key
-- ARGV[1]  key prefix
-- ARGV[2]  user id
--
-- Returns {pttl, version, conns, held}: pttl as PTTL reports it (-2: no key,
-- so offline; also -2 for a key of another type than a string, which is
-- not presenced's), version the open session's online event version, or 0;
-- conns the user's live connections (none for a plain user), flat:
-- connection id, gateway id ("" for none), since (ms), deadline (ms), ...;
-- held "<reason> <until ms>" while the user's offline is held, else "".
local pttl = redis.call('PTTL', KEYS[2])
if pttl ~= -2 and key_type(KEYS[2]) ~= 'string' then pttl = -2 end
SHARDS = read_shards()
if not SHARDS then return {pttl, 0, {}, ''} end
local id = ARGV[2]
local h = hash(id)
local v = redis.call('HGET', shard_key(h), id)
local conns, held = {}, ''
local sum = redis.call('HGET', conn_key(h), id)
if sum then
  held = string.match(sum, '^%d+ (%S+ %d+)$') or ''
  each_conn(id, h, function(f, rec)
    local lease, _, dl, since, gw = parse_rec(rec)
    if dl and dl > NOW_MS then
      if lease > 0 then gw = redis.call('HGET', P .. 'leasegw', string.format('%d', lease)) or '' end
      conns[#conns + 1] = string.sub(f, #id + 2)
      conns[#conns + 1] = gw
      conns[#conns + 1] = since
      conns[#conns + 1] = dl
    end
  end)
end
return {pttl, v or 0, conns, held}
