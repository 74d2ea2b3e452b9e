package config

import (
	"reflect"
	"testing"
)

// The mixed-content keys: off by default, one in 10 sampled when on, and a sample rate
// outside 1..1000000 reported at its line and column.
func TestParse_MixedContentHeaders(t *testing.T) {
	cfg, err := Parse("c.yaml", []byte(minimal))
	if err != nil {
		t.Fatal(err)
	}
	if h := cfg.Headers; h.UpgradeInsecureRequests || h.MixedContentReport || h.MixedContentSample != 10 {
		t.Errorf("defaults %+v; want off, off, 10", h)
	}

	cfg, err = Parse("c.yaml", []byte(minimal+"headers:\n  upgrade_insecure_requests: true\n  mixed_content_report: true\n  mixed_content_sample: 1\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := Headers{UpgradeInsecureRequests: true, MixedContentReport: true, MixedContentSample: 1}
	if !reflect.DeepEqual(cfg.Headers, want) {
		t.Errorf("got %+v; want %+v", cfg.Headers, want)
	}

	_, err = Parse("c.yaml", []byte(minimal+"headers:\n  mixed_content_sample: 0\n"))
	got := problemsOf(t, err)
	wantProblem := "c.yaml:7:25: headers.mixed_content_sample must be 1..1000000 (one HTML response in N is scanned), got 0"
	if len(got) != 1 || got[0] != wantProblem {
		t.Errorf("got %q; want [%q]", got, wantProblem)
	}
}
