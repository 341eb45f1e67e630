-- disconnect.lua: end the sessions of a batch of users now (the seed's
-- markOffline), atomically with the sessions and the outbox. Requires lib.lua.
--
-- KEYS[6..5+n]  the users' presence keys, in ARGV order
-- ARGV[3..2+n]  user ids (the caller removes duplicates)
--
-- The presence key is deleted. Removing the session is the claim: only a user
-- with an open session gets an offline event (reason "disconnect"), so a
-- disconnect racing an expiry claim yields exactly one offline. The user's
-- index entry stays until its slot comes due (the sweep drops it then).
--
-- A key that holds another type than a string is not presenced's: it is
-- neither deleted nor taken for the user's presence, and nothing of that
-- user changes (a session still open on it ends through the sweep, which
-- counts such a key as gone).
--
-- Returns {now_ms, r1, ..., rn}: ri is the offline event's version, 0 when
-- user i had no session, or KEY_CONFLICT (-1) when user i's key holds
-- another type (nothing changed for user i).
local err = check_epoch()
if err then return err end
local res = {NOW_MS}
for i = 1, #ARGV - 2 do
  local id = ARGV[i + 2]
  local t = key_type(KEYS[i + 5])
  if t == 'none' or t == 'string' then
    if t == 'string' then redis.call('DEL', KEYS[i + 5]) end
    res[i + 1] = end_session(id, hash(id), OFFLINE_DISCONNECT)
  else
    res[i + 1] = KEY_CONFLICT
  end
end
flush()
return res
