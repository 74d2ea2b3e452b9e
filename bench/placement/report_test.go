package placement

import (
	"bytes"
	"encoding/xml"
	"strings"
	"testing"
	"time"
)

func sampleReport() *Report {
	f := func(v float64) *float64 { return &v }
	r := &Report{Machine: "Test CPU <1>", CPUs: 2, Duration: time.Second, Seconds: 1, Connections: 2, Pinning: "edge CPU 0, backend CPU 1, load CPU 1",
		Results: []Result{
			{Placement: "plain", Workload: "handshake", Requests: 100, RPS: 100, P50us: 500, P99us: 900, EdgeCPUus: 100, BackendCPUus: 50, LoadCPUus: 120},
			{Placement: "edge", Workload: "handshake", Requests: 100, RPS: 80, P50us: 700, P99us: 1500, EdgeCPUus: 450, BackendCPUus: 50, LoadCPUus: 500, TLSMetricUs: f(300)},
		}}
	r.derive()
	return r
}

func TestReport_Table(t *testing.T) {
	var b bytes.Buffer
	if err := sampleReport().WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{"edge − plain µs/req", "edge  handshake", "450.0", "300.0", "350.0", "plain  handshake"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
}

func TestReport_SVGIsWellFormed(t *testing.T) {
	var b bytes.Buffer
	if err := sampleReport().WriteSVG(&b); err != nil {
		t.Fatal(err)
	}
	dec := xml.NewDecoder(&b)
	for {
		_, err := dec.Token()
		if err != nil {
			if err.Error() != "EOF" {
				t.Fatalf("SVG is not well-formed XML: %v", err)
			}
			break
		}
	}
}

func TestNiceScale(t *testing.T) {
	tests := []struct{ v, max, step float64 }{
		{450, 600, 200}, {18, 20, 5}, {0, 1, 0.25}, {1000, 1000, 500},
	}
	for _, tt := range tests {
		if m, s := niceScale(tt.v); m != tt.max || s != tt.step {
			t.Errorf("niceScale(%v) = %v, %v; want %v, %v", tt.v, m, s, tt.max, tt.step)
		}
	}
}
