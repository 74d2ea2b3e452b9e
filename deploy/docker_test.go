package deploy_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"edgeproxy/internal/testutil"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// instruction is one Dockerfile instruction, continuation lines joined.
type instruction struct {
	line int
	cmd  string // upper case: FROM, RUN, ...
	args string
}

// stage is one FROM and the instructions after it. The ARGs before the first FROM are
// kept in a stage of their own, with from "".
type stage struct {
	from, name string
	body       []instruction
}

func (s stage) all(cmd string) []instruction {
	var out []instruction
	for _, in := range s.body {
		if in.cmd == cmd {
			out = append(out, in)
		}
	}
	return out
}

// last returns the last instruction cmd of the stage: the one Docker uses for USER,
// ENTRYPOINT, CMD and HEALTHCHECK.
func (s stage) last(t *testing.T, cmd string) instruction {
	t.Helper()
	ins := s.all(cmd)
	if len(ins) == 0 {
		t.Fatalf("stage %q has no %s", s.from, cmd)
	}
	return ins[len(ins)-1]
}

// parseDockerfile reads the Dockerfile's stages. It knows the syntax this repository uses:
// comments, backslash continuations and one instruction per logical line.
func parseDockerfile(t *testing.T, file string) []stage {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var stages []stage
	var cur strings.Builder
	start := 0
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if cur.Len() == 0 {
			start = n
		}
		if strings.HasSuffix(line, "\\") {
			cur.WriteString(strings.TrimSuffix(line, "\\") + " ")
			continue
		}
		cur.WriteString(line)
		cmd, args, _ := strings.Cut(cur.String(), " ")
		cur.Reset()
		in := instruction{line: start, cmd: strings.ToUpper(cmd), args: strings.TrimSpace(args)}
		if in.cmd == "FROM" {
			f := strings.Fields(in.args)
			s := stage{from: f[0]}
			if len(f) == 3 && strings.EqualFold(f[1], "AS") {
				s.name = f[2]
			}
			stages = append(stages, s)
			continue
		}
		if len(stages) == 0 {
			if in.cmd != "ARG" {
				t.Fatalf("%s:%d: %s before FROM", file, start, in.cmd)
			}
			stages = append(stages, stage{})
		}
		stages[len(stages)-1].body = append(stages[len(stages)-1].body, in)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return stages
}

// execForm decodes an instruction's JSON (exec form) argument list; shell form needs a
// shell, which the final image has not.
func execForm(t *testing.T, in instruction, args string) []string {
	t.Helper()
	var out []string
	if err := json.Unmarshal([]byte(args), &out); err != nil {
		t.Fatalf("Dockerfile:%d: %s %s is not in exec form [\"...\"]: %v", in.line, in.cmd, args, err)
	}
	return out
}

