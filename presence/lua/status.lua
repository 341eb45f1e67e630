-- status.lua: one user's presence, read-only. Requires lib.lua (read_shards,
-- hash, shard_key, key_type only).
--
-- KEYS[1]  epoch (STRING "<version>:<shards>", see lib.lua)
-- KEYS[2]  the user's presence key
-- ARGV[1]  key prefix
-- ARGV[2]  user id
--
-- Returns {pttl, version}: pttl as PTTL reports it (-2: no key, so offline;
-- also -2 for a key of another type than a string, which is not
-- presenced's), version the open session's online event version, or 0.
local pttl = redis.call('PTTL', KEYS[2])
if pttl ~= -2 and key_type(KEYS[2]) ~= 'string' then pttl = -2 end
SHARDS = read_shards()
if not SHARDS then return {pttl, 0} end
local id = ARGV[2]
local v = redis.call('HGET', shard_key(hash(id)), id)
return {pttl, v or 0}
