package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/presenced/presenced/bus"
	"github.com/presenced/presenced/config"
	"github.com/presenced/presenced/contract"
	"github.com/presenced/presenced/internal/app"
)

// The NATS half of presenced check: reachability, the worker's permissions
// and, with PRESENCE_STREAM, the stream.

// checkNATS checks that NATS answers and that the worker's user may
// subscribe to the heartbeat, disconnect, gateway lease and query subjects
// and publish events.
//
// NATS has no dry run: the publish check sends one message with an empty
// body and the contract.ProbeHeader header to each event subject, which
// consumers should ignore. The subscriptions are plain ones, not in the
// worker's queue group, so they take no message away from the workers.
// Replies (to heartbeat and query requests) cannot be checked: a server with
// allow_responses only allows them to a request actually received.
func checkNATS(ctx context.Context, cfg config.Config, report func(checkLine)) {
	subjects := app.SubjectsFromConfig(cfg)
	type op struct {
		name     string
		pub      bool
		subjects []string
	}
	query := []string{}
	for _, ep := range []string{contract.QueryStatus, contract.QueryOnline, contract.QueryList, contract.QueryCount, contract.QueryGateway} {
		query = append(query, subjects.Query(ep))
	}
	for _, verb := range []string{"PING", "INFO", "STATS"} { // micro service discovery
		query = append(query, "$SRV."+verb, "$SRV."+verb+"."+contract.QueryServiceName)
	}
	ops := []op{
		{"nats subscribe " + subjects.Heartbeat(), false, []string{subjects.Heartbeat()}},
		{"nats subscribe " + subjects.Disconnect(), false, []string{subjects.Disconnect()}},
		{"nats subscribe gateway leases", false, []string{subjects.GatewayHeartbeat(), subjects.GatewayDisconnect()}},
		{"nats subscribe query service", false, query},
		{"nats publish " + subjects.Online(), true, []string{subjects.Online()}},
		{"nats publish " + subjects.Offline(), true, []string{subjects.Offline()}},
	}
	skipAll := func(why string) {
		for _, o := range ops {
			report(checkLine{checkSkip, o.name, why})
		}
	}
	extra, err := app.NATSOptions(cfg)
	if err != nil {
		report(checkLine{checkFail, "nats", err.Error()})
		skipAll("no nats connection")
		return
	}
	var (
		mu     sync.Mutex
		errs   []error
		closed = make(chan struct{})
	)
	opts := append([]nats.Option{
		nats.Name("presenced-check"),
		nats.Timeout(cfg.ConnectTimeout),
		nats.NoReconnect(),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			mu.Lock()
			errs = append(errs, err)
			mu.Unlock()
		}),
		nats.ClosedHandler(func(*nats.Conn) { close(closed) }),
	}, extra...)
	nc, err := nats.Connect(cfg.NATSURL, opts...)
	if err != nil {
		report(checkLine{checkFail, "nats", fmt.Sprintf("cannot connect to %s: %v", config.RedactURL(cfg.NATSURL), err)})
		skipAll("nats not reachable")
		return
	}
	report(checkLine{checkOK, "nats", fmt.Sprintf("reachable at %s (server %s)", nc.ConnectedUrlRedacted(), nc.ConnectedServerVersion())})

	opErr := make([]error, len(ops))
	for i, o := range ops {
		for _, subj := range o.subjects {
			var err error
			if o.pub {
				m := nats.NewMsg(subj)
				m.Header.Set(contract.ProbeHeader, "check")
				err = nc.PublishMsg(m)
			} else {
				_, err = nc.Subscribe(subj, func(*nats.Msg) {})
			}
			if err != nil && opErr[i] == nil {
				opErr[i] = fmt.Errorf("%s: %w", subj, err)
			}
		}
	}
	fctx, cancel := context.WithTimeout(ctx, cfg.ConnectTimeout)
	defer cancel()
	flushErr := nc.FlushWithContext(fctx)
	// The server answers a denied operation with an -ERR before the flush's
	// PONG; the client hands those to the error handler in order, followed
	// by the closed handler: once that ran, every violation is in errs.
	nc.Close()
	select {
	case <-closed:
	case <-ctx.Done():
	}
	mu.Lock()
	defer mu.Unlock()
	for i, o := range ops {
		var denied []string
		for _, subj := range o.subjects {
			if v := violation(errs, o.pub, subj); v != nil {
				denied = append(denied, subj)
			}
		}
		switch {
		case opErr[i] != nil:
			report(checkLine{checkFail, o.name, opErr[i].Error()})
		case len(denied) > 0:
			verb := "subscribe to"
			if o.pub {
				verb = "publish to"
			}
			report(checkLine{checkFail, o.name, fmt.Sprintf("permissions violation: the worker's NATS user may not %s %s", verb, strings.Join(denied, ", "))})
		case flushErr != nil:
			report(checkLine{checkFail, o.name, fmt.Sprintf("no answer from the server: %v", flushErr)})
		default:
			report(checkLine{checkOK, o.name, "allowed"})
		}
	}
}

