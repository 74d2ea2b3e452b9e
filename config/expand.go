package config

import (
	"fmt"
	"slices"
	"strings"
)

// pathVars are the variables a path-valued key may use, written ${NAME}: the directories
// systemd gives a unit (systemd.exec(5)). CREDENTIALS_DIRECTORY holds the files named by
// LoadCredential= (root-only key files made readable to the service user); STATE_DIRECTORY
// is the unit's StateDirectory= (the ACME cache). Only these are expanded, and only in
// paths, so that a "$" anywhere else means itself.
var pathVars = []string{"CREDENTIALS_DIRECTORY", "STATE_DIRECTORY"}

// pathKey is one path-valued key: where it is in the file, and the value to expand.
type pathKey struct {
	path string
	val  *string
}

// pathKeys lists every path-valued key that was written. A new key holding a file or
// directory path belongs here.
func (c *Config) pathKeys() []pathKey {
	var keys []pathKey
	for i := range c.TLS.Certificates {
		cf := &c.TLS.Certificates[i]
		keys = append(keys,
			pathKey{fmt.Sprintf("tls.certificates[%d].cert", i), &cf.Cert},
			pathKey{fmt.Sprintf("tls.certificates[%d].key", i), &cf.Key})
	}
	if a := &c.TLS.ACME; a.Enabled() {
		keys = append(keys, pathKey{"tls.acme.ca_roots", &a.CARoots}, pathKey{"tls.acme.cache_dir", &a.CacheDir})
	}
	for _, p := range c.pools() {
		if t := p.TLS; t != nil {
			keys = append(keys, pathKey{c.poolPath(p.Name) + ".tls.ca", &t.CA})
		}
	}
	keys = append(keys, c.storagePathKeys()...)
	return keys
}

// expandPaths replaces ${NAME} in the path-valued keys by the value lookup gives NAME (for
// the names in pathVars). A variable that is unset or empty is left as written: that is
// fine for a syntax-only check of a config meant for a systemd unit, and CheckEnvironment
// reports it (see unsetPathVars). It returns the problems of the syntax itself: an unknown
// or unterminated ${...}, or $NAME without braces.
func (c *Config) expandPaths(lookup func(string) (string, bool)) []Problem {
	var problems []Problem
	for _, pk := range c.pathKeys() {
		out, err := expandVars(*pk.val, func(name string) (string, bool) {
			v, ok := lookup(name)
			return v, ok && v != ""
		})
		if err != nil {
			problems = append(problems, Problem{File: c.File, Pos: c.PosOf(pk.path), Message: fmt.Sprintf("%s: %v", pk.path, err)})
			continue
		}
		*pk.val = out
	}
	return problems
}

// expandVars expands ${NAME} in s for the names in pathVars that lookup has, leaving the
// others as written. Any other "$" stands for itself, except "$NAME" without braces for a
// name of pathVars, which is an error (systemd units write ${NAME}; the braces make the end
// of the name plain).
func expandVars(s string, lookup func(string) (string, bool)) (string, error) {
	var b strings.Builder
	for {
		i := strings.IndexByte(s, '$')
		if i < 0 {
			b.WriteString(s)
			return b.String(), nil
		}
		b.WriteString(s[:i])
		s = s[i:]
		if !strings.HasPrefix(s, "${") {
			for _, name := range pathVars {
				if strings.HasPrefix(s[1:], name) {
					return "", fmt.Errorf("write ${%s} with braces", name)
				}
			}
			b.WriteByte('$')
			s = s[1:]
			continue
		}
		end := strings.IndexByte(s, '}')
		if end < 0 {
			return "", fmt.Errorf("%q: unterminated ${", s)
		}
		name := s[2:end]
		if !slices.Contains(pathVars, name) {
			return "", fmt.Errorf("${%s} is not expanded: paths may use only ${%s}", name, strings.Join(pathVars, "} and ${"))
		}
		if v, ok := lookup(name); ok {
			b.WriteString(v)
		} else {
			b.WriteString(s[:end+1])
		}
		s = s[end+1:]
	}
}

// unsetPathVars reports, for the checks of the machine, each path-valued key that still
// holds a ${NAME} because the variable was not set when the file was parsed. It returns the
// keys at fault, so that their files are not checked too.
func (k *checker) unsetPathVars() map[string]bool {
	bad := map[string]bool{}
	for _, pk := range k.c.pathKeys() {
		for _, name := range pathVars {
			if !strings.Contains(*pk.val, "${"+name+"}") {
				continue
			}
			bad[pk.path] = true
			hint := "systemd sets it for a unit with LoadCredential=; outside systemd, write the file's path"
			if name == "STATE_DIRECTORY" {
				hint = "systemd sets it for a unit with StateDirectory=; outside systemd, write the directory's path"
			}
			k.errorf(pk.path, "%s: ${%s} is not set (%s)", pk.path, name, hint)
		}
	}
	return bad
}
