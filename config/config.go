// Package config reads edgeproxy's YAML configuration: the schema, its defaults and its
// validation. Every problem is reported with the file, line and column it comes from, and
// all problems are reported together, so that one run of `edgeproxy validate` shows them all.
//
// Loading happens in three steps, as separate functions: decoding (types and unknown keys),
// defaults, then checks. Checks that look at the machine (files, directories) are kept apart
// in CheckEnvironment, so that a config meant for another host can be checked for syntax only.
// The checks hand over what they parsed and loaded in Config.Resolved (TLS version, trusted
// proxies, enums, certificates, CA pools): the rest of edgeproxy reads those, never the
// strings again.
package config

import (
	"time"
)

// Config is a whole edgeproxy configuration. The zero value is not useful; use Parse or Load,
// which fill in the defaults documented on each field.
type Config struct {
	Listen     Listen     `yaml:"listen"`
	TLS        TLS        `yaml:"tls"`
	Pool       Pool       `yaml:"pool"`
	Limits     Limits     `yaml:"limits"`
	Forwarding Forwarding `yaml:"forwarding"`
	Headers    Headers    `yaml:"headers"`
	Log        Log        `yaml:"log"`
	Proxy      Proxy      `yaml:"proxy"`

	// Passthrough routes TLS connections by SNI, unterminated, to targets of their own
	// (see Passthrough in passthrough.go). Default none.
	Passthrough []Passthrough `yaml:"passthrough"`

	// Pools are named target groups, each with the settings of Pool; routes send
	// requests to them (see routes.go). Without pools, the pool block is the one pool,
	// named "pool". Default none.
	Pools map[string]*Pool `yaml:"pools"`
	// Routes are ALB-style listener rules, evaluated in order (see Route). Default none:
	// every request goes to the one pool.
	Routes []Route `yaml:"routes"`

	// File is the path the configuration was read from; it prefixes every Problem.
	File string `yaml:"-"`
	// Warnings are problems that do not stop edgeproxy from running, such as a metrics
	// listener on a public address.
	Warnings []Problem `yaml:"-"`
	// Resolved are the values above parsed into the types edgeproxy uses (see Resolved).
	Resolved Resolved `yaml:"-"`

	// pos maps a dotted key path ("pool.targets[1]") to where its value was written.
	pos map[string]Pos
}

// Listen holds the listener addresses.
type Listen struct {
	// HTTPS is the TLS listener's address. Default ":443".
	HTTPS string `yaml:"https"`
	// HTTP is the plain-HTTP listener's address; empty means no such listener. It answers
	// ACME HTTP-01 challenges and then does what HTTPMode says.
	HTTP string `yaml:"http"`
	// HTTPMode is "redirect" (308 to https, the default) or "proxy" (proxy plain HTTP to the
	// pool, for benchmarks and for a TLS-terminating load balancer in front).
	HTTPMode string `yaml:"http_mode"`
	// H2C accepts HTTP/2 with prior knowledge on HTTP, besides HTTP/1.1, when HTTPMode is
	// "proxy": a connection whose first bytes are the client preface
	// "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" is served as HTTP/2 in clear, for gRPC-style
	// clients and a TLS-terminating load balancer that speaks HTTP/2 to its targets. There
	// is no "Upgrade: h2c" step, as with Go's http.Protocols.UnencryptedHTTP2. Default false.
	H2C bool `yaml:"h2c"`
	// Metrics is the admin listener (/metrics, /healthz, /targets); empty means off.
	Metrics string `yaml:"metrics"`
}

// TLS holds the certificate sources and protocol settings of the HTTPS listener.
type TLS struct {
	// MinVersion is "1.2" (default) or "1.3".
	MinVersion string `yaml:"min_version"`
	// Certificates are static certificate/key file pairs, chosen by SNI.
	Certificates []CertificateFiles `yaml:"certificates"`
	// SelfSigned generates an ECDSA P-256 certificate at start-up, for local use.
	SelfSigned bool `yaml:"self_signed"`
	// ACME obtains and renews certificates automatically (see ACME in acme.go).
	ACME ACME `yaml:"acme"`
	// TLSCost turns on the TLS CPU accounting (edgeproxy_tls_* cost metrics, see
	// telemetry/tlscost). Default true; false serves TLS unmeasured.
	TLSCost bool `yaml:"tls_cost"`
}

