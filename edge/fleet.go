package edge

import (
	"context"
	"fmt"
	"sync"

	"edgeproxy/config"
	"edgeproxy/fleet"
	"edgeproxy/tlsserve"
)

// fleetState is what a replica of a fleet shares with the others (tls.acme.storage.redis):
// one fleet.Store per process, as it holds Redis connections and a subscription, and the
// fleet's session ticket keys, installed on the HTTPS listener's configurations so that a
// client resumes on any replica. A nil *fleetState (no fleet) does nothing.
type fleetState struct {
	store   *fleet.Store
	tickets *fleet.TicketKeys
}

// openFleet opens the store of tls.acme.storage.redis, once: a store holds connections,
// and a change of tls.acme needs a restart anyway.
func (e *Edge) openFleet(r *config.RedisStorage) (*fleetState, error) {
	if e.fleet != nil {
		return e.fleet, nil
	}
	opts, err := fleet.OptionsFromConfig(r)
	if err != nil {
		return nil, fmt.Errorf("edge: %w", err)
	}
	opts.Registerer = e.metrics.Registry()
	opts.Logger = e.log
	store, err := fleet.New(opts)
	if err != nil {
		return nil, fmt.Errorf("edge: tls.acme.storage.redis: %w", err)
	}
	e.fleet = &fleetState{store: store, tickets: fleet.NewTicketKeys(store, fleet.TicketKeysOptions{})}
	return e.fleet, nil
}

// shareTicketKeys makes srv use the fleet's session ticket keys.
func (f *fleetState) shareTicketKeys(srv *tlsserve.Server) {
	if f != nil {
		srv.ShareTicketKeys(f.tickets)
	}
}

// run keeps the ticket keys in step with the fleet; the function it returns stops that
// and closes the store.
func (f *fleetState) run(ctx context.Context) (stop func()) {
	if f == nil {
		return func() {}
	}
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	var wg sync.WaitGroup
	wg.Go(func() { f.tickets.Run(ctx) })
	return func() {
		cancel()
		wg.Wait()
		f.close()
	}
}

// close closes the store.
func (f *fleetState) close() {
	if f != nil {
		_ = f.store.Close()
	}
}
