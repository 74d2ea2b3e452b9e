package config

import (
	"reflect"
	"strings"
)

// Changed lists the keys whose values differ between a and b, as dotted key paths
// ("limits.idle_timeout", "tls.acme.domains"), in schema order: what a reload changes.
// A list is one key ("pool.targets"); an optional block present in one and absent in the
// other is one key too ("pool.tls"). Values derived from files (Resolved) are not
// compared: the same file names are the same keys.
func Changed(a, b *Config) []string {
	var out []string
	changed(reflect.ValueOf(a).Elem(), reflect.ValueOf(b).Elem(), "", &out)
	return out
}

func changed(a, b reflect.Value, path string, out *[]string) {
	switch {
	case a.Kind() == reflect.Struct && a.Type() != matcherType:
		t := a.Type()
		for i := 0; i < t.NumField(); i++ {
			tag := t.Field(i).Tag.Get("yaml")
			if tag == "" || tag == "-" {
				continue
			}
			changed(a.Field(i), b.Field(i), join(path, strings.Split(tag, ",")[0]), out)
		}
	case a.Kind() == reflect.Pointer && !a.IsNil() && !b.IsNil():
		changed(a.Elem(), b.Elem(), path, out)
	case a.Type() == matcherType:
		if a.Interface().(Matcher).String() != b.Interface().(Matcher).String() {
			*out = append(*out, path)
		}
	default:
		if !reflect.DeepEqual(a.Interface(), b.Interface()) {
			*out = append(*out, path)
		}
	}
}