// CertificateFiles names one PEM certificate chain and its private key.
type CertificateFiles struct {
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
}

// Pool is the target group: the backends and how they are checked and reached.
type Pool struct {
	// Targets are "host:port" addresses; the host may be an IP or a DNS name.
	Targets     []string    `yaml:"targets"`
	HealthCheck HealthCheck `yaml:"health_check"`
	// ConnectTimeout bounds dialling a target. Default 5s.
	ConnectTimeout time.Duration `yaml:"connect_timeout"`
	// ResponseHeaderTimeout bounds the wait for a target's response head; then 504. Default 60s.
	ResponseHeaderTimeout time.Duration `yaml:"response_header_timeout"`
	// DeregistrationDelay bounds how long requests in flight to a target removed by a
	// reload may run before they are cancelled, as on an ALB. Default 30s; 0 cancels at once.
	DeregistrationDelay time.Duration `yaml:"deregistration_delay"`
	// Passive is outlier detection from real traffic.
	Passive Passive `yaml:"passive"`
	// Retries is how often a failed request may be sent to another target (see README);
	// default 1, 0..3.
	Retries int `yaml:"retries"`
	// TLS, when set, makes the edge speak TLS to the targets (re-encrypt), health checks
	// included. Nil means plain HTTP to the targets.
	TLS *UpstreamTLS `yaml:"tls"`
	// Balance is the selection policy: round_robin (default), least_outstanding_requests
	// or weighted (targets written as {addr, weight}).
	Balance string `yaml:"balance"`
	// SlowStart ramps a target's share after it joins or comes back healthy, as an ALB's
	// slow_start.duration_seconds: 30-900, or 0 (default) for off.
	SlowStart SlowStart `yaml:"slow_start"`
	// Weights are the weights of targets written as {addr, weight}, by address; others
	// weigh 1.
	Weights map[string]int `yaml:"-"`
}

// SlowStart is a pool's slow_start block.
type SlowStart struct {
	DurationSeconds int `yaml:"duration_seconds"`
}

// UpstreamTLS is how the edge verifies targets that speak TLS.
type UpstreamTLS struct {
	// CA is a PEM file of the roots that sign the targets' certificates; empty means the
	// system roots.
	CA string `yaml:"ca"`
	// ServerName is the name verified in the targets' certificates (and sent as SNI);
	// empty means the target's host.
	ServerName string `yaml:"server_name"`
	// InsecureSkipVerify turns verification off: for tests only, and logged loudly.
	InsecureSkipVerify bool `yaml:"insecure_skip_verify"`
}

// Passive ejects a target after consecutive failed requests (refused, reset, response-head
// timeout), before the active check would notice, as Envoy's outlier detection does.
type Passive struct {
	// ConsecutiveFailures in a row eject the target; default 3; 0 turns it off.
	ConsecutiveFailures int `yaml:"consecutive_failures"`
	// EjectionTime is the first ejection's length, multiplied by the number of ejections
	// in a row (at most 10×); active checks passing healthy_threshold times end it early.
	// Default 30s.
	EjectionTime time.Duration `yaml:"ejection_time"`
}

// HealthCheck mirrors an AWS ALB target group's health check settings.
type HealthCheck struct {
	// Path is the request path of the check. Default "/".
	Path string `yaml:"path"`
	// Host is the Host header of the check; empty means the target's address. Django's
	// ALLOWED_HOSTS usually rejects that, so set it to the site's name.
	Host string `yaml:"host"`
	// Interval between checks of one target. Default 30s, at least 100ms.
	Interval time.Duration `yaml:"interval"`
	// Timeout of one check. Default min(5s, Interval); at most Interval.
	Timeout time.Duration `yaml:"timeout"`
	// HealthyThreshold is the number of passes in a row that make an unhealthy target
	// healthy. Default 5, 1..10.
	HealthyThreshold int `yaml:"healthy_threshold"`
	// UnhealthyThreshold is the number of failures in a row that make a healthy target
	// unhealthy. Default 2, 1..10.
	UnhealthyThreshold int `yaml:"unhealthy_threshold"`
	// Matcher lists the status codes that pass. Default "200-399".
	Matcher Matcher `yaml:"matcher"`
}

