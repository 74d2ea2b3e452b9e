package doctor

import (
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"edgeproxy/certs"
)

// checkLastError translates the ACME cache's record of the last failed order (see
// certs.LastErrorFile) into its likely cause and fix.
func (d *Doctor) checkLastError(s *site) Result {
	r := Result{Check: "acme.last_error"}
	file := filepath.Join(s.cfg.TLS.ACME.CacheDir, certs.LastErrorFile)
	switch {
	case s.lastErrErr != nil:
		r.Status = Warn
		r.Detail = fmt.Sprintf("cannot read %s: %v (the cache belongs to the edgeproxy service: run doctor as root, e.g. with sudo)", file, s.lastErrErr)
		return r
	case s.lastErr == nil:
		r.Status = OK
		r.Detail = "no failed ACME order on record (" + file + " does not exist)"
		return r
	}
	le := s.lastErr
	r.Status = Fail
	when := fmt.Sprintf("the order for %s failed at %s (attempt %d", le.Domain, le.Time.UTC().Format(time.RFC3339), le.Attempt)
	if !le.NextAttempt.IsZero() {
		when += ", next try at " + le.NextAttempt.UTC().Format(time.RFC3339) + " while edgeproxy runs"
	}
	when += ")"
	r.Detail = when + ": " + explain(le)
	if le.CAErrorType != "" {
		r.More = append(r.More, fmt.Sprintf("the CA said: %s: %s", le.CAErrorType, le.CAErrorDetail))
	} else {
		r.More = append(r.More, "error: "+le.Error)
	}
	if !contains(s.acmeDomains, normalize(le.Domain)) {
		r.Status = Warn
		r.More = append(r.More, fmt.Sprintf("(%s is no longer in tls.acme.domains; the record is from an earlier configuration)", le.Domain))
	}
	return r
}

// explain says in a sentence or two what a failed ACME order most likely means for the
// person who set up the box, and what to do.
func explain(le *certs.LastError) string {
	typ := le.CAErrorType
	if i := strings.LastIndex(typ, ":"); i >= 0 {
		typ = typ[i+1:]
	}
	detail := strings.ToLower(le.CAErrorDetail)
	port := "80/443"
	switch le.Challenge {
	case "tls-alpn-01":
		port = "443"
	case "http-01":
		port = "80"
	}
	has := func(words ...string) bool {
		for _, w := range words {
			if strings.Contains(detail, w) {
				return true
			}
		}
		return false
	}
	// The words come before the type: CAs differ in the type of a failed connection (Let's
	// Encrypt says connection, Pebble says unauthorized with "Failed to connect").
	switch {
	case typ == "connection" || has("failed to connect", "timeout during connect", "connection refused", "no route to host", "network is unreachable", "i/o timeout", "connection reset"):
		return fmt.Sprintf("the CA could not connect to this host%s: port %s is not reachable from the internet. "+
			"Open it in the firewall or the EC2 security group, inbound from anywhere (0.0.0.0/0 and ::/0: the CA validates from several places), and make sure edgeproxy listens on it (listen.https for 443, listen.http for 80)",
			connectionCause(detail), port)
	case typ == "unauthorized" || typ == "incorrectResponse" ||
		has("incorrect validation certificate", "key authorization", "invalid response", "does not match", "unexpected"):
		return fmt.Sprintf("the CA reached a server, but it answered with another certificate or content than this edgeproxy's: DNS for %s points elsewhere (an old IP, another box, a CDN or load balancer), or another server answers on port %s. "+
			"Point the A/AAAA records at this host (the dns: lines show where it points)", le.Domain, port)
	case typ == "dns":
		return fmt.Sprintf("the CA could not resolve %s: create its A record (and remove an AAAA record that does not point at this host)", le.Domain)
	case typ == "caa":
		return fmt.Sprintf("a CAA record of %s (or a parent) forbids this CA to issue: add one that allows it, or remove it", le.Domain)
	case typ == "rateLimited":
		return "the CA's rate limit: wait for the next attempt edgeproxy schedules (it backs off), and use the staging directory while trying things out"
	case typ == "rejectedIdentifier":
		return fmt.Sprintf("the CA refuses to issue for %s: public CAs issue only for public DNS names", le.Domain)
	case typ != "":
		return "the CA refused the order: its message below says why"
	case strings.Contains(le.Error, "dial tcp") || strings.Contains(le.Error, "timeout") || strings.Contains(le.Error, "no such host"):
		return "edgeproxy could not reach the CA: let this host make outbound HTTPS (port 443) connections (security group egress, firewall, HTTPS_PROXY); acme.directory above checks it"
	default:
		return "see the error below; edgeproxy's log has the whole exchange with the CA"
	}
}

// connectionCause names what the CA's connection error was, in a few words in
// parentheses, or "" when its words do not say.
func connectionCause(detail string) string {
	switch {
	case strings.Contains(detail, "refused"):
		return " (connection refused)"
	case strings.Contains(detail, "timeout") || strings.Contains(detail, "timed out"):
		return " (timeout)"
	case strings.Contains(detail, "no route") || strings.Contains(detail, "unreachable"):
		return " (no route to host)"
	case strings.Contains(detail, "reset"):
		return " (connection reset)"
	default:
		return ""
	}
}
