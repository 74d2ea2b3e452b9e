package deploy_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
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
	Sysctls     []string          `yaml:"sysctls"` // the list form: podman-compose 1.0 reads no other
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
	if !slices.Contains(edge.Sysctls, "net.ipv4.ip_unprivileged_port_start=0") {
		t.Errorf("edgeproxy sysctls %q: no net.ipv4.ip_unprivileged_port_start=0 (uid 65532 binds 80 and 443)", edge.Sysctls)
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
	for _, file := range []string{composeFile, composeFleetFile} {
		cmd := exec.Command(dc, "-f", file, "config", "-q")
		cmd.Env = append(os.Environ(), "DJANGO_SECRET_KEY=test-only")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("docker-compose -f %s config: %v\n%s", file, err, out)
		}
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

// djangoStandin builds, as tag, the image that stands for the django service's: its
// Dockerfile starts FROM python:3.12-slim and pip-installs Django and gunicorn, which
// need a registry and PyPI. The stand-in holds the example project at /app as that
// Dockerfile copies it, runs as 1000:1000 from /app like it, and takes Python, Django and
// gunicorn from Debian (python3-django, gunicorn) through the host's /usr, which the test
// mounts read-only into the container. That is the one step it replaces.
func (p *podman) djangoStandin(tag string) {
	p.t.Helper()
	ctx := filepath.Join(p.dir, "django-standin")
	root := mergedUsrRoot(p.t, filepath.Join(ctx, "rootfs")) // /tmp: the SQLite database
	if err := os.CopyFS(filepath.Join(root, "app"), os.DirFS("compose/django")); err != nil {
		p.t.Fatal(err)
	}
	containerfile := `FROM scratch
COPY rootfs/ /
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
USER 1000:1000
EXPOSE 8000
CMD ["gunicorn", "mysite.wsgi", "--bind=0.0.0.0:8000"]
`
	if err := os.WriteFile(filepath.Join(ctx, "Containerfile"), []byte(containerfile), 0o644); err != nil {
		p.t.Fatal(err)
	}
	p.run("build", "--quiet", "--tag", tag, ctx)
}

// `podman-compose up` of deploy/compose: edgeproxy (the image from the root Dockerfile,
// see buildImage) in front of the django service on the compose network, reached by its
// service name, with the compose file's settings (read-only root, no capabilities, the
// unprivileged-port sysctl, the certificate volume, the mounted config). An admin logs
// in through the edge.
//
// What the test changes, in a copy of the compose file and of the config it mounts: the
// host ports (free ones on 127.0.0.1, not 80, 443 and 9180 of this shared machine); the
// build contexts (absolute, and both images are built beforehand: edgeproxy as
// buildImage does, django as djangoStandin says); the host's /usr mounted into django;
// the certificate (self-signed: no CA is reachable from the compose network) and a 1 s
// health-check interval.
func TestCompose_PodmanComposeUp(t *testing.T) {
	p := newPodman(t)
	composeBin := testutil.RequireTool(t, "podman-compose")
	// Service names resolve on a CNI network with Debian's dnsname plugin.
	testutil.RequireTool(t, "/usr/lib/cni/dnsname")
	project := fmt.Sprintf("edgeproxytest%d", os.Getpid())
	p.buildImage("localhost/edgeproxy:latest")
	p.djangoStandin("localhost/" + project + "_django")
	dir := t.TempDir()

	// The config, as shipped but for the certificate and the check interval.
	var cfg map[string]any
	readYAML(t, composeConfig, &cfg)
	cfg["tls"] = map[string]any{"self_signed": true}
	cfg["pool"].(map[string]any)["health_check"].(map[string]any)["interval"] = "1s"
	writeYAML(t, filepath.Join(dir, "edgeproxy.yaml"), cfg)

	var doc map[string]any
	readYAML(t, composeFile, &doc)
	services := doc["services"].(map[string]any)
	edge, django := services["edgeproxy"].(map[string]any), services["django"].(map[string]any)
	https, metrics := testutil.FreePort(t, "127.0.0.1"), testutil.FreePort(t, "127.0.0.1")
	edge["ports"] = []string{
		fmt.Sprintf("127.0.0.1:%d:80", testutil.FreePort(t, "127.0.0.1")),
		fmt.Sprintf("127.0.0.1:%d:443", https),
		fmt.Sprintf("127.0.0.1:%d:9180", metrics),
	}
	var volumes []string
	for _, v := range edge["volumes"].([]any) {
		volumes = append(volumes, strings.Replace(v.(string), "./edgeproxy.yaml:", filepath.Join(dir, "edgeproxy.yaml")+":", 1))
	}
	edge["volumes"] = volumes
	for _, svc := range []map[string]any{edge, django} {
		build := svc["build"].(map[string]any)
		abs, err := filepath.Abs(filepath.Join("compose", build["context"].(string)))
		if err != nil {
			t.Fatal(err)
		}
		build["context"] = abs
	}
	django["volumes"] = []string{"/usr:/usr:ro"}
	file := filepath.Join(dir, "docker-compose.yml")
	writeYAML(t, file, doc)

	compose := func(args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), podmanCmdTimeout)
		defer cancel()
		cmd := exec.CommandContext(ctx, composeBin, append([]string{"--project-name", project, "--file", file}, args...)...)
		cmd.Env = append(os.Environ(), append(p.env, "DJANGO_SECRET_KEY=test-only-secret")...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := compose("logs")
			t.Logf("podman-compose logs:\n%s", out)
		}
		if out, err := compose("down"); err != nil {
			t.Logf("podman-compose down: %v\n%s", err, out)
		}
		if out, err := p.try("network", "rm", "--force", project+"_default"); err != nil {
			t.Logf("cleanup: %v %s", err, out)
		}
	})
	up, err := compose("up", "--detach")
	if err != nil {
		t.Fatalf("podman-compose up: %v\n%s", err, up)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("podman-compose up:\n%s", up)
		}
	})

	// podman-compose goes on when a container fails to start: both must run.
	for _, name := range []string{project + "_edgeproxy_1", project + "_django_1"} {
		if state, err := p.try("inspect", "--format", "{{.State.Status}}", name); err != nil || state != "running" {
			t.Fatalf("container %s: %q %v; want running", name, state, err)
		}
	}

	// The target django:8000, found by name on the compose network, turns healthy.
	targets := fmt.Sprintf("http://127.0.0.1:%d/targets", metrics)
	deadline := time.Now().Add(60 * time.Second)
	for state := ""; state != "healthy"; state = targetState(t, targets, "django:8000") {
		if time.Now().After(deadline) {
			t.Fatalf("target django:8000 did not turn healthy within 60s; last state %q", state)
		}
		time.Sleep(250 * time.Millisecond)
	}

	// An admin logs in through the edge.
	manage := []string{"exec", project + "_django_1", "python3", "manage.py"}
	p.run(append(manage, "migrate", "--noinput")...)
	p.run(append([]string{"exec", "--env", "DJANGO_SUPERUSER_PASSWORD=compose-test-pw"}, append(manage[1:], "createsuperuser", "--noinput", "--username", "admin", "--email", "admin@example.com")...)...)
	host := cfg["pool"].(map[string]any)["health_check"].(map[string]any)["host"].(string)
	adminLogin(t, fmt.Sprintf("127.0.0.1:%d", https), host, "admin", "compose-test-pw")
}

