package deploy_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"edgeproxy/internal/testutil"
)

const kubeManifest = "kubernetes/edgeproxy.yaml"

// kubeDocs reads the manifest's documents by kind.
func kubeDocs(t *testing.T) map[string]map[string]any {
	t.Helper()
	return kubeDocsOf(t, kubeManifest)
}

// kubeDocsOf reads the documents of a manifest file by kind; a file has at most one of
// each.
func kubeDocsOf(t *testing.T, kubeManifest string) map[string]map[string]any {
	t.Helper()
	data, err := os.ReadFile(kubeManifest)
	if err != nil {
		t.Fatal(err)
	}
	docs := map[string]map[string]any{}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var doc map[string]any
		if err := dec.Decode(&doc); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("%s: %v", kubeManifest, err)
		}
		kind, _ := doc["kind"].(string)
		if _, dup := docs[kind]; dup {
			t.Fatalf("%s: two %s documents", kubeManifest, kind)
		}
		docs[kind] = doc
	}
	return docs
}

// get walks v along keys (map keys, or list indexes as ints) and fails the test when a
// step is missing.
func get(t *testing.T, v any, keys ...any) any {
	t.Helper()
	for i, k := range keys {
		switch k := k.(type) {
		case string:
			m, ok := v.(map[string]any)
			if !ok || m[k] == nil {
				t.Fatalf("%s: no %v", kubeManifest, keys[:i+1])
			}
			v = m[k]
		case int:
			l, ok := v.([]any)
			if !ok || len(l) <= k {
				t.Fatalf("%s: no %v", kubeManifest, keys[:i+1])
			}
			v = l[k]
		}
	}
	return v
}

