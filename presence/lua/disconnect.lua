-- disconnect.lua: end the implicit connections of a batch of users now (the
-- seed's markOffline), atomically with the sessions and the outbox.
-- Requires lib.lua.
--
-- KEYS[6..5+n]  the users' presence keys, in ARGV order
-- ARGV[3]       TTL in ms (how long a disconnect's tombstone is kept)
-- ARGV[4]       offline grace in ms (0: none)
-- ARGV[5..4+n]  user ids (the caller removes duplicates)
--
-- For a plain user (no connection records) the implicit connection is the
-- presence key: it is deleted, and removing the session is the claim, so
-- only a user with an open session gets an offline event (reason
-- "disconnect"), and a disconnect racing an expiry claim yields exactly one
-- offline. A user with connection records loses its implicit connection
-- only; the offline comes when no other live connection remains (see
-- release in lib.lua). With a grace the offline is held (see last_gone).
-- The user's index entry stays until its slot comes due (the sweep drops it
-- then).
--
-- A key that holds another type than a string is not presenced's: it is
-- neither deleted nor taken for the user's presence, and nothing of that
-- user changes (a session still open on it ends through the sweep, which
-- counts such a key as gone).
--
-- Returns {now_ms, r1, ..., rn}: ri is the offline event's version, 0 when
-- no offline was published for user i, or KEY_CONFLICT (-1) when user i's
-- key holds another type (nothing changed for user i).
local err = check_epoch()
if err then return err end
local ttl = tonumber(ARGV[3])
local grace = tonumber(ARGV[4])
local res = {NOW_MS}
for i = 1, #ARGV - 4 do
  local id = ARGV[i + 4]
  local t = key_type(KEYS[i + 5])
  if t == 'none' or t == 'string' then
    res[i + 1] = release(id, hash(id), '', 0, ttl, grace)
  else
    res[i + 1] = KEY_CONFLICT
  end
end
flush()
return res
