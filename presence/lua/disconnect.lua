-- disconnect.lua: end the sessions of a batch of users now (the seed's
-- markOffline), atomically with the deadline index and the outbox.
-- Requires lib.lua (KEYS[1..5]).
--
-- KEYS[6..5+n]  the users' presence keys, in ARGV order
-- ARGV[1..n]    user ids (the caller removes duplicates)
--
-- The presence key is deleted. Removal from the index is the claim: only a
-- user still in the index gets an offline event (reason "disconnect"), so a
-- disconnect racing an expiry claim yields exactly one offline.
--
-- Returns {now_ms, r1, ..., rn}: ri is the offline event's version, or 0 when
-- user i had no session.
check_epoch()
local res = {NOW_MS}
for i = 1, #ARGV do
  redis.call('DEL', KEYS[i + 5])
  res[#res + 1] = end_session(ARGV[i], 'disconnect')
end
save_clock()
return res
