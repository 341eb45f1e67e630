package presence

import (
	_ "embed"

	"github.com/redis/go-redis/v9"
)

// Each script is lib.lua followed by its body, so the clock and the outbox
// format live in one place. See the header of each .lua file for its KEYS,
// ARGV and reply.
var (
	//go:embed lua/lib.lua
	luaLib string
	//go:embed lua/heartbeat.lua
	luaHeartbeat string
	//go:embed lua/disconnect.lua
	luaDisconnect string
	//go:embed lua/sweep.lua
	luaSweep string
	//go:embed lua/claim.lua
	luaClaim string
	//go:embed lua/reset.lua
	luaReset string
	//go:embed lua/reannounce.lua
	luaReannounce string

	scriptHeartbeat  = redis.NewScript(luaLib + "\n" + luaHeartbeat)
	scriptDisconnect = redis.NewScript(luaLib + "\n" + luaDisconnect)
	scriptSweep      = redis.NewScript(luaLib + "\n" + luaSweep)
	scriptClaim      = redis.NewScript(luaLib + "\n" + luaClaim)
	scriptReset      = redis.NewScript(luaLib + "\n" + luaReset)
	scriptReannounce = redis.NewScript(luaLib + "\n" + luaReannounce)
)

// Read-only scripts: lib.lua too, for the epoch's shard count and the hash.
var (
	//go:embed lua/status.lua
	luaStatus string
	//go:embed lua/list.lua
	luaList string

	scriptStatus = redis.NewScript(luaLib + "\n" + luaStatus)
	scriptList   = redis.NewScript(luaLib + "\n" + luaList)
)

//go:embed lua/trim.lua
var luaTrim string

var scriptTrim = redis.NewScript(luaTrim)

//go:embed lua/reap.lua
var luaReap string

var scriptReap = redis.NewScript(luaReap)

//go:embed lua/own.lua
var luaOwn string

var scriptOwn = redis.NewScript(luaOwn)
