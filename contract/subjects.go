package contract

// Subjects names presenced's subjects under one prefix ("presence").
type Subjects struct{ Prefix string }

// Heartbeat is the subject gateways publish heartbeats to.
func (s Subjects) Heartbeat() string { return s.Prefix + ".heartbeat" }

// Disconnect is the subject gateways publish disconnects to.
func (s Subjects) Disconnect() string { return s.Prefix + ".disconnect" }

// GatewayHeartbeat is the subject a gateway takes and renews its lease on
// (GatewayLeaseRequest).
func (s Subjects) GatewayHeartbeat() string { return s.Prefix + ".gateway.heartbeat" }

// GatewayDisconnect is the subject a gateway ends its lease on when it
// shuts down (GatewayLeaseRequest).
func (s Subjects) GatewayDisconnect() string { return s.Prefix + ".gateway.disconnect" }

// Online is the subject online events are published to.
func (s Subjects) Online() string { return s.Prefix + ".online" }

// Offline is the subject offline events are published to.
func (s Subjects) Offline() string { return s.Prefix + ".offline" }

// Reset is the subject a reset notice is published to when Redis lost the
// presence data: consumers drop their state and resynchronise.
func (s Subjects) Reset() string { return s.Prefix + ".reset" }

// Event returns the subject of an event with the given status.
func (s Subjects) Event(status Status) string { return s.Prefix + "." + string(status) }

// Query returns the subject of a query endpoint, <prefix>.query.<endpoint>.
func (s Subjects) Query(endpoint string) string { return s.QueryGroup() + "." + endpoint }

// QueryGroup is the subject prefix of the query endpoints, <prefix>.query:
// the micro group the query service adds them to.
func (s Subjects) QueryGroup() string { return s.Prefix + ".query" }

// ProbeHeader marks the empty messages `presenced check` publishes to the
// event subjects to prove its permissions: consumers (the status page, the
// Go client) skip them.
const ProbeHeader = "Presenced-Probe"
