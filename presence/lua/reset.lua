-- reset.lua: detect and announce a partial loss of the presence data set:
-- Redis lost writes but kept the data set (restarted from an older RDB
-- snapshot, or a failover to a replica that lagged), so events may have
-- been published for transitions Redis no longer holds. Requires lib.lua.
--
-- KEYS[6]    re-announce cursor (STRING "<reset version>:<next shard>:<the
--            reset's outbox entry>", see reannounce.lua)
-- KEYS[7]    outbox floor (STRING, the MINID of the latest trim; see trim.lua)
-- ARGV[3]    outbox retention in ms (as the trims use it)
-- ARGV[4]    the highest event version the caller has published
-- ARGV[5..]  pairs: the id of an outbox entry the caller published since
--            its previous call (and the newest one before), and the highest
--            version in it
--
-- Redis loses a suffix of its writes, so a published entry that is gone
-- was lost, unless it was trimmed. A trim never removes an entry younger
-- than the retention, so a missing entry younger than that was lost; an
-- older one counts as trimmed when it is below the floor. (A trim after the
-- loss may move the floor past a lost entry older than the retention: with
-- a retention shorter than the time Redis took to come back, the loss can
-- go unnoticed.) An entry whose version is not above the epoch's first
-- field (the version of the reset that made the data set what it is)
-- belongs to a data set whose loss was announced already, by another
-- replica or by check_epoch.
--
-- On a loss, in one step: one "reset" event (reason data_loss) is queued
-- with a version above every version published (the clock moves past
-- ARGV[4] first), the epoch is rewritten with that version (query views
-- read the sessions again; later callers find the loss announced), and the
-- cursor is set to walk every sessions shard from shard 0, re-announcing
-- the sessions that survived (their onlines were published before the
-- reset, which consumers clear).
--
-- Returns the reset's version, or 0 when nothing published was lost or the
-- loss was announced already.
local err = check_epoch()
if err then return err end
if FIRST_V ~= nil then
  -- the data set was gone entirely: check_epoch queued its reset
  flush()
  return FIRST_V
end
local retention = tonumber(ARGV[3])
local published = tonumber(ARGV[4])
local epoch_v = tonumber(string.match(redis.call('GET', KEYS[1]), '^(%d+):'))
local floor = redis.call('GET', KEYS[7])
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local fm, fs
if floor then fm, fs = parse(floor) end
local lost = false
for i = 5, #ARGV - 1, 2 do
  local id = ARGV[i]
  if tonumber(ARGV[i + 1]) > epoch_v and #redis.call('XRANGE', KEYS[3], id, id) == 0 then
    local ms, seq = parse(id)
    if ms > NOW_MS - retention or not floor or ms > fm or (ms == fm and seq >= fs) then
      lost = true
      break
    end
  end
end
if not lost then return 0 end
local clock = tonumber(redis.call('GET', KEYS[2]) or '0')
CLOCK = math.max(clock, published)
local v = emit('reset data_loss ')
local vs = string.format('%d', v)
redis.call('SET', KEYS[1], vs .. ':' .. SHARDS)
flush()
redis.call('SET', KEYS[6], vs .. ':0:' .. OUTBOX_ID)
return v
