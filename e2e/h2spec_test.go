package e2e

import (
	"bufio"
	"context"
	"encoding/xml"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"edgeproxy/internal/testutil"
)

const h2specKnownFailures = "testdata/h2spec-known-failures.txt"

// h2specReport is h2spec's JUnit report (-j): one testsuite per section, its cases in
// order, a case failing with a <failure> or an <error>.
type h2specReport struct {
	Suites []struct {
		Package string `xml:"package,attr"` // "http2/6.5.3"
		Cases   []struct {
			Desc    string    `xml:"classname,attr"`
			Failure *struct{} `xml:"failure"`
			Error   *struct{} `xml:"error"`
			Skipped *struct{} `xml:"skipped"`
		} `xml:"testcase"`
	} `xml:"testsuite"`
}

// failing returns the IDs of the failed cases, as h2spec names them on its command line
// (section/number, the number counting from 1 in the section), with their descriptions,
// and the number of cases run.
func (r h2specReport) failing() (failed map[string]string, total int) {
	failed = map[string]string{}
	for _, s := range r.Suites {
		for i, c := range s.Cases {
			total++
			if c.Failure != nil || c.Error != nil {
				failed[fmt.Sprintf("%s/%d", s.Package, i+1)] = c.Desc
			}
		}
	}
	return failed, total
}

// readKnownFailures returns the case IDs listed in file, each with the rest of its line.
func readKnownFailures(t *testing.T, file string) map[string]string {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	known := map[string]string{}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		id, why, _ := strings.Cut(line, " ")
		if !strings.Contains(why, "golang/go#") {
			t.Errorf("%s:%d: %s names no Go issue (golang/go#N)", file, n, id)
		}
		known[id] = strings.TrimSpace(why)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return known
}

// h2spec, the HTTP/2 conformance tester, runs all its cases against the edge's h2 (over
// TLS, as clients reach it); the cases that fail are exactly those listed, with their Go
// issues, in testdata/h2spec-known-failures.txt. A new failure fails here, and so does a
// listed case that passes, so that the list stays true.
func TestH2spec_FailuresAreTheKnownOnes(t *testing.T) {
	h2spec := testutil.RequireTool(t, "h2spec")
	known := readKnownFailures(t, h2specKnownFailures)
	e, _ := limitsEdge(t, "", "")
	host, port, err := net.SplitHostPort(e.HTTPS)
	if err != nil {
		t.Fatal(err)
	}
	report := filepath.Join(t.TempDir(), "h2spec.xml")
	// 145 cases; -o bounds each case's wait for an answer: 5 s, for a loaded machine (the
	// failing cases wait it out), so the run takes some 20 s and at most a few minutes.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, h2spec, "-t", "-k", "-h", host, "-p", port, "-o", "5", "-j", report)
	out, err := cmd.CombinedOutput()
	// h2spec exits 1 when a case fails: its report says which.
	if ctx.Err() != nil {
		t.Fatalf("h2spec did not finish within 5 minutes:\n%s", out)
	}
	raw, rerr := os.ReadFile(report)
	if rerr != nil {
		t.Fatalf("h2spec wrote no report (%v; exit: %v):\n%s", rerr, err, out)
	}
	var r h2specReport
	if err := xml.Unmarshal(raw, &r); err != nil {
		t.Fatalf("h2spec report: %v", err)
	}
	failed, total := r.failing()
	t.Logf("h2spec: %d cases, %d failed: %v", total, len(failed), slices.Sorted(maps.Keys(failed)))
	if total < 145 {
		t.Errorf("h2spec ran %d cases; want its 145", total)
	}
	for _, id := range slices.Sorted(maps.Keys(failed)) {
		if _, ok := known[id]; !ok {
			t.Errorf("new h2spec failure %s %q (run `h2spec -t -k -v -p PORT %s` against an edge for details)", id, failed[id], id)
		}
	}
	for _, id := range slices.Sorted(maps.Keys(known)) {
		if _, ok := failed[id]; !ok {
			t.Errorf("h2spec case %s (%s) passes now: remove it from %s", id, known[id], h2specKnownFailures)
		}
	}
	if t.Failed() {
		t.Logf("h2spec output:\n%s", out)
	}
}
