package config

import (
	"bytes"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const acmeDomains = acmePool + "tls:\n  acme:\n    domains: [www.example.com]\n"

func TestParse_StorageRedis(t *testing.T) {
	cfg, err := Parse("c.yaml", []byte(acmeDomains+`    storage:
      redis:
        addr: redis.internal:6379
        username: edge
        password_file: /run/credentials/edgeproxy.service/redis-password
        db: 2
        key_prefix: "shop:"
        tls: true
        encryption_key_file: /run/credentials/edgeproxy.service/fleet-key
`))
	if err != nil {
		t.Fatal(err)
	}
	r := cfg.TLS.ACME.Storage.Redis
	want := RedisStorage{Addr: "redis.internal:6379", Username: "edge", PasswordFile: "/run/credentials/edgeproxy.service/redis-password",
		DB: 2, KeyPrefix: "shop:", TLS: true, EncryptionKeyFile: "/run/credentials/edgeproxy.service/fleet-key"}
	if r == nil || *r != want {
		t.Fatalf("got %+v; want %+v", r, want)
	}
	if len(cfg.Warnings) != 0 {
		t.Errorf("got warnings %v; want none", cfg.Warnings)
	}
	// Without storage, nothing changes: one box, cache_dir.
	cfg, err = Parse("c.yaml", []byte(acmeDomains))
	if err != nil || cfg.TLS.ACME.Storage.Redis != nil {
		t.Fatalf("without storage: got %+v, %v; want no redis", cfg.TLS.ACME.Storage, err)
	}
}

func TestParse_StorageRedisProblems(t *testing.T) {
	tests := []struct {
		name     string
		redis    string
		want     []string
		warnings []string
	}{
		{
			name:  "no addr",
			redis: "{encryption_key_file: /k}",
			want:  []string{`c.yaml:6:14: tls.acme.storage.redis.addr is required: Redis's host:port`},
		},
		{
			name:  "bad fields",
			redis: "{addr: redis, db: -1, key_prefix: \"my fleet\", encryption_key_file: /k, passwd: x}",
			want: []string{
				`c.yaml:6:21: tls.acme.storage.redis.addr: "redis" is not host:port (missing port in address)`,
				`c.yaml:6:32: tls.acme.storage.redis.db must be 0 or more, got -1`,
				`c.yaml:6:48: tls.acme.storage.redis.key_prefix "my fleet" must be at most 100 characters without spaces, such as "edgeproxy:"`,
				`c.yaml:6:85: unknown key "passwd" in tls.acme.storage.redis (known keys: addr, db, encryption_key_file, key_prefix, password_file, tls, username)`,
			},
		},
		{
			name:  "no encryption key",
			redis: "{addr: \"127.0.0.1:6379\", username: edge}",
			warnings: []string{
				"c.yaml:6:14: warning: tls.acme.storage.redis.encryption_key_file is empty: private keys are stored in Redis in clear, readable by anyone who can read Redis (make a key with `openssl rand -hex 32`)",
				`c.yaml:6:49: warning: tls.acme.storage.redis.username is set without password_file: the ACL user must then be nopass`,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := Parse("c.yaml", []byte(acmeDomains+"    storage:\n      redis: "+tt.redis+"\n"))
			var got, warnings []string
			if err != nil {
				got = problemsOf(t, err)
			} else {
				for _, w := range cfg.Warnings {
					warnings = append(warnings, w.String())
				}
			}
			if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Errorf("got:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
			if strings.Join(warnings, "\n") != strings.Join(tt.warnings, "\n") {
				t.Errorf("got warnings:\n%s\nwant:\n%s", strings.Join(warnings, "\n"), strings.Join(tt.warnings, "\n"))
			}
		})
	}
}

func TestLoadEncryptionKey(t *testing.T) {
	dir := t.TempDir()
	raw := bytes.Repeat([]byte{0xab}, 32)
	for _, tt := range []struct {
		name    string
		content string
		ok      bool
	}{
		{"hex with newline", strings.Repeat("ab", 32) + "\n", true},
		{"base64", base64.StdEncoding.EncodeToString(raw) + "\n", true},
		{"raw", string(raw), true},
		{"short hex", strings.Repeat("ab", 16) + "\n", false},
		{"text", "correct horse battery staple\n", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "-"))
			if err := os.WriteFile(f, []byte(tt.content), 0o600); err != nil {
				t.Fatal(err)
			}
			key, err := LoadEncryptionKey(f)
			if tt.ok && (err != nil || !bytes.Equal(key, raw)) {
				t.Fatalf("got %x, %v; want %x", key, err, raw)
			}
			if !tt.ok && (err == nil || !strings.Contains(err.Error(), "openssl rand -hex 32")) {
				t.Fatalf("got %x, %v; want an error saying how to make a key", key, err)
			}
		})
	}
}

