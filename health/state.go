package health

// State is a target's health state, named as an ALB names them.
type State string

// The states a target moves through. A target starts Initial; its first passing check makes
// it Healthy; after that the thresholds govern every transition.
const (
	Initial   State = "initial"
	Healthy   State = "healthy"
	Unhealthy State = "unhealthy"
	Draining  State = "draining"
)

// Reason codes, as an ALB reports them for failed checks.
const (
	ReasonNone = "none"
	// ReasonTimeout: no response head within the check timeout.
	ReasonTimeout = "Target.Timeout"
	// ReasonResponseCodeMismatch: a response whose status the matcher rejects.
	ReasonResponseCodeMismatch = "Target.ResponseCodeMismatch"
	// ReasonFailedHealthChecks: a connection error (refused, reset, DNS).
	ReasonFailedHealthChecks = "Target.FailedHealthChecks"
)

// machine counts consecutive results against the thresholds. It is pure logic: the checker
// feeds it results and acts on the transitions it reports.
type machine struct {
	state  State
	passes int // consecutive passes
	fails  int // consecutive failures
}

// observe records one check result and reports whether the state changed.
func (m *machine) observe(pass bool, healthyThreshold, unhealthyThreshold int) bool {
	if pass {
		m.passes++
		m.fails = 0
	} else {
		m.fails++
		m.passes = 0
	}
	next := m.state
	switch m.state {
	case Initial:
		if pass {
			next = Healthy // the first pass is enough, as for a newly registered ALB target
		} else if m.fails >= unhealthyThreshold {
			next = Unhealthy
		}
	case Healthy:
		if m.fails >= unhealthyThreshold {
			next = Unhealthy
		}
	case Unhealthy:
		if m.passes >= healthyThreshold {
			next = Healthy
		}
	}
	changed := next != m.state
	m.state = next
	return changed
}