// The shape the README promises, as users build it (TestImage_BuiltAndRun builds and runs
// it): a Go build stage making a static binary, a minimal final stage running as non-root
// with the certificate cache on a volume and `edgeproxy healthcheck` as HEALTHCHECK. The
// build arguments GO_IMAGE and BASE default to golang and distroless, so that a plain
// `docker build` needs neither.
func TestDockerfile(t *testing.T) {
	stages := parseDockerfile(t, "../Dockerfile")
	if len(stages) != 3 || stages[0].from != "" {
		t.Fatalf("got %d stages; want global ARGs, a build stage and a final stage", len(stages))
	}
	args, build, final := stages[0], stages[1], stages[2]
	defaults := map[string]string{}
	for _, in := range args.all("ARG") {
		name, value, _ := strings.Cut(in.args, "=")
		defaults[name] = value
	}
	if want := map[string]string{"GO_IMAGE": "golang:1.26", "BASE": "gcr.io/distroless/static-debian12:nonroot"}; !maps.Equal(defaults, want) {
		t.Errorf("global ARGs %v; want %v", defaults, want)
	}
	if build.from != "${GO_IMAGE}" || build.name == "" {
		t.Errorf("build stage: got FROM %s AS %q; want FROM ${GO_IMAGE} AS <name>", build.from, build.name)
	}
	if final.from != "${BASE}" {
		t.Errorf("final stage: got FROM %s; want FROM ${BASE}", final.from)
	}
	var buildCmd string
	for _, in := range build.all("RUN") {
		if strings.Contains(in.args, "go build") {
			buildCmd = in.args
		}
	}
	for _, want := range []string{"CGO_ENABLED=0", "-trimpath", "./cmd/edgeproxy", "-o /out/edgeproxy"} {
		if !strings.Contains(buildCmd, want) {
			t.Errorf("build stage: the go build RUN %q lacks %q", buildCmd, want)
		}
	}

	if runs := final.all("RUN"); len(runs) > 0 {
		t.Errorf("final stage: RUN at line %d; the final image has no shell", runs[0].line)
	}
	copied := false
	for _, in := range final.all("COPY") {
		if strings.Contains(in.args, "--from="+build.name) && strings.HasSuffix(in.args, "/out/edgeproxy /edgeproxy") {
			copied = true
		}
		if !strings.Contains(in.args, "--from="+build.name) {
			t.Errorf("Dockerfile:%d: COPY %s: the final stage copies from the build stage only", in.line, in.args)
		}
	}
	if !copied {
		t.Errorf("final stage: no COPY --from=%s /out/edgeproxy /edgeproxy", build.name)
	}

	user := final.last(t, "USER").args
	uid, _, _ := strings.Cut(user, ":")
	if uid != "65532" {
		t.Errorf("final stage: got USER %s; want 65532 (distroless nonroot), not root", user)
	}
	if got := strings.Fields(final.last(t, "EXPOSE").args); !slices.Contains(got, "80") || !slices.Contains(got, "443") {
		t.Errorf("final stage: got EXPOSE %v; want 80 and 443", got)
	}
	if got := execForm(t, final.last(t, "VOLUME"), final.last(t, "VOLUME").args); !slices.Equal(got, []string{"/var/lib/edgeproxy"}) {
		t.Errorf("final stage: got VOLUME %v; want [/var/lib/edgeproxy]", got)
	}
	ownedVolume := false
	for _, in := range final.all("COPY") {
		if strings.Contains(in.args, "--chown=65532:65532") && strings.HasSuffix(in.args, " /var/lib/edgeproxy") {
			ownedVolume = true
		}
	}
	if !ownedVolume {
		t.Errorf("final stage: /var/lib/edgeproxy is not created owned by 65532: a new named volume would be root's")
	}

	entry := execForm(t, final.last(t, "ENTRYPOINT"), final.last(t, "ENTRYPOINT").args)
	cmd := execForm(t, final.last(t, "CMD"), final.last(t, "CMD").args)
	run := append(entry, cmd...)
	const config = "/etc/edgeproxy/edgeproxy.yaml"
	if want := []string{"/edgeproxy", "run", "-config", config}; !slices.Equal(run, want) {
		t.Errorf("final stage: ENTRYPOINT+CMD run %q; want %q", run, want)
	}

	hc := final.last(t, "HEALTHCHECK")
	_, hcArgs, ok := strings.Cut(hc.args, "CMD ")
	if !ok {
		t.Fatalf("Dockerfile:%d: HEALTHCHECK without CMD: %q", hc.line, hc.args)
	}
	if got, want := execForm(t, hc, hcArgs), []string{"/edgeproxy", "healthcheck", "-config", config}; !slices.Equal(got, want) {
		t.Errorf("HEALTHCHECK CMD %q; want %q (no shell or curl in the image)", got, want)
	}
}

// imageSite is what TestImage_BuiltAndRun runs the image against: Pebble, a backend on
// loopback, and the config and CA files the container mounts.
type imageSite struct {
	pebble                  *testutil.Pebble
	https, metrics, backend string
	configFile, caFile      string
	backendHealthy          atomic.Bool
	slowStarted             chan struct{}
	slowRelease             chan struct{}
}

const imageDomain = "app.test" // pebble-challtestsrv resolves every name to 127.0.0.1

