package fleet

import (
	"crypto/tls"
	"fmt"
	"net"

	"edgeproxy/config"
)

// OptionsFromConfig turns tls.acme.storage.redis into a Store's options, reading the
// password and the encryption key from their files, for the edge and the doctor alike.
// The caller adds Registerer, Logger and timeouts.
func OptionsFromConfig(r *config.RedisStorage) (Options, error) {
	opts := Options{Addr: r.Addr, Username: r.Username, DB: r.DB, KeyPrefix: r.KeyPrefix}
	if r.PasswordFile != "" {
		p, err := config.LoadSecret(r.PasswordFile)
		if err != nil {
			return opts, fmt.Errorf("tls.acme.storage.redis.password_file: %v", err)
		}
		opts.Password = p
	}
	if r.EncryptionKeyFile != "" {
		k, err := config.LoadEncryptionKey(r.EncryptionKeyFile)
		if err != nil {
			return opts, fmt.Errorf("tls.acme.storage.redis.encryption_key_file: %v", err)
		}
		opts.EncryptionKey = k
	}
	if r.TLS {
		host, _, _ := net.SplitHostPort(r.Addr)
		opts.TLS = &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12}
	}
	return opts, nil
}