// The secrets are read from systemd credentials (${CREDENTIALS_DIRECTORY}) and checked
// by the environment checks.
func TestCheckEnvironment_StorageRedis(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), mode); err != nil {
			t.Fatal(err)
		}
	}
	write("fleet-key", strings.Repeat("0f", 32)+"\n", 0o400)
	write("redis-password", "s3cret\n", 0o400)
	write("open-key", strings.Repeat("0f", 32)+"\n", 0o644)
	write("bad-key", "nope\n", 0o400)
	write("empty", "", 0o400)
	t.Setenv("CREDENTIALS_DIRECTORY", dir)
	tests := []struct {
		name, password, key string
		want, warning       string
	}{
		{name: "ok", password: "${CREDENTIALS_DIRECTORY}/redis-password", key: "${CREDENTIALS_DIRECTORY}/fleet-key"},
		{name: "missing password", password: dir + "/nope", key: dir + "/fleet-key",
			want: "c.yaml:8:24: tls.acme.storage.redis.password_file: cannot read " + dir + "/nope: no such file or directory"},
		{name: "empty password", password: dir + "/empty", key: dir + "/fleet-key",
			want: "c.yaml:8:24: tls.acme.storage.redis.password_file: " + dir + "/empty is empty"},
		{name: "bad key", password: dir + "/redis-password", key: dir + "/bad-key",
			want: "c.yaml:9:30: tls.acme.storage.redis.encryption_key_file: " + dir + "/bad-key does not hold a 32-byte key as 64 hex digits, base64 or raw bytes (make one with `openssl rand -hex 32`)"},
		{name: "key open to others", password: dir + "/redis-password", key: dir + "/open-key",
			warning: "c.yaml:9:30: warning: tls.acme.storage.redis.encryption_key_file " + dir + "/open-key has mode 0644: it is a secret, make it 0600 (or use systemd's LoadCredential=)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := Parse("c.yaml", []byte(acmeDomains+"    storage:\n      redis:\n        addr: 127.0.0.1:6379\n        password_file: "+tt.password+"\n        encryption_key_file: "+tt.key+"\n"))
			if err != nil {
				t.Fatal(err)
			}
			var got, warnings []string
			for _, p := range cfg.CheckEnvironment() {
				got = append(got, p.String())
			}
			for _, w := range cfg.Warnings {
				warnings = append(warnings, w.String())
			}
			if strings.Join(got, "\n") != tt.want {
				t.Errorf("got:\n%s\nwant:\n%s", strings.Join(got, "\n"), tt.want)
			}
			if strings.Join(warnings, "\n") != tt.warning {
				t.Errorf("got warnings:\n%s\nwant:\n%s", strings.Join(warnings, "\n"), tt.warning)
			}
			if tt.name == "ok" && cfg.TLS.ACME.Storage.Redis.EncryptionKeyFile != dir+"/fleet-key" {
				t.Errorf("encryption_key_file not expanded: %q", cfg.TLS.ACME.Storage.Redis.EncryptionKeyFile)
			}
		})
	}
}
