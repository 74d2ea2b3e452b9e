package deploy_test

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"edgeproxy/internal/testutil"
)

const (
	kubeFleetManifest = "kubernetes/edgeproxy-fleet.yaml"
	composeFleetFile  = "compose/fleet/docker-compose.yml"
	composeFleetCfg   = "compose/fleet/edgeproxy.yaml"
)

// fleetConfig is the part of a fleet replica's config the deploy files must agree on.
type fleetConfig struct {
	TLS struct {
		ACME struct {
			CacheDir string `yaml:"cache_dir"`
			Storage  struct {
				Redis struct {
					Addr              string `yaml:"addr"`
					EncryptionKeyFile string `yaml:"encryption_key_file"`
				} `yaml:"redis"`
			} `yaml:"storage"`
		} `yaml:"acme"`
	} `yaml:"tls"`
}

// validateSyntax runs `edgeproxy validate -syntax-only` on config text.
func validateSyntax(t *testing.T, text string) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "edgeproxy.yaml")
	if err := os.WriteFile(file, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(testutil.BuildEdgeproxy(t), "validate", "-syntax-only", "-config", file).CombinedOutput(); err != nil {
		t.Errorf("edgeproxy validate -syntax-only: %v\n%s", err, out)
	}
}

// The fleet manifest runs several replicas without a shared volume, all with one config
// that stores in Redis, sealed with the key of the Secret mounted where the config says.
func TestKubernetes_FleetManifestSharesRedisAndKey(t *testing.T) {
	docs := kubeDocsOf(t, kubeFleetManifest)
	for _, kind := range []string{"ConfigMap", "Secret", "Deployment", "Service"} {
		if docs[kind] == nil {
			t.Fatalf("%s: no %s", kubeFleetManifest, kind)
		}
	}
	dep := docs["Deployment"]
	if r, _ := get(t, dep, "spec", "replicas").(int); r < 2 {
		t.Errorf("replicas %v; want a fleet (at least 2)", r)
	}
	pod := get(t, dep, "spec", "template", "spec")
	c := get(t, pod, "containers", 0)
	mounts := map[string]string{}
	for _, m := range get(t, c, "volumeMounts").([]any) {
		mounts[get(t, m, "name").(string)] = get(t, m, "mountPath").(string)
	}
	volumes := map[string]map[string]any{}
	for _, v := range get(t, pod, "volumes").([]any) {
		volumes[get(t, v, "name").(string)] = v.(map[string]any)
	}
	if volumes["state"]["emptyDir"] == nil || volumes["state"]["persistentVolumeClaim"] != nil {
		t.Errorf("state volume %v; want an emptyDir (the fleet's copy is in Redis)", volumes["state"])
	}
	secretName := get(t, docs["Secret"], "metadata", "name")
	if got := get(t, volumes["secret"], "secret", "secretName"); got != secretName {
		t.Errorf("secret volume names %v; the Secret is %v", got, secretName)
	}
	for _, probe := range []string{"livenessProbe", "readinessProbe"} {
		if path := get(t, c, probe, "httpGet", "path"); path != "/healthz" {
			t.Errorf("%s: GET %v; want /healthz", probe, path)
		}
	}

	text := get(t, docs["ConfigMap"], "data", "edgeproxy.yaml").(string)
	var cfg fleetConfig
	if err := yaml.Unmarshal([]byte(text), &cfg); err != nil {
		t.Fatal(err)
	}
	r := cfg.TLS.ACME.Storage.Redis
	if r.Addr == "" {
		t.Errorf("%s: no tls.acme.storage.redis.addr", kubeFleetManifest)
	}
	keyDir, keyName := filepath.Split(r.EncryptionKeyFile)
	if filepath.Clean(keyDir) != mounts["secret"] || get(t, docs["Secret"], "stringData", keyName) == nil {
		t.Errorf("encryption_key_file %q is not a key of the Secret mounted at %q", r.EncryptionKeyFile, mounts["secret"])
	}
	if !strings.HasPrefix(cfg.TLS.ACME.CacheDir, mounts["state"]+"/") {
		t.Errorf("cache_dir %q is not on the state volume %q", cfg.TLS.ACME.CacheDir, mounts["state"])
	}
	validateSyntax(t, text)
}

