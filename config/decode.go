package config

import (
	"fmt"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// decoder walks a YAML node tree into a Go value by reflection. yaml.v3's own Decode stops
// at the first type error and reports lines without columns; walking the nodes ourselves
// gives every problem with its line and column, and records where each key was written so
// that later checks can point at it too.
type decoder struct {
	file     string
	problems []Problem
	pos      map[string]Pos
	failed   []string // key paths whose values could not be decoded
}

var (
	durationType = reflect.TypeOf(time.Duration(0))
	matcherType  = reflect.TypeOf(Matcher{})
)

// fail records that the value at path could not be decoded, and why.
func (d *decoder) fail(n *yaml.Node, path, format string, args ...any) {
	d.failed = append(d.failed, path)
	d.errorf(n, format, args...)
}

func (d *decoder) errorf(n *yaml.Node, format string, args ...any) {
	d.problems = append(d.problems, Problem{File: d.file, Pos: nodePos(n), Message: fmt.Sprintf(format, args...)})
}

func nodePos(n *yaml.Node) Pos {
	if n == nil {
		return Pos{Line: 1, Col: 1}
	}
	return Pos{Line: n.Line, Col: n.Column}
}

// decode stores node n into v, whose key path is path.
func (d *decoder) decode(n *yaml.Node, v reflect.Value, path string) {
	for n.Kind == yaml.DocumentNode || n.Kind == yaml.AliasNode {
		if n.Kind == yaml.DocumentNode {
			if len(n.Content) == 0 {
				return
			}
			n = n.Content[0]
		} else {
			n = n.Alias
		}
	}
	if path != "" {
		d.pos[path] = nodePos(n)
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return // an empty key keeps its default
	}
	switch {
	case v.Type() == durationType:
		d.decodeDuration(n, v, path)
	case v.Type() == matcherType:
		if d.scalar(n, path, "a status list such as 200-399") {
			m, err := ParseMatcher(n.Value)
			if err != nil {
				d.fail(n, path, "%s: %v", path, err)
				return
			}
			v.Set(reflect.ValueOf(m))
		}
	case v.Kind() == reflect.Map:
		d.decodeMap(n, v, path)
	case v.Type() == poolType:
		d.decodePool(n, v, path)
	case v.Kind() == reflect.Pointer && v.Type().Elem().Kind() == reflect.Struct:
		// An optional block (pool.tls): null keeps nil, a mapping allocates it.
		p := reflect.New(v.Type().Elem())
		d.decode(n, p.Elem(), path)
		v.Set(p)
	case v.Kind() == reflect.Struct:
		d.decodeStruct(n, v, path)
	case v.Kind() == reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			d.fail(n, path, "%s: want a list, got %s", path, describe(n))
			return
		}
		s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
		for i, item := range n.Content {
			d.decode(item, s.Index(i), fmt.Sprintf("%s[%d]", path, i))
		}
		v.Set(s)
	case v.Kind() == reflect.String:
		if d.scalar(n, path, "a string") {
			v.SetString(n.Value)
		}
	case v.Kind() == reflect.Bool:
		if !d.scalar(n, path, "true or false") {
			return
		}
		b, err := strconv.ParseBool(n.Value)
		if n.Tag != "!!bool" || err != nil {
			d.fail(n, path, "%s: want true or false, got %q", path, n.Value)
			return
		}
		v.SetBool(b)
	case v.Kind() == reflect.Int || v.Kind() == reflect.Int64:
		if !d.scalar(n, path, "an integer") {
			return
		}
		i, err := strconv.ParseInt(n.Value, 0, 64)
		if n.Tag != "!!int" || err != nil {
			d.fail(n, path, "%s: want an integer, got %q", path, n.Value)
			return
		}
		v.SetInt(i)
	default:
		panic("config: no decoder for " + v.Type().String()) // a schema bug, caught by tests
	}
}

// scalar reports whether n is a scalar, and records a problem if not.
func (d *decoder) scalar(n *yaml.Node, path, want string) bool {
	if n.Kind != yaml.ScalarNode {
		d.fail(n, path, "%s: want %s, got %s", path, want, describe(n))
		return false
	}
	return true
}

func (d *decoder) decodeDuration(n *yaml.Node, v reflect.Value, path string) {
	if !d.scalar(n, path, "a duration such as 30s") {
		return
	}
	if n.Value == "0" {
		v.SetInt(0)
		return
	}
	dur, err := time.ParseDuration(n.Value)
	if err != nil {
		d.fail(n, path, "%s: %q is not a duration (use a unit, e.g. 500ms, 30s, 5m)", path, n.Value)
		return
	}
	v.SetInt(int64(dur))
}

func (d *decoder) decodeStruct(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.MappingNode {
		d.fail(n, path, "%s: want a mapping of keys, got %s", nameOr(path), describe(n))
		return
	}
	fields := yamlFields(v.Type())
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		key, val := n.Content[i], n.Content[i+1]
		name := key.Value
		idx, ok := fields[name]
		if !ok {
			d.errorf(key, "unknown key %q in %s (known keys: %s)", name, nameOr(path), knownKeys(fields))
			continue
		}
		if seen[name] {
			d.errorf(key, "key %q repeated in %s", name, nameOr(path))
			continue
		}
		seen[name] = true
		d.decode(val, v.Field(idx), join(path, name))
	}
}

// yamlFields maps each yaml key of struct type t to its field index.
func yamlFields(t reflect.Type) map[string]int {
	fields := map[string]int{}
	for i := 0; i < t.NumField(); i++ {
		tag := t.Field(i).Tag.Get("yaml")
		if tag == "" || tag == "-" {
			continue
		}
		fields[strings.Split(tag, ",")[0]] = i
	}
	return fields
}

func knownKeys(fields map[string]int) string {
	names := make([]string, 0, len(fields))
	for name := range fields {
		names = append(names, name)
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	default:
		return fmt.Sprintf("%q", n.Value)
	}
}

func nameOr(path string) string {
	if path == "" {
		return "the top level"
	}
	return path
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}
