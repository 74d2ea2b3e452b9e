// Package telemetry owns edgeproxy's Prometheus registry and the metrics every other part
// reports to. Parts do not import Prometheus: they call small observer methods on *Metrics
// (proxy.Observer, certs.Observer) or on one pool's *PoolMetrics (pool.Observer), and a
// nil observer in those packages means nothing is recorded.
package telemetry

import (
	"encoding/json"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics holds the registry and the collectors of the metrics contract in DESIGN.md. It
// has no global state: each edge builds its own.
type Metrics struct {
	reg *prometheus.Registry

	requests          *prometheus.CounterVec
	requestDuration   prometheus.Histogram
	targetHealthy     *prometheus.GaugeVec
	healthChecks      *prometheus.CounterVec
	failOpen          *prometheus.CounterVec
	retries           *prometheus.CounterVec
	ejections         *prometheus.CounterVec
	unknownServerName prometheus.Counter
	certExpiry        *prometheus.GaugeVec
	certRenewal       *prometheus.GaugeVec
	certNotBefore     *prometheus.GaugeVec
	acmeOrders        *prometheus.CounterVec
	mixedContentPages prometheus.Counter
	proxyErrors       *prometheus.CounterVec
}

// proxyErrorReasons are the reason label's values (proxy.Reason*), created at zero so
// that a rate over them answers before the first error.
var proxyErrorReasons = []string{"no_target", "body_too_large", "client_closed", "target_timeout", "target_error", "deregistered", "misdirected"}

// New returns metrics registered on a fresh registry, with the process and Go collectors.
func New() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgeproxy_requests_total",
			Help: "Requests answered, by status code, pool and route (from the configuration; \"none\" when there was none: no route matched, or the route's action is a redirect or a fixed response) and target (\"none\" when no target was chosen).",
		}, []string{"code", "pool", "route", "target"}),
		requestDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "edgeproxy_request_duration_seconds",
			Help:    "Time from request head read to response finished.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}),
		targetHealthy: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "edgeproxy_target_healthy",
			Help: "1 if the target passes its health checks, else 0, by pool and target.",
		}, []string{"pool", "target"}),
		healthChecks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgeproxy_health_checks_total",
			Help: "Active health checks, by pool, target, result (pass, fail) and ALB reason code.",
		}, []string{"pool", "target", "result", "reason"}),
		failOpen: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgeproxy_fail_open_total",
			Help: "Requests sent to a target chosen among all the pool's targets because none was healthy, by pool.",
		}, []string{"pool"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgeproxy_retries_total",
			Help: "Requests sent to another target after failing on this one, by pool and target.",
		}, []string{"pool", "target"}),
		ejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgeproxy_passive_ejections_total",
			Help: "Times passive health ejected the target after consecutive failed requests, by pool and target.",
		}, []string{"pool", "target"}),
		unknownServerName: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edgeproxy_tls_unknown_server_name_total",
			Help: "TLS handshakes for a server name no certificate covers (or without SNI).",
		}),
		certExpiry: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "edgeproxy_certificate_expiry_timestamp_seconds",
			Help: "Expiry (Unix time) of the certificate served for each domain of tls.acme.domains (and IP address of tls.acme.ip_addresses).",
		}, []string{"domain"}),
		certRenewal: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "edgeproxy_certificate_renewal_timestamp_seconds",
			Help: "When (Unix time) the ACME certificate of each domain or IP address will be renewed: a time in the CA's renewal window (ARI), else by its lifetime.",
		}, []string{"domain"}),
		certNotBefore: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "edgeproxy_certificate_not_before_timestamp_seconds",
			Help: "Start of validity (Unix time) of the certificate served for each domain: with the expiry, its lifetime.",
		}, []string{"domain"}),
		acmeOrders: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgeproxy_acme_orders_total",
			Help: "ACME certificate order attempts, by result (ok, error).",
		}, []string{"result"}),
		mixedContentPages: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edgeproxy_mixed_content_pages_total",
			Help: "Sampled HTML responses over https that load http:// scripts or stylesheets (headers.mixed_content_report).",
		}),
		proxyErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgeproxy_proxy_errors_total",
			Help: "Requests the edge answered itself instead of a target, by reason: no_target (503), body_too_large (413), client_closed (499), target_timeout (504), target_error (502), deregistered (502: the target was removed by a reload and its deregistration delay ended), misdirected (421: the TLS connection's certificate does not cover the request's host).",
		}, []string{"reason"}),
	}
	for _, r := range proxyErrorReasons {
		m.proxyErrors.WithLabelValues(r)
	}
	m.acmeOrders.WithLabelValues("ok")
	m.acmeOrders.WithLabelValues("error")
	m.reg.MustRegister(
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collectors.NewGoCollector(),
		m.requests, m.requestDuration, m.targetHealthy, m.healthChecks, m.failOpen, m.unknownServerName,
		m.retries, m.ejections,
		m.certExpiry, m.certRenewal, m.certNotBefore, m.acmeOrders,
		m.mixedContentPages, m.proxyErrors,
	)
	return m
}

// Registry is where later parts (TLS cost accounting, ACME) register their collectors.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Request records one answered request; it implements proxy.Observer. pool, route and
// target come from the configuration, never from the request, so the labels stay bounded.
func (m *Metrics) Request(code int, pool, route, target string, d time.Duration) {
	m.requests.WithLabelValues(codeLabel(code), orNone(pool), orNone(route), orNone(target)).Inc()
	m.requestDuration.Observe(d.Seconds())
}

func orNone(label string) string {
	if label == "" {
		return "none"
	}
	return label
}

