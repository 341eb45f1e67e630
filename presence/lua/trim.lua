-- trim.lua: drops outbox entries that every consumer of the group has
-- acknowledged and that are older than the retention, so the outbox stays
-- bounded by what is still unpublished plus what the query views may still
-- need to read (see view.go).
--
-- KEYS[1]  outbox (STREAM)
-- KEYS[2]  floor (STRING: the MINID of the latest trim; entries below it
--          are gone, so a view that read up to an id below it missed some)
-- ARGV[1]  consumer group name
-- ARGV[2]  retention in ms (0: none)
--
-- Entries below the lowest pending id are trimmed; when nothing is pending,
-- entries below the group's last delivered id are (that one entry stays).
-- With a retention, entries newer than now - retention stay as well.
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
local retention = tonumber(ARGV[2])
if retention > 0 then
  local t = redis.call('TIME')
  local keep = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - retention
  local ms = tonumber(string.match(minid, '^(%d+)'))
  if keep < ms then minid = string.format('%d-0', keep) end
end
local n = redis.call('XTRIM', KEYS[1], 'MINID', minid)
if n > 0 then
  redis.call('SET', KEYS[2], minid)
end
return n
