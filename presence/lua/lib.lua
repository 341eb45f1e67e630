-- lib.lua: prepended to every presence script (see scripts.go), so all of
-- them share one clock and one outbox format.
--
-- Every script that includes it takes the same first five keys:
--   KEYS[1]  deadline index (ZSET userId -> deadline, ms since epoch, Redis clock)
--   KEYS[2]  sessions (HASH userId -> version of the session's online event)
--   KEYS[3]  version clock (STRING, the last version handed out)
--   KEYS[4]  outbox (STREAM of events waiting to be published)
--   KEYS[5]  epoch (STRING, marks the presence data set; see check_epoch)
--
-- Versions are Redis server time in microseconds, made strictly increasing
-- by the clock key, so one user's successive events always carry increasing
-- versions, even when the server clock steps back.
local T = redis.call('TIME')
local NOW_MS = tonumber(T[1]) * 1000 + math.floor(tonumber(T[2]) / 1000)
local NOW_US = tonumber(T[1]) * 1000000 + tonumber(T[2])
local CLOCK = nil

-- emit appends one event to the outbox and returns its version. deadline
-- (ms, a string) is recorded for expired offlines, to measure their lag.
local function emit(status, id, reason, deadline)
  if CLOCK == nil then
    CLOCK = tonumber(redis.call('GET', KEYS[3]) or '0')
  end
  local v = NOW_US
  if v <= CLOCK then v = CLOCK + 1 end
  CLOCK = v
  if deadline then
    redis.call('XADD', KEYS[4], '*', 's', status, 'u', id, 'v', string.format('%d', v), 'r', reason, 'd', deadline)
  else
    redis.call('XADD', KEYS[4], '*', 's', status, 'u', id, 'v', string.format('%d', v), 'r', reason)
  end
  return v
end

-- save_clock persists the clock if emit ran; call it once before returning.
local function save_clock()
  if CLOCK ~= nil then
    redis.call('SET', KEYS[3], string.format('%d', CLOCK))
  end
end

-- check_epoch runs first in every script. A missing epoch means the
-- presence data set is new or was lost (FLUSHALL, a restart without
-- persistence, a failover to an empty replica): the sessions it held are
-- unknowable, so instead of guessing, one "reset" event goes out before
-- anything else, and consumers resynchronise. Exactly one script call sees
-- the epoch missing, so the reset is published once.
local function check_epoch()
  if redis.call('EXISTS', KEYS[5]) == 1 then return end
  redis.call('SET', KEYS[5], string.format('%d', NOW_US))
  emit('reset', '', 'data_loss')
end

-- end_session removes a user from the index (the claim: exactly one caller
-- gets 1) and, when it was there, emits its offline event.
local function end_session(id, reason, deadline)
  if redis.call('ZREM', KEYS[1], id) == 0 then return 0 end
  redis.call('HDEL', KEYS[2], id)
  return emit('offline', id, reason, deadline)
end