// statusLabels holds the code label of every status, so that counting a request does
// not format (and allocate) one. Read-only after init.
var statusLabels = func() (labels [600]string) {
	for i := range labels {
		labels[i] = strconv.Itoa(i)
	}
	return labels
}()

func codeLabel(code int) string {
	if code >= 0 && code < len(statusLabels) {
		return statusLabels[code]
	}
	return strconv.Itoa(code)
}

// FailOpen records one request of pool routed while none of its targets was healthy; it
// implements proxy.Observer.
func (m *Metrics) FailOpen(pool string) { m.failOpen.WithLabelValues(pool).Inc() }

// Retry records a request of pool retried after failing on target; it implements
// proxy.Observer.
func (m *Metrics) Retry(pool, target string) { m.retries.WithLabelValues(pool, target).Inc() }

// ProxyError records a request the edge answered itself, by reason; it implements
// proxy.Observer.
func (m *Metrics) ProxyError(reason string) { m.proxyErrors.WithLabelValues(reason).Inc() }

// Pool returns the observer of the pool named name (a name from the configuration: pool
// for the pool block, or a key of pools), which labels every target's series with it, and
// creates the pool's fail-open count at zero so that a rate over it answers before the
// first fail-open.
func (m *Metrics) Pool(name string) *PoolMetrics {
	m.failOpen.WithLabelValues(name)
	return &PoolMetrics{m: m, pool: name}
}

// PoolMetrics records the health checks, health and passive ejections of one pool's
// targets, under the label pool. It implements pool.Observer (and health.Observer). Use
// Metrics.Pool.
type PoolMetrics struct {
	m    *Metrics
	pool string
}

// HealthCheck records one active check; it implements health.Observer.
func (p *PoolMetrics) HealthCheck(target string, pass bool, reason string) {
	result := "pass"
	if !pass {
		result = "fail"
	}
	p.m.healthChecks.WithLabelValues(p.pool, target, result, reason).Inc()
}

// TargetHealthy sets a target's health gauge; it implements health.Observer.
func (p *PoolMetrics) TargetHealthy(target string, healthy bool) {
	v := 0.0
	if healthy {
		v = 1
	}
	p.m.targetHealthy.WithLabelValues(p.pool, target).Set(v)
}

// PassiveEjection records target being ejected by passive health; it implements
// pool.Observer.
func (p *PoolMetrics) PassiveEjection(target string) {
	p.m.ejections.WithLabelValues(p.pool, target).Inc()
}

// ForgetTarget removes the series of target in pool once a reload has removed the target
// and it drained, so that the label set stays that of the configuration. The same
// address in another pool keeps its series.
func (m *Metrics) ForgetTarget(pool, target string) {
	l := prometheus.Labels{"pool": pool, "target": target}
	m.targetHealthy.Delete(l)
	m.healthChecks.DeletePartialMatch(l)
	m.requests.DeletePartialMatch(l)
	m.retries.Delete(l)
	m.ejections.Delete(l)
}

// ForgetPool removes the series of a pool a reload removed that are not a target's (its
// fail-open count, its requests answered without a target); each target's go with
// ForgetTarget once it drained.
func (m *Metrics) ForgetPool(pool string) {
	m.failOpen.DeleteLabelValues(pool)
	m.requests.DeletePartialMatch(prometheus.Labels{"pool": pool, "target": "none"})
}

// UnknownServerName counts a handshake for a name no certificate covers; it implements
// certs.Observer.
func (m *Metrics) UnknownServerName() { m.unknownServerName.Inc() }

// MixedContentPage counts an HTML page found to load http:// scripts or stylesheets; it
// implements proxy.MixedContentObserver.
func (m *Metrics) MixedContentPage() { m.mixedContentPages.Inc() }

// ACMEOrder counts one finished ACME order attempt; it implements certs.ACMEObserver.
func (m *Metrics) ACMEOrder(ok bool) {
	result := "ok"
	if !ok {
		result = "error"
	}
	m.acmeOrders.WithLabelValues(result).Inc()
}

// CertificateExpiry sets the expiry of the certificate served for domain (a name from
// tls.acme.domains); it implements certs.ACMEObserver.
func (m *Metrics) CertificateExpiry(domain string, notAfter time.Time) {
	m.certExpiry.WithLabelValues(domain).Set(float64(notAfter.Unix()))
}

// CertificateRenewal sets when the certificate served for domain (a name of
// tls.acme.domains or ip_addresses) will be renewed; it implements certs.ACMEObserver.
func (m *Metrics) CertificateRenewal(domain string, at time.Time) {
	m.certRenewal.WithLabelValues(domain).Set(float64(at.Unix()))
}

// JSONHandler serves the value of v, encoded as indented JSON at each request: the
// admin listener's /targets and /certificates.
func JSONHandler(v func() any) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { writeJSON(w, v()) })
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// CertificateNotBefore sets the start of validity of the certificate served for domain,
// so that alerts know its lifetime (deploy/prometheus/edgeproxy-alerts.yml); it implements
// certs.ACMEObserver.
func (m *Metrics) CertificateNotBefore(domain string, notBefore time.Time) {
	m.certNotBefore.WithLabelValues(domain).Set(float64(notBefore.Unix()))
}

// AdminHandler serves /metrics, /healthz and /targets. targets returns the value encoded
// as JSON at /targets (the targets' statuses), given the request, whose query may ask for
// another view of them.
func (m *Metrics) AdminHandler(targets func(*http.Request) any) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /targets", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, targets(r)) })
	return mux
}
