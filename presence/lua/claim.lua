-- claim.lua: the keyspace-event fast path. Claims users whose presence key
-- Redis reported as expired, if their deadline has really passed.
-- Requires lib.lua (KEYS[1..5]).
--
-- KEYS[6]  sweep marker (STRING, NOW_MS of the last sweep)
-- KEYS[7]  grace cutoff (STRING, present while a grace pass is running)
-- ARGV[1]  outage threshold in ms (as in sweep.lua)
-- ARGV[2..] user ids
--
-- A user refreshed since its key expired (deadline in the future) or already
-- claimed (not in the index) is left alone. While sweeps have stopped or a
-- grace pass runs, nothing is claimed: the sweep decides about grace.
--
-- Returns the number of users claimed, or -1 when the claim was deferred to
-- the sweep.
check_epoch()
local outage = tonumber(ARGV[1])
local last = redis.call('GET', KEYS[6])
if redis.call('EXISTS', KEYS[7]) == 1 or last == false or NOW_MS - tonumber(last) > outage then
  save_clock()
  return -1
end
local n = 0
for i = 2, #ARGV do
  local id = ARGV[i]
  local score = redis.call('ZSCORE', KEYS[1], id)
  if score and tonumber(score) <= NOW_MS then
    end_session(id, 'expired', score)
    n = n + 1
  end
end
save_clock()
return n