// violation returns the permissions violation about subject, if any.
func violation(errs []error, pub bool, subject string) error {
	want := `subscription to "` + subject + `"`
	if pub {
		want = `publish to "` + subject + `"`
	}
	for _, err := range errs {
		if errors.Is(err, nats.ErrPermissionViolation) && strings.Contains(strings.ToLower(err.Error()), strings.ToLower(want)) {
			return err
		}
	}
	return nil
}

// checkStream checks, with PRESENCE_STREAM set, that the worker's NATS user
// can reach the JetStream API for the stream (STREAM.INFO, the reply on the
// worker's inbox prefix) and that an existing stream fits: the event subjects
// and no others of presenced's, acknowledged publishes, a duplicate window of
// at least twice PRESENCE_OUTBOX_CLAIM_AFTER. A missing stream is a warning:
// the first replica creates it (which needs STREAM.CREATE).
func checkStream(ctx context.Context, cfg config.Config, report func(checkLine)) {
	name := "nats stream " + cfg.Stream
	extra, err := app.NATSOptions(cfg)
	if err != nil {
		report(checkLine{checkFail, name, err.Error()})
		return
	}
	opts := append([]nats.Option{nats.Name("presenced-check"), nats.Timeout(cfg.ConnectTimeout), nats.NoReconnect(),
		nats.CustomInboxPrefix(bus.InboxPrefix)}, extra...)
	nc, err := nats.Connect(cfg.NATSURL, opts...)
	if err != nil {
		report(checkLine{checkFail, name, fmt.Sprintf("cannot connect to %s: %v", config.RedactURL(cfg.NATSURL), err)})
		return
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		report(checkLine{checkFail, name, err.Error()})
		return
	}
	sctx, cancel := context.WithTimeout(ctx, cfg.ConnectTimeout)
	defer cancel()
	s, err := js.Stream(sctx, cfg.Stream)
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
		report(checkLine{checkWarn, name, fmt.Sprintf("does not exist: the first replica creates it on %s, %s, %s (the worker's user needs $JS.API.STREAM.CREATE.%s)",
			app.SubjectsFromConfig(cfg).Online(), app.SubjectsFromConfig(cfg).Offline(), app.SubjectsFromConfig(cfg).Reset(), cfg.Stream)})
		return
	case errors.Is(err, jetstream.ErrJetStreamNotEnabled), errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount):
		report(checkLine{checkFail, name, fmt.Sprintf("JetStream is not enabled for the worker's account: %v", err)})
		return
	case err != nil:
		report(checkLine{checkFail, name, fmt.Sprintf("stream info: %v (the worker's user needs to publish to $JS.API.STREAM.INFO.%s and subscribe to %s.>)", err, cfg.Stream, bus.InboxPrefix)})
		return
	}
	c := s.CachedInfo().Config
	err = bus.CheckStream(c, bus.StreamOptions{Name: cfg.Stream, Subjects: app.SubjectsFromConfig(cfg), Duplicates: 2 * cfg.OutboxClaimAfter})
	if err != nil {
		report(checkLine{checkFail, name, app.StreamSettingError(fmt.Errorf("stream %q: %w", cfg.Stream, err), cfg).Error()})
		return
	}
	report(checkLine{checkOK, name, fmt.Sprintf("subjects %v, duplicate window %s", c.Subjects, c.Duplicates)})
}
