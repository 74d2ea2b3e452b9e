package doctor

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"

	"edgeproxy/config"
	"edgeproxy/fleet"
)

// checkStorage checks tls.acme.storage.redis: Redis answers with the configured
// credentials, and what the fleet stored opens with the configured encryption key. It
// writes nothing.
func (d *Doctor) checkStorage(ctx context.Context, r *config.RedisStorage) Result {
	const check = "storage.redis"
	opts, err := storeOptions(r)
	if err != nil {
		return Result{Status: Fail, Check: check, Detail: err.Error()}
	}
	opts.OpTimeout = d.opts.Timeout
	opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, cancel := context.WithTimeout(ctx, d.opts.Timeout)
	defer cancel()
	err = fleet.Ping(ctx, opts)
	switch {
	case err == nil:
		sealed := "values encrypted with encryption_key_file"
		if opts.EncryptionKey == nil {
			sealed = "values stored in clear (no encryption_key_file)"
		}
		return Result{Status: OK, Check: check, Detail: fmt.Sprintf("Redis %s answers (db %d, key prefix %q); %s", r.Addr, r.DB, opts.KeyPrefix, sealed)}
	case errors.Is(err, fleet.ErrWrongKey):
		return Result{Status: Fail, Check: check, Detail: err.Error()}
	default:
		return Result{Status: Fail, Check: check, Detail: fmt.Sprintf("%v: check that Redis runs at %s, that this host may reach it (security group, firewall), and the username and password_file", err, r.Addr)}
	}
}

// storeOptions turns tls.acme.storage.redis into the fleet store's options, reading the
// password and the encryption key from their files.
func storeOptions(r *config.RedisStorage) (fleet.Options, error) {
	opts := fleet.Options{Addr: r.Addr, Username: r.Username, DB: r.DB, KeyPrefix: r.KeyPrefix}
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
