package deploy_test

import (
	"crypto/tls"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"edgeproxy/internal/testutil"
)

const (
	composeFile   = "compose/docker-compose.yml"
	composeConfig = "compose/edgeproxy.yaml"
)

// composeService is the part of a compose service these tests look at.
type composeService struct {
	Build struct {
		Context string `yaml:"context"`
	} `yaml:"build"`
	Command     []string          `yaml:"command"`
	Ports       []string          `yaml:"ports"`
	Expose      []string          `yaml:"expose"`
	Volumes     []string          `yaml:"volumes"`
	DependsOn   []string          `yaml:"depends_on"`
	Environment map[string]string `yaml:"environment"`
}

type composeProject struct {
	Services map[string]composeService `yaml:"services"`
	Volumes  map[string]any            `yaml:"volumes"`
}

// edgeConfig is the part of an edgeproxy config these tests look at.
type edgeConfig struct {
	Listen struct {
		Metrics string `yaml:"metrics"`
	} `yaml:"listen"`
	TLS struct {
		ACME struct {
			Domains  []string `yaml:"domains"`
			CacheDir string   `yaml:"cache_dir"`
		} `yaml:"acme"`
	} `yaml:"tls"`
	Pool struct {
		Targets     []string `yaml:"targets"`
		HealthCheck struct {
			Path string `yaml:"path"`
			Host string `yaml:"host"`
		} `yaml:"health_check"`
	} `yaml:"pool"`
}

func readYAML(t *testing.T, file string, v any) {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, v); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
}

