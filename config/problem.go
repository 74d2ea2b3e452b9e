package config

import (
	"fmt"
	"strings"
)

// Pos is a place in a configuration file, 1-based.
type Pos struct{ Line, Col int }

// Problem is one error or warning about a configuration, tied to where it was written.
type Problem struct {
	File    string
	Pos     Pos
	Message string
	// Warning problems are reported but do not make the configuration invalid.
	Warning bool
}

// String formats the problem as FILE:LINE:COL: message, the form editors and CI tools parse.
func (p Problem) String() string {
	kind := ""
	if p.Warning {
		kind = "warning: "
	}
	return fmt.Sprintf("%s:%d:%d: %s%s", p.File, p.Pos.Line, p.Pos.Col, kind, p.Message)
}

// Error is returned when a configuration has at least one error; it holds them all, in
// file order.
type Error struct {
	Problems []Problem
}

func (e *Error) Error() string {
	lines := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}
