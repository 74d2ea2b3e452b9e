package config

import (
	"fmt"
	"reflect"
	"sort"
	"strconv"

	"gopkg.in/yaml.v3"

	"edgeproxy/balance"
	"edgeproxy/routing"
)

// Route is one listener rule (routes[]), as an ALB has them: conditions, all of which a
// request must meet, and one action. Routes are evaluated in order; the first match wins.
// A route without conditions is a default route.
type Route struct {
	// Name names the route in logs and in the route label of the request metrics.
	Name string `yaml:"name"`
	// Hosts are host names, or patterns with one leading wildcard label (*.example.com).
	Hosts []string `yaml:"hosts"`
	// PathPrefix matches paths beginning with it; Path one path exactly.
	PathPrefix string `yaml:"path_prefix"`
	Path       string `yaml:"path"`
	// Methods are HTTP methods, any of which matches.
	Methods []string `yaml:"methods"`
	// Headers are request fields that must have one of their values.
	Headers []RouteHeader `yaml:"headers"`

	// Pool forwards to the named pool ("pool" is the pool block's, without pools).
	Pool string `yaml:"pool"`
	// Redirect answers with a redirect.
	Redirect *RouteRedirect `yaml:"redirect"`
	// FixedResponse answers with a fixed status and body.
	FixedResponse *RouteFixedResponse `yaml:"fixed_response"`
}

// RouteHeader is a header condition: the field Name with one of Values.
type RouteHeader struct {
	Name   string   `yaml:"name"`
	Values []string `yaml:"values"`
}

// RouteRedirect is a redirect action; each part left empty keeps the request's.
type RouteRedirect struct {
	Scheme string `yaml:"scheme"`
	Host   string `yaml:"host"`
	Port   string `yaml:"port"`
	Path   string `yaml:"path"`
	// Status is 301 (default), 302, 307 or 308.
	Status int `yaml:"status"`
}

// RouteFixedResponse is a fixed-response action.
type RouteFixedResponse struct {
	// Status defaults to 200; ContentType to text/plain; charset=utf-8.
	Status      int    `yaml:"status"`
	ContentType string `yaml:"content_type"`
	Body        string `yaml:"body"`
}

// SinglePool is the name of the pool block when there are no pools.
const SinglePool = "pool"

// NamedPool is one pool of the configuration with its name.
type NamedPool struct {
	Name string
	*Pool
}

var poolType = reflect.TypeOf(Pool{})

// decodeMap decodes a mapping with string keys into a map; a *Pool value starts from the
// pool defaults.
func (d *decoder) decodeMap(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.MappingNode {
		d.fail(n, path, "%s: want a mapping of names, got %s", nameOr(path), describe(n))
		return
	}
	m := reflect.MakeMap(v.Type())
	for i := 0; i+1 < len(n.Content); i += 2 {
		key, val := n.Content[i], n.Content[i+1]
		elemPath := join(path, key.Value)
		d.pos[elemPath] = nodePos(key)
		if m.MapIndex(reflect.ValueOf(key.Value)).IsValid() {
			d.errorf(key, "%s: name %q repeated", nameOr(path), key.Value)
			continue
		}
		elem := reflect.New(v.Type().Elem()).Elem()
		if elem.Kind() == reflect.Pointer && elem.Type().Elem() == poolType {
			p := Default().Pool
			elem.Set(reflect.ValueOf(&p))
			d.decodePool(val, reflect.ValueOf(&p).Elem(), elemPath)
		} else {
			d.decode(val, elem, elemPath)
		}
		m.SetMapIndex(reflect.ValueOf(key.Value), elem)
	}
	v.Set(m)
}

// decodePool decodes a pool block. A target may be written as {addr, weight}: the weight
// goes to Weights, the address to Targets like any other.
func (d *decoder) decodePool(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind == yaml.MappingNode {
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value != "targets" || n.Content[i+1].Kind != yaml.SequenceNode {
				continue
			}
			for j, item := range n.Content[i+1].Content {
				if item.Kind != yaml.MappingNode {
					continue
				}
				d.weightedTarget(item, v, fmt.Sprintf("%s[%d]", join(path, "targets"), j))
			}
		}
	}
	d.decodeStruct(n, v, path)
}

// weightedTarget reads {addr, weight} and rewrites the node to the address alone.
func (d *decoder) weightedTarget(item *yaml.Node, v reflect.Value, path string) {
	var addr *yaml.Node
	weight := 1
	for k := 0; k+1 < len(item.Content); k += 2 {
		key, val := item.Content[k], item.Content[k+1]
		switch key.Value {
		case "addr":
			addr = val
		case "weight":
			w, err := strconv.Atoi(val.Value)
			if val.Kind != yaml.ScalarNode || err != nil || w < 1 || w > 1000 {
				d.fail(val, path, "%s.weight: want an integer 1..1000, got %s", path, describe(val))
				continue
			}
			weight = w
		default:
			d.errorf(key, "unknown key %q in %s (known keys: addr, weight)", key.Value, path)
		}
	}
	if addr == nil || addr.Kind != yaml.ScalarNode {
		d.fail(item, path, "%s: want host:port, or {addr: host:port, weight: N}", path)
		return
	}
	p := v.Addr().Interface().(*Pool)
	if p.Weights == nil {
		p.Weights = map[string]int{}
	}
	p.Weights[addr.Value] = weight
	*item = *addr
}

