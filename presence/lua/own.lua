-- own: of the outbox entries a relay read, returns those still pending on
-- this consumer and resets their idle time, so that a relay that was paused
-- (SIGSTOP, a long GC, a frozen VM) after reading them does not publish
-- entries another replica has reclaimed, and so that no replica can
-- reclaim the returned ones for another claim time. It never takes an entry
-- from another consumer. Standalone: not prefixed with lib.lua.
--
-- KEYS[1] the outbox stream
-- ARGV[1] the consumer group, ARGV[2] this consumer, ARGV[3..] entry ids
--
-- Returns the ids pending on ARGV[2], in the order given; the others
-- (acknowledged, trimmed, or pending on another consumer) are left out.
local owned = {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2])
  if #p > 0 then
    owned[#owned + 1] = ARGV[i]
  end
end
if #owned > 0 then
  -- Claimed by its owner with min-idle 0: the idle time becomes 0; JUSTID
  -- leaves the delivery count as it was.
  -- The command is spelled out (not built in a table): ScriptCommands
  -- reads it from here, for presenced check and the ACL.
  local args = {}
  for _, id in ipairs(owned) do
    args[#args + 1] = id
  end
  args[#args + 1] = 'JUSTID'
  redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, unpack(args))
end
return owned
