-- status.lua: one user's presence, read-only. Requires lib.lua and
-- conns.lua (read_shards, hash, shard_key, conn_key, parse_rec, key_type
-- only).
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
  local cur = '0'
  repeat
    local r = redis.call('HSCAN', conn_key(h), cur, 'MATCH', id .. ' *', 'COUNT', 1000)
    cur = r[1]
    local kv = r[2]
    for j = 1, #kv, 2 do
      local lease, _, dl, since, gw = parse_rec(kv[j + 1])
      if dl and dl > NOW_MS then
        if lease > 0 then gw = redis.call('HGET', P .. 'leasegw', string.format('%d', lease)) or '' end
        conns[#conns + 1] = string.sub(kv[j], #id + 2)
        conns[#conns + 1] = gw
        conns[#conns + 1] = since
        conns[#conns + 1] = dl
      end
    end
  until cur == '0'
end
return {pttl, v or 0, conns, held}
