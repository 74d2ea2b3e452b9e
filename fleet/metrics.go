package fleet

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the store's Prometheus collectors.
type metrics struct {
	// errors counts failed Redis operations by op: get, put, delete, list, lock, unlock,
	// refresh, publish, subscribe, flush, repopulate, ping.
	errors *prometheus.CounterVec
	// pending is the number of changes kept in memory until Redis answers again.
	pending prometheus.Gauge
}

// newMetrics makes the collectors and registers them on reg (nil: not registered). A
// collector already registered there, by an earlier Store, is shared.
func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgeproxy_storage_errors_total",
			Help: "Failed operations on the fleet's shared storage (Redis), by operation.",
		}, []string{"op"}),
		pending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "edgeproxy_storage_pending_writes",
			Help: "Changes kept in memory because Redis was unavailable, written when it answers again.",
		}),
	}
	if reg == nil {
		return m, nil
	}
	var err error
	if m.errors, err = register(reg, m.errors); err != nil {
		return nil, err
	}
	if m.pending, err = register(reg, m.pending); err != nil {
		return nil, err
	}
	return m, nil
}

// register registers c on reg, or returns the equal collector registered before.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing, nil
			}
		}
		return c, err
	}
	return c, nil
}
