package doctor

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"edgeproxy/fleet"
	"edgeproxy/internal/testutil"
)

// tls.acme.storage.redis: Redis answers, Redis is down, and the fleet's values were
// sealed with another key than this replica's.
func TestCheckStorage(t *testing.T) {
	r := testutil.StartRedis(t, testutil.RedisOptions{Password: "s3cret"})
	dir := t.TempDir()
	files := map[string]string{
		"password": "s3cret\n",
		"key":      strings.Repeat("01", 32) + "\n",
		"other":    strings.Repeat("02", 32) + "\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cfgFor := func(addr, key string) string {
		return fmt.Sprintf(`
tls:
  acme:
    domains: [a.app.test]
    storage: {redis: {addr: %q, password_file: %q, encryption_key_file: %q}}
pool:
  targets: ["127.0.0.1:8000"]
`, addr, filepath.Join(dir, "password"), filepath.Join(dir, key))
	}
	d, _ := New(Options{ConfigFile: "c.yaml"})
	ctx := context.Background()

	cfg := parseConfig(t, cfgFor(r.Addr, "key"))
	if res := d.checkStorage(ctx, cfg.TLS.ACME.Storage.Redis); res.Status != OK || !strings.Contains(res.Detail, "answers") {
		t.Fatalf("Redis up: got %v", res)
	}

	// A value stored by a replica with another key.
	other := parseConfig(t, cfgFor(r.Addr, "other"))
	opts, err := fleet.OptionsFromConfig(other.TLS.ACME.Storage.Redis)
	if err != nil {
		t.Fatal(err)
	}
	opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil)) // quiet for tests
	s, err := fleet.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Put(ctx, "a.app.test", []byte("cert")); err != nil {
		t.Fatal(err)
	}
	if res := d.checkStorage(ctx, cfg.TLS.ACME.Storage.Redis); res.Status != Fail || !strings.Contains(res.Detail, "stored value was encrypted with another key") {
		t.Fatalf("another key: got %v", res)
	}

	r.Stop()
	if res := d.checkStorage(ctx, cfg.TLS.ACME.Storage.Redis); res.Status != Fail || !strings.Contains(res.Detail, "check that Redis runs at "+r.Addr) {
		t.Fatalf("Redis down: got %v", res)
	}
}
