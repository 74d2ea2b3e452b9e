package config

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Passthrough routes TLS connections by the server name of their ClientHello, without
// terminating them, to targets of their own (as an AWS NLB with a TLS-speaking target
// group does). The targets are checked by TCP connect, with the intervals and thresholds
// of pool.health_check.
type Passthrough struct {
	// ServerNames are exact DNS names (no wildcards); a connection whose SNI is one of
	// them is passed through. A name may not also be one the edge terminates
	// (tls.acme.domains, or a name of a static certificate).
	ServerNames []string `yaml:"server_names"`
	// Targets are "host:port" addresses that speak TLS for those names.
	Targets []string `yaml:"targets"`
}

// passthrough checks the passthrough entries against themselves and tls.acme.domains.
// The names of static certificates need their files: see passthroughEnvironment.
func (k *checker) passthrough() {
	entries := k.c.Passthrough
	if len(entries) > 0 && k.c.Listen.HTTPS == "" {
		k.errorf("passthrough", "passthrough needs listen.https: connections are routed by SNI on the HTTPS listener")
	}
	acme := map[string]bool{}
	for _, d := range k.c.TLS.ACME.Domains {
		acme[normalName(d)] = true
	}
	seen := map[string]string{}
	for i, p := range entries {
		path := fmt.Sprintf("passthrough[%d]", i)
		if len(p.ServerNames) == 0 {
			k.errorf(path, "%s: server_names is empty: list the TLS server names (SNI) to pass through", path)
		}
		if len(p.Targets) == 0 {
			k.errorf(path, "%s: targets is empty: list at least one host:port that speaks TLS", path)
		}
		for j, name := range p.ServerNames {
			npath := fmt.Sprintf("%s.server_names[%d]", path, j)
			if err := checkServerName(name); err != nil {
				k.errorf(npath, "%s: %v", npath, err)
				continue
			}
			n := normalName(name)
			if prev, dup := seen[n]; dup {
				k.errorf(npath, "%s: %q is listed twice (also at %s)", npath, name, prev)
				continue
			}
			seen[n] = npath
			if acme[n] {
				k.errorf(npath, "%s: %q is also in tls.acme.domains: a name is either terminated at the edge or passed through, not both", npath, name)
			}
		}
		targets := map[string]int{}
		for j, t := range p.Targets {
			tpath := fmt.Sprintf("%s.targets[%d]", path, j)
			if err := checkTargetAddr(t); err != nil {
				k.errorf(tpath, "%s: %v", tpath, err)
				continue
			}
			if prev, dup := targets[t]; dup {
				k.errorf(tpath, "%s: %q is listed twice (also at index %d)", tpath, t, prev)
			}
			targets[t] = j
		}
	}
}

// checkServerName accepts an exact DNS name, as sent in SNI.
func checkServerName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("empty name")
	case strings.Contains(name, "*"):
		return fmt.Errorf("%q is a wildcard: list each name to pass through", name)
	case strings.ContainsAny(name, "/:"):
		return fmt.Errorf("%q is not a DNS name (write the name alone, without scheme, port or path)", name)
	}
	if _, err := netip.ParseAddr(name); err == nil {
		return fmt.Errorf("%q is an IP address: clients send no SNI for an IP, so it cannot be routed by name", name)
	}
	if !validDNSName(name) || strings.Contains(name, "_") {
		return fmt.Errorf("%q is not a DNS name", name)
	}
	return nil
}

// normalName is a server name as compared: lower case, without a final dot.
func normalName(name string) string {
	return strings.ToLower(strings.TrimSuffix(name, "."))
}

// passthroughEnvironment reports passthrough names that a static certificate also
// covers (exactly or by a wildcard): such a name would never reach the certificate. It
// looks at the certificates CheckEnvironment loaded.
func (k *checker) passthroughEnvironment() {
	if len(k.c.Passthrough) == 0 {
		return
	}
	for _, lc := range k.c.Resolved.Certificates {
		cpath := fmt.Sprintf("tls.certificates[%d]", slices.Index(k.c.TLS.Certificates, lc.Files))
		for i, p := range k.c.Passthrough {
			for j, name := range p.ServerNames {
				if checkServerName(name) != nil {
					continue
				}
				if lc.Certificate.Leaf.VerifyHostname(normalName(name)) == nil {
					npath := fmt.Sprintf("passthrough[%d].server_names[%d]", i, j)
					k.errorf(npath, "%s: %q is also a name of %s (%s): a name is either terminated at the edge or passed through, not both", npath, name, cpath, lc.Files.Cert)
				}
			}
		}
	}
}
