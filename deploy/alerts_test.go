package deploy_test

import (
	"os"
	"strings"
	"testing"
)

// Every shipped alert has a severity, a summary and a runbook annotation pointing at its
// section of docs/operations.md, which exists; the README lists it. (promtool checks and
// unit-tests the rules in e2e/monitoring_test.go.)
func TestAlerts_EachHasARunbookSection(t *testing.T) {
	var file struct {
		Groups []struct {
			Rules []struct {
				Alert       string            `yaml:"alert"`
				Labels      map[string]string `yaml:"labels"`
				Annotations map[string]string `yaml:"annotations"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	readYAML(t, "prometheus/edgeproxy-alerts.yml", &file)
	doc, err := os.ReadFile("../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, g := range file.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			n++
			if r.Labels["severity"] == "" || r.Annotations["summary"] == "" {
				t.Errorf("%s: severity %q, summary %q; want both", r.Alert, r.Labels["severity"], r.Annotations["summary"])
			}
			if want := "docs/operations.md#" + strings.ToLower(r.Alert); r.Annotations["runbook"] != want {
				t.Errorf("%s: runbook %q; want %q", r.Alert, r.Annotations["runbook"], want)
			}
			if !strings.Contains(string(doc), "\n### "+r.Alert+"\n") {
				t.Errorf("docs/operations.md has no section \"### %s\"", r.Alert)
			}
			if !strings.Contains(string(readme), r.Alert) {
				t.Errorf("README.md does not list %s", r.Alert)
			}
		}
	}
	if n < 6 {
		t.Errorf("%d alerts; want the 6 of issue 19", n)
	}
}
