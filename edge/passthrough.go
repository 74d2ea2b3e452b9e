package edge

import (
	"edgeproxy/config"
	"edgeproxy/passthrough"
	"edgeproxy/telemetry"
)

// newPassthrough builds the SNI router of cfg's passthrough entries, or returns nil when
// there are none (then the HTTPS listener is not wrapped at all, and adding entries
// later needs a restart).
func (e *Edge) newPassthrough(cfg *config.Config) *passthrough.Router {
	if len(cfg.Passthrough) == 0 {
		return nil
	}
	return passthrough.New(passthrough.Options{
		Routes:      passthroughRoutes(cfg),
		PeekTimeout: cfg.Limits.ReadHeaderTimeout,
		DialTimeout: cfg.Pool.ConnectTimeout,
		Health:      healthOptions(&cfg.Pool, nil),
		Observer:    telemetry.NewPassthroughMetrics(e.metrics.Registry()),
		AccessLog:   cfg.Log.Access,
		Logger:      e.log,
	})
}

func passthroughRoutes(cfg *config.Config) []passthrough.Route {
	routes := make([]passthrough.Route, len(cfg.Passthrough))
	for i, p := range cfg.Passthrough {
		routes[i] = passthrough.Route{ServerNames: p.ServerNames, Targets: p.Targets}
	}
	return routes
}

// reloadPassthrough applies cfg's passthrough entries to the running router.
func (e *Edge) reloadPassthrough(cfg *config.Config) {
	if e.passthrough == nil {
		if len(cfg.Passthrough) > 0 {
			e.log.Warn("reload: passthrough entries added to an edge started without any; they take effect only after a restart")
		}
		return
	}
	e.passthrough.Update(passthroughRoutes(cfg), healthOptions(&cfg.Pool, nil))
}
