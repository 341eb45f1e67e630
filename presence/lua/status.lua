-- status.lua: one user's presence, read-only (no lib.lua).
--
-- KEYS[1]  epoch (STRING "<µs>:<shards>", see lib.lua)
-- KEYS[2]  the user's presence key
-- ARGV[1]  key prefix
-- ARGV[2]  user id
--
-- Returns {pttl, version}: pttl as PTTL reports it (-2: no key, so offline),
-- version the open session's online event version, or 0.
local pttl = redis.call('PTTL', KEYS[2])
local ep = redis.call('GET', KEYS[1])
local shards = ep and tonumber(string.match(ep, ':(%d+)$'))
if not shards then return {pttl, 0} end
local id = ARGV[2]
local h = 5381
for i = 1, #id do
  h = (h * 33 + string.byte(id, i)) % 4294967296
end
local v = redis.call('HGET', ARGV[1] .. 's:' .. (h % shards), id)
return {pttl, v or 0}