// The compose file puts edgeproxy in front of Django the way the README describes, and
// agrees with the Dockerfile and with the edgeproxy config it mounts.
func TestCompose_Structure(t *testing.T) {
	var p composeProject
	readYAML(t, composeFile, &p)
	var cfg edgeConfig
	readYAML(t, composeConfig, &cfg)

	edge, ok := p.Services["edgeproxy"]
	if !ok {
		t.Fatalf("%s: no edgeproxy service", composeFile)
	}
	django, ok := p.Services["django"]
	if !ok {
		t.Fatalf("%s: no django service", composeFile)
	}

	// edgeproxy: built from the root Dockerfile, serving the mounted config.
	if _, err := os.Stat(filepath.Join("compose", edge.Build.Context, "Dockerfile")); err != nil {
		t.Errorf("edgeproxy build context %q: %v", edge.Build.Context, err)
	}
	if want := []string{"run", "-config", "/etc/edgeproxy/edgeproxy.yaml"}; !slices.Equal(edge.Command, want) {
		t.Errorf("edgeproxy command: got %q; want %q", edge.Command, want)
	}
	if !slices.Contains(edge.Volumes, "./edgeproxy.yaml:/etc/edgeproxy/edgeproxy.yaml:ro") {
		t.Errorf("edgeproxy volumes %q: the config is not mounted read-only at /etc/edgeproxy/edgeproxy.yaml", edge.Volumes)
	}
	for _, want := range []string{"80:80", "443:443"} {
		if !slices.Contains(edge.Ports, want) {
			t.Errorf("edgeproxy ports %q: no %q", edge.Ports, want)
		}
	}
	if !slices.Contains(edge.DependsOn, "django") {
		t.Errorf("edgeproxy depends_on %q: no django", edge.DependsOn)
	}

	// Certificates on a named volume at the image's VOLUME, holding the ACME cache.
	certVolume := ""
	for _, v := range edge.Volumes {
		if src, dst, _ := strings.Cut(v, ":"); dst == "/var/lib/edgeproxy" {
			certVolume = src
		}
	}
	if _, declared := p.Volumes[certVolume]; certVolume == "" || !declared {
		t.Errorf("edgeproxy volumes %q: no named volume (declared under volumes:) at /var/lib/edgeproxy", edge.Volumes)
	}
	if !strings.HasPrefix(cfg.TLS.ACME.CacheDir, "/var/lib/edgeproxy/") {
		t.Errorf("%s: tls.acme.cache_dir %q is not on the certificate volume", composeConfig, cfg.TLS.ACME.CacheDir)
	}

	// Metrics published on the host's loopback only, on the config's port.
	_, metricsPort, err := net.SplitHostPort(cfg.Listen.Metrics)
	if err != nil {
		t.Fatalf("%s: listen.metrics %q: %v", composeConfig, cfg.Listen.Metrics, err)
	}
	published := false
	for _, port := range edge.Ports {
		if strings.HasSuffix(port, ":"+metricsPort) {
			published = true
			if port != "127.0.0.1:"+metricsPort+":"+metricsPort {
				t.Errorf("edgeproxy ports: metrics published as %q; want 127.0.0.1:%s:%s (loopback only)", port, metricsPort, metricsPort)
			}
		}
	}
	if !published {
		t.Errorf("edgeproxy ports %q: metrics port %s not published", edge.Ports, metricsPort)
	}

	// Django: gunicorn on the compose network only, reached by its service name, and its
	// ALLOWED_HOSTS has the health check's Host and every ACME domain.
	if _, err := os.Stat(filepath.Join("compose", django.Build.Context, "Dockerfile")); err != nil {
		t.Errorf("django build context %q: %v", django.Build.Context, err)
	}
	if len(django.Command) == 0 || django.Command[0] != "gunicorn" || !slices.Contains(django.Command, "--bind=0.0.0.0:8000") {
		t.Errorf("django command %q: want gunicorn --bind=0.0.0.0:8000", django.Command)
	}
	if len(django.Ports) > 0 {
		t.Errorf("django ports %q: Django must be reachable only through the edge", django.Ports)
	}
	if !slices.Equal(cfg.Pool.Targets, []string{"django:8000"}) {
		t.Errorf("%s: pool.targets %q; want [django:8000]", composeConfig, cfg.Pool.Targets)
	}
	if cfg.Pool.HealthCheck.Path != "/admin/login/" {
		t.Errorf("%s: health_check.path %q; want /admin/login/", composeConfig, cfg.Pool.HealthCheck.Path)
	}
	allowed := strings.Split(django.Environment["DJANGO_ALLOWED_HOSTS"], ",")
	for _, h := range append([]string{cfg.Pool.HealthCheck.Host}, cfg.TLS.ACME.Domains...) {
		if !slices.Contains(allowed, h) {
			t.Errorf("DJANGO_ALLOWED_HOSTS %q lacks %q: Django would answer 400", allowed, h)
		}
	}
}

// The config shipped next to the compose file is valid for edgeproxy (syntax only: its
// paths are the container's).
func TestCompose_ConfigValidates(t *testing.T) {
	bin := testutil.BuildEdgeproxy(t)
	out, err := exec.Command(bin, "validate", "-syntax-only", "-config", composeConfig).CombinedOutput()
	if err != nil {
		t.Fatalf("edgeproxy validate -syntax-only %s: %v\n%s", composeConfig, err, out)
	}
	// The one expected warning: metrics on every address of the container.
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if strings.Contains(line, "warning") && !strings.Contains(line, "listen.metrics") {
			t.Errorf("unexpected warning: %s", line)
		}
	}
}

// Debian's docker-compose (1.29) checks and resolves the file without an engine.
func TestCompose_DockerComposeConfig(t *testing.T) {
	dc := testutil.RequireTool(t, "docker-compose")
	cmd := exec.Command(dc, "-f", composeFile, "config", "-q")
	cmd.Env = append(os.Environ(), "DJANGO_SECRET_KEY=test-only")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("docker-compose config: %v\n%s", err, out)
	}
}

