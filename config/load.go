package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"sort"

	"gopkg.in/yaml.v3"
)

// Load reads, decodes and checks the configuration file at path, including the checks of
// the environment (certificate files readable and matching their keys). The returned error,
// if not a read error, is an *Error holding every problem found.
func Load(path string) (*Config, error) {
	cfg, err := LoadSyntax(path)
	if err != nil {
		return nil, err
	}
	if problems := cfg.CheckEnvironment(); len(problems) > 0 {
		return nil, &Error{Problems: problems}
	}
	return cfg, nil
}

// LoadSyntax reads and checks the file at path without looking at the machine: for a
// configuration meant for another host or a container.
func LoadSyntax(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return Parse(path, data)
}

// Parse decodes and checks a configuration read from file (used only in messages). It
// applies the defaults and every check that does not need the machine.
func Parse(file string, data []byte) (*Config, error) {
	cfg := Default()
	cfg.File = file
	cfg.pos = map[string]Pos{}
	d := &decoder{file: file, pos: cfg.pos}

	dec := yaml.NewDecoder(bytes.NewReader(data))
	var root yaml.Node
	switch err := dec.Decode(&root); {
	case errors.Is(err, io.EOF):
		// An empty file is a configuration of defaults only; the checks say what is missing.
	case err != nil:
		return nil, &Error{Problems: []Problem{syntaxProblem(file, err)}}
	default:
		var extra yaml.Node
		if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
			return nil, &Error{Problems: []Problem{{File: file, Pos: nodePos(&extra), Message: "more than one YAML document; edgeproxy reads only one"}}}
		}
		d.decode(&root, reflect.ValueOf(cfg).Elem(), "")
	}
	cfg.applyDerivedDefaults()
	problems := append(d.problems, cfg.check(d.failed)...)
	problems = append(problems, cfg.expandPaths(os.LookupEnv)...)
	sortProblems(problems)
	var errs, warnings []Problem
	for _, p := range problems {
		if p.Warning {
			warnings = append(warnings, p)
		} else {
			errs = append(errs, p)
		}
	}
	cfg.Warnings = warnings
	if len(errs) > 0 {
		return nil, &Error{Problems: errs}
	}
	return cfg, nil
}

// syntaxProblem turns a yaml.v3 parse error ("yaml: line 3: ...") into a Problem. yaml.v3
// reports no column for syntax errors, so the column is 1.
func syntaxProblem(file string, err error) Problem {
	msg := err.Error()
	var line int
	var rest string
	if n, _ := fmt.Sscanf(msg, "yaml: line %d:", &line); n == 1 {
		_, rest, _ = cutAfter(msg, ": ")
		if rest != "" {
			_, rest, _ = cutAfter(rest, ": ")
		}
	}
	if line == 0 {
		return Problem{File: file, Pos: Pos{1, 1}, Message: "invalid YAML: " + trimYAML(msg)}
	}
	return Problem{File: file, Pos: Pos{line, 1}, Message: "invalid YAML: " + rest}
}

func cutAfter(s, sep string) (string, string, bool) {
	for i := 0; i+len(sep) <= len(s); i++ {
		if s[i:i+len(sep)] == sep {
			return s[:i], s[i+len(sep):], true
		}
	}
	return s, "", false
}

func trimYAML(msg string) string {
	if len(msg) > 6 && msg[:6] == "yaml: " {
		return msg[6:]
	}
	return msg
}

func sortProblems(ps []Problem) {
	sort.SliceStable(ps, func(i, j int) bool {
		if ps[i].Pos.Line != ps[j].Pos.Line {
			return ps[i].Pos.Line < ps[j].Pos.Line
		}
		return ps[i].Pos.Col < ps[j].Pos.Col
	})
}

// PosOf returns where the value at key path (such as "pool.targets[0]") was written, or the
// position of its nearest written parent, or 1:1.
func (c *Config) PosOf(path string) Pos {
	for {
		if p, ok := c.pos[path]; ok {
			return p
		}
		i := lastSep(path)
		if i < 0 {
			return Pos{Line: 1, Col: 1}
		}
		path = path[:i]
	}
}

func lastSep(path string) int {
	for i := len(path) - 1; i >= 0; i-- {
		if path[i] == '.' || path[i] == '[' {
			return i
		}
	}
	return -1
}

// IsSet reports whether the key at path was written in the file.
func (c *Config) IsSet(path string) bool {
	_, ok := c.pos[path]
	return ok
}