// Limits protect the listeners from slow, large or too many clients.
type Limits struct {
	ReadHeaderTimeout time.Duration `yaml:"read_header_timeout"` // default 10s
	IdleTimeout       time.Duration `yaml:"idle_timeout"`        // default 120s
	MaxHeaderBytes    int           `yaml:"max_header_bytes"`    // default 65536
	MaxConnections    int           `yaml:"max_connections"`     // default 10000
	// MaxBodyBytes caps a request body (413 beyond); 0 means unlimited.
	MaxBodyBytes    int64         `yaml:"max_body_bytes"`
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"` // default 30s
}

// Forwarding says whose forwarding headers are believed.
type Forwarding struct {
	// TrustedProxies are CIDRs (or single IPs) whose X-Forwarded-For is kept and extended;
	// from any other client it is replaced by the client's address.
	TrustedProxies []string `yaml:"trusted_proxies"`
}

// Headers adds response headers at the edge.
type Headers struct {
	// HSTS is the Strict-Transport-Security value for HTTPS responses; empty means none.
	HSTS string `yaml:"hsts"`
	// UpgradeInsecureRequests adds "Content-Security-Policy: upgrade-insecure-requests"
	// to HTML responses over https that carry no Content-Security-Policy, so that browsers
	// load a page's http:// scripts and stylesheets over https instead of blocking them.
	UpgradeInsecureRequests bool `yaml:"upgrade_insecure_requests"`
	// MixedContentReport scans a sample of HTML responses (their first 64 KiB, as they
	// stream) for http:// scripts and stylesheets, counts the pages found in
	// edgeproxy_mixed_content_pages_total and logs each path once. Default false.
	MixedContentReport bool `yaml:"mixed_content_report"`
	// MixedContentSample scans one HTML response in this many when MixedContentReport is
	// on; 1 scans every one. Default 10.
	MixedContentSample int `yaml:"mixed_content_sample"`
}

// Proxy selects the data path.
type Proxy struct {
	// FastPath serves HTTP/1.1 on edgeproxy's own fast path (default true); false sends
	// everything through net/http, for comparison and as a safety valve. Both refuse the
	// same malformed requests.
	FastPath bool `yaml:"fast_path"`
}

// Log configures logging.
type Log struct {
	// Format is "text" (default) or "json".
	Format string `yaml:"format"`
	// Access writes one line per request.
	Access bool `yaml:"access"`
}

// Default returns a configuration holding every default of the schema and no targets.
func Default() *Config {
	return &Config{
		Listen: Listen{HTTPS: ":443", HTTPMode: "redirect"},
		TLS:    TLS{MinVersion: "1.2", ACME: ACME{Directory: LetsEncryptURL}, TLSCost: true},
		Pool: Pool{
			HealthCheck: HealthCheck{
				Path:               "/",
				Interval:           30 * time.Second,
				HealthyThreshold:   5,
				UnhealthyThreshold: 2,
				Matcher:            mustMatcher("200-399"),
			},
			ConnectTimeout:        5 * time.Second,
			ResponseHeaderTimeout: 60 * time.Second,
			DeregistrationDelay:   30 * time.Second,
			Passive:               Passive{ConsecutiveFailures: 3, EjectionTime: 30 * time.Second},
			Retries:               1,
			Balance:               "round_robin",
		},
		Limits: Limits{
			ReadHeaderTimeout: 10 * time.Second,
			IdleTimeout:       120 * time.Second,
			MaxHeaderBytes:    65536,
			MaxConnections:    10000,
			ShutdownTimeout:   30 * time.Second,
		},
		Headers: Headers{MixedContentSample: 10},
		Log:     Log{Format: "text"},
		Proxy:   Proxy{FastPath: true},
	}
}