// The manifest's single replica agrees with the image and with the config it mounts:
// the config at the path the image's command reads, the state volume at the image's
// VOLUME, the image's user, probes on the config's metrics port, a grace period longer
// than the drain, and a config that edgeproxy accepts.
func TestKubernetes_ManifestAgreesWithImageAndConfig(t *testing.T) {
	docs := kubeDocs(t)
	for _, kind := range []string{"ConfigMap", "PersistentVolumeClaim", "Deployment", "Service"} {
		if docs[kind] == nil {
			t.Errorf("%s: no %s", kubeManifest, kind)
		}
	}
	dep := docs["Deployment"]
	if r := get(t, dep, "spec", "replicas"); r != 1 {
		t.Errorf("replicas %v; want 1 (the certificate cache is one ReadWriteOnce volume)", r)
	}
	if s := get(t, dep, "spec", "strategy", "type"); s != "Recreate" {
		t.Errorf("strategy %v; want Recreate", s)
	}
	pod := get(t, dep, "spec", "template", "spec")
	if u := get(t, pod, "securityContext", "runAsUser"); u != 65532 {
		t.Errorf("runAsUser %v; want 65532, the image's", u)
	}
	c := get(t, pod, "containers", 0)
	if args := fmt.Sprint(get(t, c, "args")); args != "[run -config /etc/edgeproxy/edgeproxy.yaml]" {
		t.Errorf("args %s; want the image's command", args)
	}
	mounts := map[string]string{}
	for _, m := range get(t, c, "volumeMounts").([]any) {
		mounts[get(t, m, "name").(string)] = get(t, m, "mountPath").(string)
	}
	if mounts["config"] != "/etc/edgeproxy" || mounts["state"] != "/var/lib/edgeproxy" {
		t.Errorf("volumeMounts %v; want config at /etc/edgeproxy, state at /var/lib/edgeproxy", mounts)
	}

	cfgText := get(t, docs["ConfigMap"], "data", "edgeproxy.yaml").(string)
	var cfg struct {
		Listen struct{ Metrics string }
		TLS    struct {
			ACME struct {
				CacheDir string `yaml:"cache_dir"`
			}
		}
		Limits struct {
			ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`
		}
	}
	if err := yaml.Unmarshal([]byte(cfgText), &cfg); err != nil {
		t.Fatal(err)
	}
	_, metricsPort, _ := net.SplitHostPort(cfg.Listen.Metrics)
	ports := map[string]string{}
	for _, p := range get(t, c, "ports").([]any) {
		ports[get(t, p, "name").(string)] = fmt.Sprint(get(t, p, "containerPort"))
	}
	if ports["metrics"] != metricsPort {
		t.Errorf("container port metrics %q; the config's listen.metrics is %q", ports["metrics"], cfg.Listen.Metrics)
	}
	for _, probe := range []string{"livenessProbe", "readinessProbe"} {
		if path, port := get(t, c, probe, "httpGet", "path"), get(t, c, probe, "httpGet", "port"); path != "/healthz" || port != "metrics" {
			t.Errorf("%s: GET %v on %v; want /healthz on metrics", probe, path, port)
		}
	}
	if !strings.HasPrefix(cfg.TLS.ACME.CacheDir, "/var/lib/edgeproxy/") {
		t.Errorf("tls.acme.cache_dir %q is not on the state volume", cfg.TLS.ACME.CacheDir)
	}
	if grace := time.Duration(get(t, pod, "terminationGracePeriodSeconds").(int)) * time.Second; grace <= cfg.Limits.ShutdownTimeout {
		t.Errorf("terminationGracePeriodSeconds %v is not longer than limits.shutdown_timeout %v: a drain would be cut", grace, cfg.Limits.ShutdownTimeout)
	}
	file := filepath.Join(t.TempDir(), "edgeproxy.yaml")
	if err := os.WriteFile(file, []byte(cfgText), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(testutil.BuildEdgeproxy(t), "validate", "-syntax-only", "-config", file).CombinedOutput(); err != nil {
		t.Errorf("edgeproxy validate -syntax-only of the ConfigMap's config: %v\n%s", err, out)
	}
}

// `podman play kube` runs the manifest's pod from the image (built as buildImage says),
// and a request through it reaches a backend.
//
// What the test changes, in a copy: the Deployment as playKubeOnHost says; the config
// listens on free loopback ports, with a self-signed certificate and the test's backend
// as its target. The Service is left out: podman has no load balancer.
func TestKubernetes_PlayKube(t *testing.T) {
	p := newPodman(t)
	testutil.RequireTool(t, "catatonit") // the pod's infra process
	p.buildImage("localhost/edgeproxy:latest")
	backend := &http.Server{
		Handler:           http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "backend") }),
		ReadHeaderTimeout: 5 * time.Second,
	}
	ln, err := net.Listen("tcp", testutil.LoopbackAddr(t, "127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = backend.Serve(ln) }()
	t.Cleanup(func() { _ = backend.Close() })

	docs := kubeDocs(t)
	https, metrics := testutil.LoopbackAddr(t, "127.0.0.1"), testutil.LoopbackAddr(t, "127.0.0.1")
	cm := get(t, docs["ConfigMap"], "data").(map[string]any)
	var cfg map[string]any
	if err := yaml.Unmarshal([]byte(cm["edgeproxy.yaml"].(string)), &cfg); err != nil {
		t.Fatal(err)
	}
	cfg["listen"] = map[string]any{"https": https, "metrics": metrics}
	cfg["tls"] = map[string]any{"self_signed": true}
	cfg["pool"] = map[string]any{"targets": []string{ln.Addr().String()}, "health_check": map[string]any{"interval": "1s"}}
	text, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cm["edgeproxy.yaml"] = string(text)
	p.playKubeOnHost(docs, "ConfigMap", "PersistentVolumeClaim", "Deployment")

	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, // self-signed
	}}
	testutil.WaitHTTP(t, "https://"+https+"/", client, http.StatusOK, 60*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+https+"/", nil)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "backend" {
		t.Errorf("GET / through the played pod: %q; want the backend's answer", body)
	}
	p.checkRunsAs65532("edgeproxy-pod-0-edgeproxy")
	deadline := time.Now().Add(20 * time.Second)
	for state := ""; state != "healthy"; state = targetState(t, "http://"+metrics+"/targets", ln.Addr().String()) {
		if time.Now().After(deadline) {
			t.Fatalf("the backend did not turn healthy within 20s; last state %q", state)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// playKubeOnHost plays the documents kinds of a manifest (read by kubeDocsOf) with
// `podman play kube`, its Deployment changed as these machines run containers: one
// replica, on the host's network (hostNetwork, and `--network host`, or podman would
// create its machine-wide kube network all the same), so the sysctl (the host's, then,
// not the pod's) and the container ports (podman maps them only on a pod network) go, and
// the probes with them (podman would run them inside the container, which has no curl).
// The pod, DEPLOYMENT-pod-0, is taken down at the end of the test, its logs printed if
// the test failed.
func (p *podman) playKubeOnHost(docs map[string]map[string]any, kinds ...string) {
	t := p.t
	t.Helper()
	dep := docs["Deployment"]
	get(t, dep, "spec").(map[string]any)["replicas"] = 1
	pod := get(t, dep, "spec", "template", "spec").(map[string]any)
	pod["hostNetwork"] = true
	delete(pod["securityContext"].(map[string]any), "sysctls")
	container := get(t, pod, "containers", 0).(map[string]any)
	for _, k := range []string{"ports", "livenessProbe", "readinessProbe"} {
		delete(container, k)
	}

	var manifest bytes.Buffer
	enc := yaml.NewEncoder(&manifest)
	for _, kind := range kinds {
		if err := enc.Encode(docs[kind]); err != nil {
			t.Fatal(err)
		}
	}
	file := filepath.Join(t.TempDir(), "manifest.yaml")
	if err := os.WriteFile(file, manifest.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	p.run("play", "kube", "--network", "host", file)
	podName := get(t, dep, "metadata", "name").(string) + "-pod-0"
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := p.cmd("pod", "logs", podName).CombinedOutput()
			t.Logf("podman pod logs %s:\n%s", podName, out)
		}
		if out, err := p.try("play", "kube", "--down", file); err != nil {
			t.Logf("podman play kube --down: %v %s", err, out)
		}
	})
}
