-- trim.lua: drops outbox entries that every consumer of the group has
-- acknowledged, so the outbox stays bounded by what is still unpublished.
--
-- KEYS[1]  outbox (STREAM)
-- ARGV[1]  consumer group name
--
-- Entries below the lowest pending id are trimmed; when nothing is pending,
-- entries below the group's last delivered id are (that one entry stays).
-- Reading the group and trimming in one script means no entry delivered
-- between the two steps can be lost.
--
-- Returns the number of entries trimmed.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
local last = nil
for _, g in ipairs(groups) do
  local name, ld
  for i = 1, #g, 2 do
    if g[i] == 'name' then name = g[i + 1] elseif g[i] == 'last-delivered-id' then ld = g[i + 1] end
  end
  if name == ARGV[1] then last = ld end
end
if last == nil then return 0 end
local p = redis.call('XPENDING', KEYS[1], ARGV[1])
local minid = last
if p[1] > 0 then minid = p[2] end
return redis.call('XTRIM', KEYS[1], 'MINID', minid)