// The compose set-up without Docker: the example Django project under gunicorn with the
// compose file's environment, and edgeproxy with the compose config (its health check, Host
// and matcher as shipped; addresses on loopback and a self-signed certificate instead of
// ACME). The target turns healthy, and Django sees https and the site's name.
func TestCompose_DjangoBehindEdge(t *testing.T) {
	testutil.RequireDjango(t)
	var p composeProject
	readYAML(t, composeFile, &p)
	var cfg edgeConfig
	readYAML(t, composeConfig, &cfg)
	host := cfg.Pool.HealthCheck.Host

	djangoDir, err := filepath.Abs("compose/django")
	if err != nil {
		t.Fatal(err)
	}
	djangoAddr := testutil.LoopbackAddr(t, "127.0.0.1")
	env := []string{"PYTHONDONTWRITEBYTECODE=1", "DJANGO_DB=" + filepath.Join(t.TempDir(), "db.sqlite3")}
	for k, v := range p.Services["django"].Environment {
		if k == "DJANGO_SECRET_KEY" {
			v = "test-only-secret"
		}
		env = append(env, k+"="+v)
	}
	testutil.StartProcWith(t, testutil.ProcOptions{Dir: djangoDir, Env: env, Name: "gunicorn"},
		testutil.PythonPath, "-m", "gunicorn", "mysite.wsgi", "--bind", djangoAddr, "--workers", "1")
	testutil.WaitTCP(t, djangoAddr, 20*time.Second)

	// The compose config with this machine's addresses.
	var doc map[string]any
	readYAML(t, composeConfig, &doc)
	httpsAddr, metricsAddr := testutil.LoopbackAddr(t, "127.0.0.1"), testutil.LoopbackAddr(t, "127.0.0.1")
	doc["listen"] = map[string]any{"https": httpsAddr, "metrics": metricsAddr}
	doc["tls"] = map[string]any{"self_signed": true}
	pool := doc["pool"].(map[string]any)
	pool["targets"] = []string{djangoAddr}
	pool["health_check"].(map[string]any)["interval"] = "200ms"
	data, err := yaml.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "edgeproxy.yaml")
	if err := os.WriteFile(file, data, 0o600); err != nil {
		t.Fatal(err)
	}
	testutil.StartProc(t, testutil.BuildEdgeproxy(t), "run", "-config", file)
	testutil.WaitTCP(t, metricsAddr, 10*time.Second)

	// Healthy through the shipped check: /admin/login/ with the site's Host.
	deadline := time.Now().Add(20 * time.Second)
	for state := ""; state != "healthy"; {
		if time.Now().After(deadline) {
			t.Fatalf("target %s did not turn healthy within 20s; last state %q", djangoAddr, state)
		}
		time.Sleep(100 * time.Millisecond)
		state = targetState(t, "http://"+metricsAddr+"/targets", djangoAddr)
	}

	client := &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}, // self-signed
	}
	req, _ := http.NewRequest(http.MethodGet, "https://"+httpsAddr+"/", nil)
	req.Host = host
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	want := "scheme=https host=" + host + " client=127.0.0.1\n"
	if resp.StatusCode != http.StatusOK || string(body) != want {
		t.Errorf("GET / through the edge: got %d %q; want 200 %q", resp.StatusCode, body, want)
	}

	// The admin login page sets its CSRF cookie Secure: Django knows the request is https.
	req, _ = http.NewRequest(http.MethodGet, "https://"+httpsAddr+"/admin/login/", nil)
	req.Host = host
	resp, err = client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	var csrf *http.Cookie
	for _, c := range resp.Cookies() {
		if c.Name == "csrftoken" {
			csrf = c
		}
	}
	if resp.StatusCode != http.StatusOK || csrf == nil || !csrf.Secure {
		t.Errorf("GET /admin/login/: got %d, csrftoken cookie %v; want 200 and a Secure csrftoken", resp.StatusCode, csrf)
	}
}

// targetState returns the state of addr in the edge's /targets, or "" if absent.
func targetState(t *testing.T, url, addr string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	var targets []struct {
		Address string `json:"address"`
		State   string `json:"state"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&targets); err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	for _, tg := range targets {
		if tg.Address == addr {
			return tg.State
		}
	}
	return ""
}
