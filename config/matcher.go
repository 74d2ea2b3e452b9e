package config

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Matcher is a set of HTTP status codes written the way an ALB target group writes its
// success codes: single codes and inclusive ranges separated by commas, "200,302" or
// "200-399". The zero Matcher matches nothing.
type Matcher struct {
	text   string
	ranges [][2]int
}

// ParseMatcher parses a success-code list. Codes must lie in 100..599 and a range's low end
// must not exceed its high end.
func ParseMatcher(s string) (Matcher, error) {
	text := strings.TrimSpace(s)
	if text == "" {
		return Matcher{}, errors.New("empty status matcher")
	}
	var m Matcher
	for _, part := range strings.Split(text, ",") {
		part = strings.TrimSpace(part)
		lo, hi, isRange := strings.Cut(part, "-")
		from, err := parseCode(lo)
		if err != nil {
			return Matcher{}, err
		}
		to := from
		if isRange {
			if to, err = parseCode(hi); err != nil {
				return Matcher{}, err
			}
			if from > to {
				return Matcher{}, fmt.Errorf("status range %q is backwards", part)
			}
		}
		m.ranges = append(m.ranges, [2]int{from, to})
	}
	m.text = text
	return m, nil
}

func parseCode(s string) (int, error) {
	s = strings.TrimSpace(s)
	code, err := strconv.Atoi(s)
	if err != nil || len(s) != 3 {
		return 0, fmt.Errorf("%q is not a status code (want three digits such as 200)", s)
	}
	if code < 100 || code > 599 {
		return 0, fmt.Errorf("status code %d out of range 100-599", code)
	}
	return code, nil
}

func mustMatcher(s string) Matcher {
	m, err := ParseMatcher(s)
	if err != nil {
		panic(err) // only called with literals
	}
	return m
}

// Match reports whether code is one of the matcher's codes.
func (m Matcher) Match(code int) bool {
	for _, r := range m.ranges {
		if code >= r[0] && code <= r[1] {
			return true
		}
	}
	return false
}

// String returns the matcher as written, for logs ("status 400 not in 200-399").
func (m Matcher) String() string { return m.text }