func writeYAML(t *testing.T, file string, v any) {
	t.Helper()
	data, err := yaml.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// adminLogin logs in to Django's admin at https://host/ through the edge at addr
// (certificate not checked) and checks that the admin index answers.
func adminLogin(t *testing.T, addr, host, user, password string) {
	t.Helper()
	jar, _ := cookiejar.New(nil)
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	c := &http.Client{
		Jar: jar, Timeout: 20 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, // self-signed
			DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
				return dialer.DialContext(ctx, network, addr)
			},
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	do := func(method, path string, form url.Values) (*http.Response, string) {
		t.Helper()
		var body io.Reader
		if form != nil {
			body = strings.NewReader(form.Encode())
		}
		req, _ := http.NewRequest(method, "https://"+host+path, body)
		if form != nil {
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			req.Header.Set("Referer", "https://"+host+"/admin/login/")
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}
	_, page := do("GET", "/admin/login/?next=/admin/", nil)
	m := regexp.MustCompile(`name="csrfmiddlewaretoken" value="([^"]+)"`).FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("no CSRF token in the login page:\n%.400s", page)
	}
	form := url.Values{"csrfmiddlewaretoken": {m[1]}, "username": {user}, "password": {password}, "next": {"/admin/"}}
	resp, body := do("POST", "/admin/login/?next=/admin/", form)
	if resp.StatusCode != http.StatusFound || resp.Header.Get("Location") != "/admin/" {
		t.Fatalf("login: %d Location %q\n%.400s", resp.StatusCode, resp.Header.Get("Location"), body)
	}
	if resp, body := do("GET", "/admin/", nil); resp.StatusCode != http.StatusOK || !strings.Contains(body, "Site administration") {
		t.Errorf("/admin/ after login: %d\n%.300s", resp.StatusCode, body)
	}
}
