-- claim.lua: the keyspace-event fast path. Claims the sessions of users
-- whose presence key Redis reported as expired, if the key is still gone.
-- Requires lib.lua.
--
-- KEYS[6]  sweep marker (STRING, NOW_MS of the last sweep)
-- KEYS[7]  grace cutoff (STRING, present while a grace pass is running)
-- ARGV[3]  outage threshold in ms (as in sweep.lua)
-- ARGV[4..] user ids
--
-- A user refreshed since its key expired (the key exists again) or already
-- claimed (no open session) is left alone, and so is one whose key exists
-- with another type (the sweep ends such a session when its slot is due). While sweeps have stopped or a
-- grace pass runs, nothing is claimed: the sweep decides about grace. The
-- user's index entry stays until its slot comes due (the sweep drops it).
--
-- Returns the number of users claimed, or -1 when the claim was deferred to
-- the sweep.
local err = check_epoch()
if err then return err end
local outage = tonumber(ARGV[3])
local last = redis.call('GET', KEYS[6])
if redis.call('EXISTS', KEYS[7]) == 1 or last == false or NOW_MS - tonumber(last) > outage then
  flush()
  return -1
end
local n = 0
for i = 4, #ARGV do
  local id = ARGV[i]
  if redis.call('EXISTS', user_key(id)) == 0 then
    local h = hash(id)
    local held = nil
    if any_on() then
      local _
      _, held = summary(id, h)
    end
    -- a held offline is the sweep's (its key was deleted, not expired)
    if not held and close_user(id, h, OFFLINE_EXPIRED) ~= 0 then
      n = n + 1
    end
  end
end
flush()
return n
