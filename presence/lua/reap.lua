-- reap.lua: removes from the outbox group the consumers that replicas which
-- stopped without leaving (a crash, SIGKILL) left behind: those with no
-- pending entries that have been idle longer than the threshold. A consumer
-- with pending entries stays, however long idle: deleting it would drop its
-- entries from the group's pending list, and no replica would republish
-- them (another replica takes them over first, after the claim time, and
-- the consumer is removed once they are gone).
--
-- KEYS[1]  outbox (STREAM)
-- ARGV[1]  consumer group name
-- ARGV[2]  idle threshold in ms
--
-- "idle" is XINFO CONSUMERS's. On Redis 7.0 it counts from the consumer's
-- last XREADGROUP that was served (entries returned, or its own history
-- read) or XCLAIM/XAUTOCLAIM that claimed something: a blocking read that
-- times out, or one that finds nothing new, does not reset it, so a live
-- replica on a quiet system looks idle too. From 7.2 it counts from the
-- last attempted read. Either way a live consumer removed with nothing
-- pending loses nothing: its next served XREADGROUP creates it again.
-- Reading the consumers and deleting them in one script means no entry can
-- be delivered to a consumer between the check and its removal.
--
-- Returns the number of consumers removed.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local found = false
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  for i = 1, #g, 2 do
    if g[i] == 'name' and g[i + 1] == ARGV[1] then found = true end
  end
end
if not found then return 0 end
local threshold = tonumber(ARGV[2])
local n = 0
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local name, pending, idle
  for i = 1, #c, 2 do
    if c[i] == 'name' then name = c[i + 1]
    elseif c[i] == 'pending' then pending = c[i + 1]
    elseif c[i] == 'idle' then idle = c[i + 1] end
  end
  if pending == 0 and idle ~= nil and idle > threshold then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], name)
    n = n + 1
  end
end
return n
