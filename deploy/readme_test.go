package deploy_test

import (
	"os"
	"strings"
	"testing"
)

// The README's comparison table has the rows issue 19 asks to be true, and the edgeproxy
// cell of each says what the tests here run: the row stays only while its test does.
func TestREADME_OperateRowsAreTheTestedOnes(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	var sources strings.Builder
	for _, f := range []string{"docker_test.go", "compose_test.go", "kubernetes_test.go", "fleet_test.go", "alerts_test.go", "../e2e/monitoring_test.go"} {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		sources.Write(data)
	}
	for _, row := range []struct{ name, cellSays, test string }{
		{"image built and run", "podman", "func TestImage_BuiltAndRun("},
		{"compose with Django", "podman-compose", "func TestCompose_PodmanComposeUp("},
		{"Kubernetes manifest", "podman play kube", "func TestKubernetes_PlayKubeFleet("},
		{"Kubernetes manifest", "podman play kube", "func TestKubernetes_PlayKube("},
		{"alert rules", "promtool", "func TestMonitoring_RulesAndDashboardAnswerFromARealPrometheus("},
	} {
		var line string
		for _, l := range strings.Split(string(readme), "\n") {
			if strings.HasPrefix(l, "| "+row.name+" |") {
				line = l
			}
		}
		cells := strings.Split(line, "|")
		if len(cells) < 3 {
			t.Errorf("README.md: no comparison row %q", row.name)
			continue
		}
		if edge := cells[2]; !strings.Contains(edge, row.cellSays) {
			t.Errorf("README.md row %q: edgeproxy cell %q does not say it runs with %s", row.name, edge, row.cellSays)
		}
		if !strings.Contains(sources.String(), row.test) {
			t.Errorf("README.md row %q: the test behind it (%s...) is gone", row.name, row.test)
		}
	}
}
