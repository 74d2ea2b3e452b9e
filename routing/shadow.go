package routing

import "strings"

// Shadow says that a route can never match: every request it would match is taken by an
// earlier route.
type Shadow struct {
	Route, By int // indexes into the table's routes
}

// Unreachable lists the routes shadowed by an earlier one, for validate. It is
// conservative: it reports a route only when the earlier route's every condition is
// provably at least as wide (no host condition, or hosts covering the later route's; no
// path, or a prefix of the later route's path; no methods, or a superset; header
// conditions a subset of the later route's).
func (t *Table) Unreachable() []Shadow {
	var out []Shadow
	for j := range t.routes {
		for i := 0; i < j; i++ {
			if covers(&t.routes[i], &t.routes[j]) {
				out = append(out, Shadow{Route: j, By: i})
				break
			}
		}
	}
	return out
}

// covers reports whether every request b matches is matched by a.
func covers(a, b *compiled) bool {
	return coversHosts(a.hosts, b.hosts) && coversPath(a, b) &&
		coversMethods(a.methods, b.methods) && coversHeaders(a.headers, b.headers)
}

func coversHosts(a, b []hostPattern) bool {
	if len(a) == 0 {
		return true
	}
	if len(b) == 0 {
		return false
	}
	for _, hb := range b {
		ok := false
		for _, ha := range a {
			switch {
			case ha == hb:
				ok = true
			case ha.wildcard && !hb.wildcard:
				ok = matchHost([]hostPattern{ha}, hb.name)
			}
			if ok {
				break
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

func coversPath(a, b *compiled) bool {
	switch {
	case !a.hasPath:
		return true
	case !b.hasPath:
		return false
	case a.exact != "":
		return b.exact == a.exact
	case b.exact != "":
		return strings.HasPrefix(b.exact, a.prefix)
	}
	return strings.HasPrefix(b.prefix, a.prefix)
}

func coversMethods(a, b []string) bool {
	if len(a) == 0 {
		return true
	}
	if len(b) == 0 {
		return false
	}
	for _, m := range b {
		if !containsMethod(a, m) {
			return false
		}
	}
	return true
}

// coversHeaders: every condition of a is implied by one of b's on the same field with
// values a subset of a's.
func coversHeaders(a, b []HeaderCondition) bool {
	for _, ca := range a {
		ok := false
		for _, cb := range b {
			if strings.EqualFold(ca.Name, cb.Name) && subset(cb.Values, ca.Values) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

func subset(small, big []string) bool {
	for _, s := range small {
		found := false
		for _, b := range big {
			if s == b {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}
