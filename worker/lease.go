package worker

import (
	"context"
	"encoding/json"

	"github.com/nats-io/nats.go"

	"github.com/presenced/presenced/contract"
	"github.com/presenced/presenced/presence"
)

// lapseLimit is the most connections one lapse step ends.
const lapseLimit = 2000

// leases answers the gateways' lease messages (taken off the intake by the
// dispatcher, in arrival order) until ctx is done.
func (w *Worker) leases(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case msg := <-w.leaseQ:
			w.lease(ctx, msg)
		}
	}
}

func (w *Worker) lease(ctx context.Context, msg *nats.Msg) {
	req, err := contract.DecodeGatewayLeaseRequest(msg.Data)
	if err != nil {
		w.m.Leases.WithLabelValues("rejected").Inc()
		w.m.Rejections.WithLabelValues("malformed").Inc()
		w.respondLease(msg, contract.GatewayLeaseReply{Error: err.Error()})
		return
	}
	var l presence.Lease
	end := msg.Subject == w.leaseSubjects[1]
	if end {
		l, err = w.store.EndLease(ctx, req.GatewayID, req.InstanceID)
	} else {
		l, err = w.store.RenewLease(ctx, req.GatewayID, req.InstanceID)
	}
	if err != nil {
		w.m.Leases.WithLabelValues("failed").Inc()
		w.log.Warn("gateway lease failed", "gateway_id", req.GatewayID, "err", err)
		w.storeFailed(err)
		w.respondLease(msg, contract.GatewayLeaseReply{Error: "store failed: " + err.Error(), Retry: presence.IsRetryable(err)})
		return
	}
	reply := contract.GatewayLeaseReply{Replaced: l.Replaced != 0 && !end}
	switch {
	case end:
		w.m.Leases.WithLabelValues("ended").Inc()
		w.log.Info("gateway ended its lease", "gateway_id", req.GatewayID, "instance_id", req.InstanceID)
	case l.Replaced != 0:
		w.m.Leases.WithLabelValues("replaced").Inc()
		w.log.Info("gateway restarted: the previous instance's connections end", "gateway_id", req.GatewayID, "instance_id", req.InstanceID)
	default:
		w.m.Leases.WithLabelValues("renewed").Inc()
	}
	if !l.ExpiresAt.IsZero() {
		reply.ExpiresAt = l.ExpiresAt.Format(contract.TimeFormat)
	}
	w.respondLease(msg, reply)
}

func (w *Worker) respondLease(msg *nats.Msg, r contract.GatewayLeaseReply) {
	if msg.Reply == "" {
		return
	}
	data, err := json.Marshal(r)
	if err != nil {
		w.log.Error("encode reply", "err", err)
		return
	}
	if err := msg.Respond(data); err != nil {
		w.debugf("reply failed", "err", err)
	}
}

// lapses ends the connections of lost gateway leases every
// ReconcileInterval until ctx is done. It runs beside the sweep, not after
// it: ending a large gateway's connections takes many steps, and the
// deadline sweep must not wait for them. Every replica runs it; the
// lease's cursor in Redis hands each step's buckets to one of them.
func (w *Worker) lapses(ctx context.Context) {
	w.everyInterval(ctx, false, "ending the connections of lost gateways", w.lapseAll)
}

// lapseAll ends the connections of every gateway lease that is due, in
// steps, until none is (or an error).
func (w *Worker) lapseAll(ctx context.Context) error {
	ended, left := 0, 0
	defer func() {
		if ended > 0 {
			w.m.GatewayConnectionsLost.Add(float64(ended))
			w.log.Warn("gateway lease lost: its connections ended", "connections", ended, "users_without_connection", left)
		}
	}()
	var failed error // of some partitions of a cluster (see sweepAll)
	for ctx.Err() == nil {
		res, err := w.store.Lapse(ctx, lapseLimit)
		if err != nil {
			if !presence.IsPartial(err) {
				return err
			}
			failed = err
		}
		ended += res.Ended
		left += res.Left
		if !res.More {
			return failed
		}
	}
	return ctx.Err()
}
