package config

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// Under systemd, key files come from LoadCredential= and the ACME cache lives in
// StateDirectory=; the config names them with ${CREDENTIALS_DIRECTORY} and
// ${STATE_DIRECTORY}, which only the unit's environment defines.
func TestParse_PathVars(t *testing.T) {
	tests := []struct {
		name      string
		env       map[string]string // "" = unset
		cert, key string            // as written
		wantCert  string            // after Parse
		wantKey   string
		wantErr   string // Parse's problem, "" = none
	}{
		{
			name: "Credentials", env: map[string]string{"CREDENTIALS_DIRECTORY": "/run/credentials/edgeproxy.service"},
			cert: "${CREDENTIALS_DIRECTORY}/fullchain.pem", key: "${CREDENTIALS_DIRECTORY}/privkey.pem",
			wantCert: "/run/credentials/edgeproxy.service/fullchain.pem", wantKey: "/run/credentials/edgeproxy.service/privkey.pem",
		},
		{
			name: "StateDirectory", env: map[string]string{"STATE_DIRECTORY": "/var/lib/edgeproxy"},
			cert: "${STATE_DIRECTORY}/a.crt", key: "/etc/ssl/a.key",
			wantCert: "/var/lib/edgeproxy/a.crt", wantKey: "/etc/ssl/a.key",
		},
		{
			name: "BothInOnePath", env: map[string]string{"CREDENTIALS_DIRECTORY": "/c", "STATE_DIRECTORY": "/s"},
			cert: "${STATE_DIRECTORY}${CREDENTIALS_DIRECTORY}/x", key: "k",
			wantCert: "/s/c/x", wantKey: "k",
		},
		{
			// Fine for -syntax-only; CheckEnvironment reports it (TestLoad_PathVarUnset).
			name: "Unset", cert: "${CREDENTIALS_DIRECTORY}/fullchain.pem", key: "${CREDENTIALS_DIRECTORY}/privkey.pem",
			wantCert: "${CREDENTIALS_DIRECTORY}/fullchain.pem", wantKey: "${CREDENTIALS_DIRECTORY}/privkey.pem",
		},
		{
			name: "DollarIsLiteral", env: map[string]string{"HOME": "/root"},
			cert: "/etc/ssl/$HOME/a$.crt", key: "/k$",
			wantCert: "/etc/ssl/$HOME/a$.crt", wantKey: "/k$",
		},
		{
			name: "UnknownVar", env: map[string]string{"HOME": "/root"},
			cert: "${HOME}/a.crt", key: "/k",
			wantErr: "c.yaml:5:13: tls.certificates[0].cert: ${HOME} is not expanded: paths may use only ${CREDENTIALS_DIRECTORY} and ${STATE_DIRECTORY}",
		},
		{
			name: "NoBraces", env: map[string]string{"CREDENTIALS_DIRECTORY": "/c"},
			cert: "/a.crt", key: "$CREDENTIALS_DIRECTORY/a.key",
			wantErr: "c.yaml:6:12: tls.certificates[0].key: write ${CREDENTIALS_DIRECTORY} with braces",
		},
		{
			name: "Unterminated", cert: "${STATE_DIRECTORY/a.crt", key: "/k",
			wantErr: "c.yaml:5:13: tls.certificates[0].cert: \"${STATE_DIRECTORY/a.crt\": unterminated ${",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, name := range append(pathVars, "HOME") {
				t.Setenv(name, tt.env[name])
			}
			yaml := "pool:\n  targets: [\"127.0.0.1:8000\"]\ntls:\n  certificates:\n" +
				"    - cert: " + tt.cert + "\n" +
				"      key: " + tt.key + "\n"
			cfg, err := Parse("c.yaml", []byte(yaml))
			if tt.wantErr != "" {
				got := strings.Join(problemsOf(t, err), "\n")
				if got != tt.wantErr {
					t.Errorf("got %q; want %q", got, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			cf := cfg.TLS.Certificates[0]
			if cf.Cert != tt.wantCert || cf.Key != tt.wantKey {
				t.Errorf("got cert %q, key %q; want %q, %q", cf.Cert, cf.Key, tt.wantCert, tt.wantKey)
			}
		})
	}
}

// A full check (edgeproxy validate, edgeproxy run) needs the variable: outside systemd the
// file cannot be found, and the message says why instead of "no such file".
func TestLoad_PathVarUnset(t *testing.T) {
	t.Setenv("CREDENTIALS_DIRECTORY", "")
	t.Setenv("STATE_DIRECTORY", "")
	dir := t.TempDir()
	aCert, aKey := writeCert(t, dir, "a.test")
	yaml := "pool: {targets: [\"127.0.0.1:80\"]}\ntls:\n  certificates:\n" +
		"    - {cert: \"${CREDENTIALS_DIRECTORY}/fullchain.pem\", key: \"${CREDENTIALS_DIRECTORY}/privkey.pem\"}\n" +
		"    - {cert: " + aCert + ", key: " + aKey + "}\n" +
		"    - {cert: " + aCert + ", key: \"${STATE_DIRECTORY}/x.key\"}\n"
	file := filepath.Join(dir, "edge.yaml")
	if err := os.WriteFile(file, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadSyntax(file); err != nil {
		t.Errorf("LoadSyntax: got %v; want no error (the unit's environment is not this one)", err)
	}
	got := problemsOf(t, func() error { _, err := Load(file); return err }())
	want := []string{
		file + ":4:14: tls.certificates[0].cert: ${CREDENTIALS_DIRECTORY} is not set (systemd sets it for a unit with LoadCredential=; outside systemd, write the file's path)",
		file + ":4:61: tls.certificates[0].key: ${CREDENTIALS_DIRECTORY} is not set (systemd sets it for a unit with LoadCredential=; outside systemd, write the file's path)",
		file + ":6:" + strconv.Itoa(21+len(aCert)) + ": tls.certificates[2].key: ${STATE_DIRECTORY} is not set (systemd sets it for a unit with StateDirectory=; outside systemd, write the directory's path)",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("got:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// With the variable set, as systemd sets it, the files are found and the edge loads.
func TestLoad_PathVarSet(t *testing.T) {
	dir := t.TempDir()
	writeCert(t, dir, "edge")
	t.Setenv("CREDENTIALS_DIRECTORY", dir)
	yaml := "pool: {targets: [\"127.0.0.1:80\"]}\ntls:\n  certificates:\n" +
		"    - {cert: \"${CREDENTIALS_DIRECTORY}/edge.crt\", key: \"${CREDENTIALS_DIRECTORY}/edge.key\"}\n"
	file := filepath.Join(t.TempDir(), "edge.yaml")
	if err := os.WriteFile(file, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := Load(file)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if got, want := cfg.TLS.Certificates[0].Key, filepath.Join(dir, "edge.key"); got != want {
		t.Errorf("got key %q; want %q", got, want)
	}
}
