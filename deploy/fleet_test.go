package deploy_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

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