// pools lists the configuration's pools in name order, the pool block alone (named
// "pool") when there are none.
func (c *Config) pools() []NamedPool {
	if len(c.Pools) == 0 {
		return []NamedPool{{Name: SinglePool, Pool: &c.Pool}}
	}
	names := make([]string, 0, len(c.Pools))
	for name := range c.Pools {
		names = append(names, name)
	}
	sort.Strings(names)
	out := make([]NamedPool, len(names))
	for i, name := range names {
		out[i] = NamedPool{Name: name, Pool: c.Pools[name]}
	}
	return out
}

// poolPath is the key path of pool name's block.
func (c *Config) poolPath(name string) string {
	if len(c.Pools) == 0 {
		return "pool"
	}
	return "pools." + name
}

// routes checks routes[] against the pools and compiles the routing table.
func (k *checker) routes() {
	c := k.c
	if len(c.Pools) > 0 && len(c.Pool.Targets) > 0 {
		k.errorf("pool", "use either pool (one pool) or pools (named pools), not both")
	}
	used := map[string]bool{}
	var rs []routing.Route
	ok := true
	for i, r := range c.Routes {
		path := fmt.Sprintf("routes[%d]", i)
		rr := routing.Route{Name: r.Name, Hosts: r.Hosts, PathPrefix: r.PathPrefix, Path: r.Path, Methods: r.Methods, Pool: r.Pool}
		if r.Name == "" {
			rr.Name = path
		}
		for _, h := range r.Headers {
			rr.Headers = append(rr.Headers, routing.HeaderCondition{Name: h.Name, Values: h.Values})
		}
		if rd := r.Redirect; rd != nil {
			status := rd.Status
			if status == 0 {
				status = 301
			}
			rr.Redirect = &routing.Redirect{Scheme: rd.Scheme, Host: rd.Host, Port: rd.Port, Path: rd.Path, Status: status}
		}
		if f := r.FixedResponse; f != nil {
			status, ct := f.Status, f.ContentType
			if status == 0 {
				status = 200
			}
			if ct == "" {
				ct = "text/plain; charset=utf-8"
			}
			rr.FixedResponse = &routing.FixedResponse{Status: status, ContentType: ct, Body: f.Body}
		}
		if _, err := routing.New([]routing.Route{rr}); err != nil {
			k.errorf(path, "%s: %v", path, err)
			ok = false
			continue
		}
		if r.Pool != "" {
			used[r.Pool] = true
			if !k.hasPool(r.Pool) {
				k.errorf(path+".pool", "%s.pool: no pool named %q (pools: %s)", path, r.Pool, k.poolNames())
				ok = false
			}
		}
		rs = append(rs, rr)
	}
	if !ok {
		return
	}
	if len(rs) == 0 {
		// No routes: every request goes to the one pool, or, with pools, that is a mistake.
		if len(c.Pools) > 1 {
			k.errorf("routes", "routes is empty: with several pools, routes say which requests go to which")
			return
		}
		name := SinglePool
		for n := range c.Pools {
			name = n
		}
		rs = []routing.Route{{Name: "default", Pool: name}}
		used[name] = true
	}
	table, err := routing.New(rs)
	if err != nil {
		k.errorf("routes", "routes: %v", err)
		return
	}
	for _, sh := range table.Unreachable() {
		k.warnf(fmt.Sprintf("routes[%d]", sh.Route), "routes[%d] (%s) is unreachable: every request it matches is taken by routes[%d] (%s) before it",
			sh.Route, rs[sh.Route].Name, sh.By, rs[sh.By].Name)
	}
	for _, p := range c.pools() {
		if !used[p.Name] {
			k.warnf(c.poolPath(p.Name), "%s: no route sends requests to pool %q", c.poolPath(p.Name), p.Name)
		}
	}
	c.Resolved.Routes = table
}

func (k *checker) hasPool(name string) bool {
	for _, p := range k.c.pools() {
		if p.Name == name {
			return true
		}
	}
	return false
}

func (k *checker) poolNames() string {
	var names []string
	for _, p := range k.c.pools() {
		names = append(names, p.Name)
	}
	return fmt.Sprint(names)
}

// balanceName checks a pool's balance and slow_start keys.
func (k *checker) balanceName(path string, p *Pool) {
	switch balance.Name(p.Balance) {
	case balance.RoundRobin, balance.LeastOutstanding, balance.Weighted:
	default:
		k.errorf(path+".balance", "%s.balance must be round_robin, least_outstanding_requests or weighted, got %q", path, p.Balance)
	}
	if len(p.Weights) > 0 && balance.Name(p.Balance) == balance.RoundRobin {
		k.warnf(path+".balance", "%s: targets have weights, but balance is round_robin, which ignores them (use weighted)", path)
	}
	if d := p.SlowStart.DurationSeconds; d != 0 && (d < 30 || d > 900) {
		k.errorf(path+".slow_start.duration_seconds", "%s.slow_start.duration_seconds must be 30-900 (as on an ALB) or 0 for off, got %d", path, d)
	}
}
