package telemetry

import (
	"github.com/prometheus/client_golang/prometheus"
)

// PassthroughMetrics are the metrics of TLS passthrough (package passthrough): its
// connections, bytes and targets' health, apart from the pool's, since a target may be in
// both. It implements passthrough.Observer. Use NewPassthroughMetrics.
type PassthroughMetrics struct {
	connections  *prometheus.CounterVec
	active       prometheus.Gauge
	bytes        *prometheus.CounterVec
	healthy      *prometheus.GaugeVec
	healthChecks *prometheus.CounterVec
	bytesIn      prometheus.Counter
	bytesOut     prometheus.Counter
}

// NewPassthroughMetrics registers the passthrough metrics on reg (the edge's registry,
// Metrics.Registry).
func NewPassthroughMetrics(reg prometheus.Registerer) *PassthroughMetrics {
	m := &PassthroughMetrics{
		connections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgeproxy_passthrough_connections_total",
			Help: "TLS connections routed by SNI to a passthrough target, by target and result (ok: connected; error: no target reachable, target \"none\" if the route has none).",
		}, []string{"target", "result"}),
		active: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "edgeproxy_passthrough_active_connections",
			Help: "Passed-through connections open now.",
		}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgeproxy_passthrough_bytes_total",
			Help: "Bytes relayed by passthrough, counted when a connection ends: in from clients, out to them.",
		}, []string{"direction"}),
		healthy: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "edgeproxy_passthrough_target_healthy",
			Help: "1 if the passthrough target passes its TCP-connect checks, else 0.",
		}, []string{"target"}),
		healthChecks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgeproxy_passthrough_health_checks_total",
			Help: "TCP-connect checks of passthrough targets, by target, result (pass, fail) and reason.",
		}, []string{"target", "result", "reason"}),
	}
	m.bytesIn, m.bytesOut = m.bytes.WithLabelValues("in"), m.bytes.WithLabelValues("out")
	reg.MustRegister(m.connections, m.active, m.bytes, m.healthy, m.healthChecks)
	return m
}

// PassthroughOpened counts a connection spliced to target.
func (m *PassthroughMetrics) PassthroughOpened(target string) {
	m.connections.WithLabelValues(target, "ok").Inc()
	m.active.Inc()
}

// PassthroughClosed records the end of a spliced connection.
func (m *PassthroughMetrics) PassthroughClosed(target string, in, out int64) {
	m.active.Dec()
	m.bytesIn.Add(float64(in))
	m.bytesOut.Add(float64(out))
}

// PassthroughFailed counts a connection that reached no target.
func (m *PassthroughMetrics) PassthroughFailed(target string) {
	m.connections.WithLabelValues(target, "error").Inc()
}

// HealthCheck records one TCP-connect check; it implements health.Observer.
func (m *PassthroughMetrics) HealthCheck(target string, pass bool, reason string) {
	result := "pass"
	if !pass {
		result = "fail"
	}
	m.healthChecks.WithLabelValues(target, result, reason).Inc()
}

// TargetHealthy sets a passthrough target's health gauge; it implements health.Observer.
func (m *PassthroughMetrics) TargetHealthy(target string, healthy bool) {
	v := 0.0
	if healthy {
		v = 1
	}
	m.healthy.WithLabelValues(target).Set(v)
}