// The compose fleet runs three replicas of one config, with Redis and the key secret.
func TestCompose_FleetSharesRedisAndKey(t *testing.T) {
	var p struct {
		Services map[string]struct {
			Command []string `yaml:"command"`
			Volumes []string `yaml:"volumes"`
			Secrets []string `yaml:"secrets"`
		} `yaml:"services"`
		Secrets map[string]any `yaml:"secrets"`
	}
	readYAML(t, composeFleetFile, &p)
	var cfg fleetConfig
	readYAML(t, composeFleetCfg, &cfg)
	replicas := 0
	for name, s := range p.Services {
		if !strings.HasPrefix(name, "edgeproxy") {
			continue
		}
		replicas++
		if !slices.Contains(s.Volumes, "./edgeproxy.yaml:/etc/edgeproxy/edgeproxy.yaml:ro") || !slices.Contains(s.Secrets, "fleet-key") {
			t.Errorf("%s: volumes %q, secrets %q; want the shared config and the fleet-key secret", name, s.Volumes, s.Secrets)
		}
	}
	if replicas != 3 {
		t.Errorf("%s: %d edgeproxy replicas; want 3", composeFleetFile, replicas)
	}
	if _, ok := p.Services["redis"]; !ok || cfg.TLS.ACME.Storage.Redis.Addr != "redis:6379" {
		t.Errorf("redis service present %v, storage.redis.addr %q; want redis at redis:6379", ok, cfg.TLS.ACME.Storage.Redis.Addr)
	}
	if p.Secrets["fleet-key"] == nil || cfg.TLS.ACME.Storage.Redis.EncryptionKeyFile != "/run/secrets/fleet-key" {
		t.Errorf("secret fleet-key declared %v, encryption_key_file %q; want /run/secrets/fleet-key", p.Secrets["fleet-key"] != nil, cfg.TLS.ACME.Storage.Redis.EncryptionKeyFile)
	}
	data, err := os.ReadFile(composeFleetCfg)
	if err != nil {
		t.Fatal(err)
	}
	validateSyntax(t, string(data))
}

// `podman play kube` runs the fleet manifest's pod from the image (built as buildImage
// says), with its Secret, emptyDir and ConfigMap volumes: the replica runs as 65532, reads
// the fleet key from the Secret mounted where its config says, orders a certificate from
// ACME (Pebble) into Redis, sealed, and serves it; a request through the pod reaches a
// backend.
//
// What the test changes, in a copy: the Deployment as playKubeOnHost says (one replica:
// on the host's network a second one would find its ports taken); the Secret as the
// comment in the test says, with a real key; the config listens on free loopback ports, orders from Pebble (its CA added
// to the ConfigMap, so mounted beside the config), stores in a redis-server on loopback
// and has the test's backend as its target. The Service is left out: podman has no load
// balancer.
func TestKubernetes_PlayKubeFleet(t *testing.T) {
	p := newPodman(t)
	testutil.RequireTool(t, "catatonit") // the pod's infra process
	redis := testutil.StartRedis(t, testutil.RedisOptions{})
	p.buildImage("localhost/edgeproxy:latest")
	s := newImageSite(t)
	ca, err := os.ReadFile(s.caFile)
	if err != nil {
		t.Fatal(err)
	}

	docs := kubeDocsOf(t, kubeFleetManifest)
	cm := get(t, docs["ConfigMap"], "data").(map[string]any)
	var cfg map[string]any
	if err := yaml.Unmarshal([]byte(cm["edgeproxy.yaml"].(string)), &cfg); err != nil {
		t.Fatal(err)
	}
	cfg["listen"] = map[string]any{"https": s.https, "metrics": s.metrics}
	acme := get(t, cfg, "tls", "acme").(map[string]any)
	acme["domains"] = []string{imageDomain}
	acme["email"] = "ops@" + imageDomain
	acme["directory"] = s.pebble.DirectoryURL
	acme["ca_roots"] = "/etc/edgeproxy/acme-ca.pem"
	get(t, acme, "storage", "redis").(map[string]any)["addr"] = redis.Addr
	cfg["pool"] = map[string]any{"targets": []string{s.backend}, "health_check": map[string]any{"path": "/health", "interval": "200ms"}}
	text, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cm["edgeproxy.yaml"] = string(text)
	cm["acme-ca.pem"] = string(ca)
	// Debian's podman 4.3 mounts a Secret's data without decoding it and ignores its
	// stringData, and it crashes on a secret volume that does not say whether it is
	// optional: the copy has the key under data (hex is base64 of itself to podman), and
	// optional: false.
	secret := docs["Secret"]
	delete(secret, "stringData")
	secret["data"] = map[string]any{"fleet-key": strings.Repeat("5e", 32)}
	for _, v := range get(t, docs["Deployment"], "spec", "template", "spec", "volumes").([]any) {
		if sv, ok := v.(map[string]any)["secret"].(map[string]any); ok {
			sv["optional"] = false
		}
	}
	p.playKubeOnHost(docs, "ConfigMap", "Secret", "Deployment")

	testutil.WaitHTTPHost(t, "https://"+imageDomain+"/", "", s.client(), http.StatusOK, 60*time.Second)
	if code, body, err := s.get("/"); err != nil || code != http.StatusOK || body != "backend" {
		t.Errorf("GET / through the played fleet pod: %d %q %v; want 200 \"backend\"", code, body, err)
	}
	p.checkRunsAs65532("edgeproxy-fleet-pod-0-edgeproxy")
	prefix := get(t, acme, "storage", "redis", "key_prefix").(string)
	if n := redisKeyCount(t, redis.Addr, prefix+"*"); n == 0 {
		t.Errorf("no key %s* in Redis: the fleet's certificate is not in the shared storage", prefix)
	}
}

// redisKeyCount asks the Redis at addr how many keys match pattern (KEYS, as an inline
// command: a test's Redis is small).
func redisKeyCount(t *testing.T, addr, pattern string) int {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintf(c, "KEYS %s\r\n", pattern); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("Redis KEYS: %v", err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(line, "*")))
	if err != nil || !strings.HasPrefix(line, "*") {
		t.Fatalf("Redis KEYS: reply %q", line)
	}
	return n
}