func newImageSite(t *testing.T) *imageSite {
	t.Helper()
	s := &imageSite{
		https:       testutil.LoopbackAddr(t, "127.0.0.1"),
		metrics:     testutil.LoopbackAddr(t, "127.0.0.1"),
		slowStarted: make(chan struct{}, 1),
		slowRelease: make(chan struct{}),
	}
	s.backendHealthy.Store(true)
	_, tlsPort, _ := net.SplitHostPort(s.https)
	port, _ := strconv.Atoi(tlsPort)
	// TLS-ALPN-01 on the edge's https port.
	s.pebble = testutil.StartPebble(t, testutil.PebbleOptions{TLSPort: port})

	mux := http.NewServeMux()
	mux.HandleFunc("/health", func(w http.ResponseWriter, r *http.Request) {
		if !s.backendHealthy.Load() {
			http.NotFound(w, r)
		}
	})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		s.slowStarted <- struct{}{}
		<-s.slowRelease
		_, _ = io.WriteString(w, "slow done")
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "backend") })
	ln, err := net.Listen("tcp", testutil.LoopbackAddr(t, "127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	s.backend = ln.Addr().String()

	dir := t.TempDir()
	// Files the container's user (65532) reads: world-readable.
	ca, err := os.ReadFile(s.pebble.CARootsFile)
	if err != nil {
		t.Fatal(err)
	}
	s.caFile = filepath.Join(dir, "acme-ca.pem")
	s.configFile = filepath.Join(dir, "edgeproxy.yaml")
	config := fmt.Sprintf(`listen:
  https: %q
  metrics: %q
tls:
  acme:
    domains: [%s]
    email: ops@%s
    directory: %q
    ca_roots: /etc/edgeproxy/acme-ca.pem
    # cache_dir: the default, ${STATE_DIRECTORY}/acme, on the image's volume
pool:
  targets: [%q]
  health_check: {path: /health, interval: 200ms, healthy_threshold: 1, unhealthy_threshold: 2}
limits:
  shutdown_timeout: 20s
`, s.https, s.metrics, imageDomain, imageDomain, s.pebble.DirectoryURL, s.backend)
	for file, data := range map[string][]byte{s.caFile: ca, s.configFile: []byte(config)} {
		if err := os.WriteFile(file, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

// client trusts Pebble's root and dials every name to the edge.
func (s *imageSite) client() *http.Client {
	dialer := &net.Dialer{Timeout: 3 * time.Second}
	return &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: s.pebble.Roots()},
			DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
				return dialer.DialContext(ctx, network, s.https)
			},
		},
	}
}

// get fetches https://app.test/path through the edge.
func (s *imageSite) get(path string) (int, string, error) {
	resp, err := s.client().Get("https://" + imageDomain + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// leaf returns the certificate the edge serves for imageDomain.
func (s *imageSite) leaf(t *testing.T) *x509.Certificate {
	t.Helper()
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", s.https,
		&tls.Config{ServerName: imageDomain, RootCAs: s.pebble.Roots()})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0]
}

