package routing

// normalHost returns host without its port and one trailing dot, as a sub-slice: no
// allocation. An IPv6 literal keeps its brackets.
func normalHost[S ~string | ~[]byte](host S) S {
	if len(host) > 0 && host[0] == '[' {
		for i := 0; i < len(host); i++ {
			if host[i] == ']' {
				return host[:i+1]
			}
		}
		return host
	}
	colons, at := 0, -1
	for i := 0; i < len(host); i++ {
		if host[i] == ':' {
			colons++
			at = i
		}
	}
	if colons == 1 {
		host = host[:at]
	}
	if n := len(host); n > 1 && host[n-1] == '.' {
		host = host[:n-1]
	}
	return host
}

// normalPath returns the path of a request target for matching. In the common case it is
// a sub-slice of target (the part before any query) and norm is nil. When the path holds
// a percent-encoding, an empty segment ("//") or a dot segment, norm is the path as the
// most normalising server would see it: percent-decoded once, runs of slashes merged, dot
// segments removed (RFC 3986 §5.2.4) — what path.Clean gives, with a trailing slash kept.
// So "/api/%2e%2e/admin", "/api%2F..%2Fadmin" and "/api//../admin" all match as
// "/admin": no spelling of a request reaches a pool that its normal form's route does not
// name, whichever normalisation the target applies.
func normalPath[S ~string | ~[]byte](target S) (path S, norm []byte) {
	path = target
	if len(path) > 0 && path[0] != '/' {
		path = absolutePath(path)
	}
	for i := 0; i < len(path); i++ {
		if path[i] == '?' || path[i] == '#' {
			path = path[:i]
			break
		}
	}
	if len(path) == 0 || path[0] != '/' || !needsNormalizing(path) {
		// A target with no absolute path ("*", or a malformed "%2Fadmin") has nothing
		// to normalise: decoding it could make a path that no server would see.
		return path, nil
	}
	buf := make([]byte, 0, len(path))
	for i := 0; i < len(path); i++ {
		c := path[i]
		if c == '%' && i+2 < len(path) {
			if d, ok := unhex2(path[i+1], path[i+2]); ok {
				c = d
				i += 2
			}
		}
		if c == '/' && len(buf) > 0 && buf[len(buf)-1] == '/' {
			continue // merge slashes
		}
		buf = append(buf, c)
	}
	return path, removeDotSegments(buf)
}

// absolutePath returns the path of an absolute-form target ("http://host/p" is "/p"), or
// the target itself when it is not one ("*").
func absolutePath[S ~string | ~[]byte](t S) S {
	for i := 0; i+2 < len(t); i++ {
		if t[i] == ':' && t[i+1] == '/' && t[i+2] == '/' {
			rest := t[i+3:]
			for j := 0; j < len(rest); j++ {
				if rest[j] == '/' || rest[j] == '?' {
					return rest[j:]
				}
			}
			return rest[len(rest):]
		}
		if t[i] == '/' || t[i] == '?' || t[i] == '#' {
			break // no scheme before this: "#:///api" is not an absolute-form target
		}
	}
	return t
}

// needsNormalizing reports whether p has a percent sign, "//", or a "." or ".." segment.
func needsNormalizing[S ~string | ~[]byte](p S) bool {
	for i := 0; i < len(p); i++ {
		switch p[i] {
		case '%':
			return true
		case '/':
			if i > 0 && p[i-1] == '/' {
				return true
			}
		case '.':
			if i > 0 && p[i-1] == '/' {
				rest := p[i+1:]
				if len(rest) == 0 || rest[0] == '/' || rest[0] == '.' && (len(rest) == 1 || rest[1] == '/') {
					return true
				}
			}
		}
	}
	return false
}

// removeDotSegments applies RFC 3986 §5.2.4 to an absolute path, in place.
func removeDotSegments(p []byte) []byte {
	if len(p) == 0 || p[0] != '/' {
		return p
	}
	out := p[:0:len(p)]
	for i := 0; i < len(p); {
		// p[i] is '/'; the segment runs to the next '/'.
		j := i + 1
		for j < len(p) && p[j] != '/' {
			j++
		}
		seg := p[i+1 : j]
		last := j == len(p)
		switch string(seg) {
		case ".":
			if last {
				out = append(out, '/')
			}
		case "..":
			// Drop the last segment written, then this one.
			k := len(out) - 1
			for k >= 0 && out[k] != '/' {
				k--
			}
			if k < 0 {
				k = 0
			}
			out = out[:k]
			if last {
				out = append(out, '/')
			}
		default:
			out = append(out, p[i:j]...)
		}
		i = j
	}
	if len(out) == 0 {
		out = append(out, '/')
	}
	return out
}

func unhex2(a, b byte) (byte, bool) {
	x, ok1 := unhex(a)
	y, ok2 := unhex(b)
	return x<<4 | y, ok1 && ok2
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}
