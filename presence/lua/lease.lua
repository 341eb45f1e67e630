-- lease.lua: a gateway takes, renews or ends its lease. Requires lib.lua
-- (see its connections layout).
--
-- ARGV[3]  gateway id
-- ARGV[4]  instance id (random per gateway process start)
-- ARGV[5]  lease time in ms
-- ARGV[6]  "renew" or "end"
--
-- renew: the gateway's lease is extended to NOW_MS + lease time; when it
-- holds none, or one taken by another instance (the gateway restarted), it
-- gets a new lease, and the other instance's lease is due at once: the
-- sweep (lapse.lua) ends the connections registered under it. end: the
-- lease is due at once (a gateway shutting down), if this instance holds it.
-- A lease that is not renewed in time becomes due by itself.
--
-- Returns {lease, lost}: the lease the gateway holds now (0 after end) and
-- the lease this call made due (0 if none).
local err = check_epoch()
if err then return err end
local gw, inst, ms = ARGV[3], ARGV[4], tonumber(ARGV[5])
local key = P .. 'gw:' .. gw
local cur = redis.call('GET', key)
local lease, holder
if cur then
  lease, holder = string.match(cur, '^(%d+) (.*)$')
end
local expires = string.format('%d', NOW_MS + ms)
local held, lost = 0, 0
if ARGV[6] == 'end' then
  if cur and holder == inst then
    redis.call('DEL', key)
    redis.call('ZADD', P .. 'leases', '0', lease)
    lost = tonumber(lease)
  end
elseif cur and holder == inst then
  redis.call('SET', key, cur, 'PX', ARGV[5])
  redis.call('ZADD', P .. 'leases', expires, lease)
  held = tonumber(lease)
else
  if cur then
    redis.call('ZADD', P .. 'leases', '0', lease)
    lost = tonumber(lease)
  end
  local l = string.format('%d', redis.call('INCR', P .. 'leaseseq'))
  redis.call('SET', key, l .. ' ' .. inst, 'PX', ARGV[5])
  redis.call('ZADD', P .. 'leases', expires, l)
  redis.call('HSET', P .. 'leasegw', l, gw)
  conns_mark()
  held = tonumber(l)
end
flush()
return {held, lost}