// metricsText returns the edge's /metrics.
func (s *imageSite) metricsText(t *testing.T) string {
	t.Helper()
	resp, err := http.Get("http://" + s.metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(body)
}

// runEdge starts the image as name with the site's config, the ACME CA and the named
// volume "state" at the image's VOLUME, on the host's network (loopback only in the
// config), and waits until it serves a certificate from Pebble.
func (s *imageSite) runEdge(t *testing.T, p *podman, image, name string) {
	t.Helper()
	p.run("run", "--detach", "--name", name, "--network", "host",
		"--volume", s.configFile+":/etc/edgeproxy/edgeproxy.yaml:ro",
		"--volume", s.caFile+":/etc/edgeproxy/acme-ca.pem:ro",
		"--volume", "state:/var/lib/edgeproxy",
		image)
	t.Cleanup(func() {
		if t.Failed() {
			logs, _ := p.cmd("logs", name).CombinedOutput()
			t.Logf("podman logs %s:\n%s", name, logs)
		}
	})
	testutil.WaitHTTPHost(t, "https://"+imageDomain+"/", "", s.client(), http.StatusOK, 60*time.Second)
}

// The image built from the Dockerfile's own final stage (see buildImage) runs as users
// run it: as uid 65532, serving HTTPS with a mounted config and a certificate from ACME
// (Pebble) cached on the image's volume, which a new container reuses without a new
// order; its HEALTHCHECK passes while the edge serves, and still passes when the
// targets' health endpoint is gone, since it promises the edge's liveness (/healthz),
// not the backends' (restarting the edge would not mend a backend, and the edge fails
// open); `podman stop` lets an in-flight request finish and the edge exits 0.
func TestImage_BuiltAndRun(t *testing.T) {
	p := newPodman(t)
	const image = "localhost/edgeproxy:test"
	p.buildImage(image)
	s := newImageSite(t)
	s.runEdge(t, p, image, "edge")

	if code, body, err := s.get("/"); err != nil || code != http.StatusOK || body != "backend" {
		t.Fatalf("GET / through the container: %d %q %v; want 200 \"backend\"", code, body, err)
	}
	p.checkRunsAs65532("edge")

	// The certificate's lifetime is exported for the alert on renewals (both ends).
	leaf := s.leaf(t)
	metrics := s.metricsText(t)
	for name, want := range map[string]time.Time{
		"edgeproxy_certificate_not_before_timestamp_seconds": leaf.NotBefore,
		"edgeproxy_certificate_expiry_timestamp_seconds":     leaf.NotAfter,
	} {
		line := fmt.Sprintf("%s{domain=%q} %d", name, imageDomain, want.Unix())
		if !strings.Contains(metrics, line) && !strings.Contains(metrics, fmt.Sprintf("%s{domain=%q} %s", name, imageDomain, strconv.FormatFloat(float64(want.Unix()), 'e', -1, 64))) {
			t.Errorf("/metrics lacks %q", line)
		}
	}

	// The ACME account and certificate are on the volume, written by the runtime user.
	mount := p.run("volume", "inspect", "--format", "{{.Mountpoint}}", "state")
	cached := 0
	_ = filepath.WalkDir(filepath.Join(mount, "acme"), func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		cached++
		if fi, err := d.Info(); err == nil && fi.Sys().(*syscall.Stat_t).Uid != 65532 {
			t.Errorf("%s: owner uid %d; want 65532", path, fi.Sys().(*syscall.Stat_t).Uid)
		}
		return nil
	})
	if cached == 0 {
		t.Errorf("no file under acme/ on the state volume (%s)", mount)
	}

	// HEALTHCHECK: healthy while serving; still healthy when the target fails its checks.
	if out, err := p.try("healthcheck", "run", "edge"); err != nil {
		t.Errorf("podman healthcheck run while serving: %v %s", err, out)
	}
	s.backendHealthy.Store(false)
	deadline := time.Now().Add(10 * time.Second)
	for targetState(t, "http://"+s.metrics+"/targets", s.backend) != "unhealthy" {
		if time.Now().After(deadline) {
			t.Fatalf("target did not turn unhealthy within 10s")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if out, err := p.try("healthcheck", "run", "edge"); err != nil {
		t.Errorf("podman healthcheck run with the target unhealthy: %v %s; want healthy (liveness only)", err, out)
	}
	s.backendHealthy.Store(true)

	// podman stop (SIGTERM) while a request is in flight: it completes, the edge exits 0.
	type result struct {
		code int
		body string
		err  error
	}
	done := make(chan result, 1)
	go func() {
		code, body, err := s.get("/slow")
		done <- result{code, body, err}
	}()
	select {
	case <-s.slowStarted:
	case <-time.After(10 * time.Second):
		t.Fatal("the slow request did not reach the backend within 10s")
	}
	stopped := make(chan error, 1)
	go func() {
		_, err := p.try("stop", "--time", "30", "edge")
		stopped <- err
	}()
	// The stop signal has reached the edge once it stops accepting connections.
	deadline = time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", s.https, time.Second)
		if err != nil {
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("the edge still accepts connections 10s after podman stop")
		}
		time.Sleep(50 * time.Millisecond)
	}
	close(s.slowRelease)
	if r := <-done; r.err != nil || r.code != http.StatusOK || r.body != "slow done" {
		t.Errorf("in-flight request across podman stop: %d %q %v; want 200 \"slow done\"", r.code, r.body, r.err)
	}
	if err := <-stopped; err != nil {
		t.Fatalf("podman stop: %v", err)
	}
	if code := p.run("inspect", "--format", "{{.State.ExitCode}}", "edge"); code != "0" {
		t.Errorf("edge exit code after podman stop: %s; want 0", code)
	}

	// A new container on the same volume serves the cached certificate: no new order.
	orders := s.pebble.Orders()
	s.runEdge(t, p, image, "edge2")
	if got := s.pebble.Orders(); got != orders {
		t.Errorf("Pebble orders: %d after a new container on the volume; want %d (the cache reused)", got, orders)
	}
}
