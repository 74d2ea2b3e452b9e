package placement

import (
	"path/filepath"

	"edgeproxy/internal/testutil/fixture"
)

// certFiles are the benchmark's certificates: a CA, the edge's (edge.bench) and the
// backend's (backend.bench), every key ECDSA P-256, as the peer comparison uses. Both
// leaves also cover localhost and 127.0.0.1.
type certFiles struct {
	ca                      string
	edgeCert, edgeKey       string
	backendCert, backendKey string
}

func writeCerts(dir string) (certFiles, error) {
	ca, err := fixture.NewCA("edgeproxy bench CA")
	if err != nil {
		return certFiles{}, err
	}
	c := certFiles{ca: filepath.Join(dir, "ca.crt")}
	if err := ca.WriteFile(c.ca); err != nil {
		return certFiles{}, err
	}
	leaf := func(name string) (certFile, keyFile string, err error) {
		cert, err := ca.Issue(fixture.CertOptions{Hosts: []string{name, "localhost", "127.0.0.1"}})
		if err != nil {
			return "", "", err
		}
		return fixture.WriteFiles(dir, name, cert)
	}
	if c.edgeCert, c.edgeKey, err = leaf("edge.bench"); err != nil {
		return certFiles{}, err
	}
	if c.backendCert, c.backendKey, err = leaf("backend.bench"); err != nil {
		return certFiles{}, err
	}
	return c, nil
}
