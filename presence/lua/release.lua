-- release.lua: end connections by disconnect, or every connection of users
-- (kick), atomically with the sessions and the outbox. Requires lib.lua.
--
-- KEYS[6..5+n]  the users' presence keys, in entry order
-- ARGV[3]       TTL in ms (how long a disconnect's tombstone is kept)
-- ARGV[4]       offline grace in ms (0: none)
-- ARGV[5]       "conn": the entries are three each: user id, connection id
--               ("" for the implicit one), seq ("0" for none);
--               "kick": the entries are user ids
-- ARGV[6..]     the entries (the caller removes duplicates)
--
-- A disconnect ends its connection only (see release in lib.lua): the
-- user's offline (reason "disconnect") comes when no live connection
-- remains, held for the grace. A kick ends every connection of the user at
-- once, with no grace: its offline has reason "kicked".
--
-- A key that holds another type than a string is not presenced's: nothing
-- of that user changes.
--
-- Returns {now_ms, r1, ..., rn}: ri is the offline event's version, 0 when
-- no offline was published for entry i, KEY_CONFLICT (-1) or STALE (-3:
-- the disconnect's seq is not above the last applied for the connection).
local err = check_epoch()
if err then return err end
local ttl = tonumber(ARGV[3])
local grace = tonumber(ARGV[4])
local kick = ARGV[5] == 'kick'
local res = {NOW_MS}
local i, a = 1, 6
while a <= #ARGV do
  local id = ARGV[a]
  local h = hash(id)
  local t = key_type(KEYS[i + 5])
  local r = KEY_CONFLICT
  if kick then
    if t == 'none' or t == 'string' then
      redis.call('DEL', KEYS[i + 5])
      r = close_user(id, h, OFFLINE_KICKED)
    end
    a = a + 1
  else
    if t == 'none' or t == 'string' then
      r = release(id, h, ARGV[a + 1], tonumber(ARGV[a + 2]), ttl, grace)
    end
    a = a + 3
  end
  res[i + 1] = r
  i = i + 1
end
flush()
return res
