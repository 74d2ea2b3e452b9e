package doctor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"

	"edgeproxy/config"
	"edgeproxy/fleet"
)

// checkStorage checks tls.acme.storage.redis: Redis answers with the configured
// credentials, and what the fleet stored opens with the configured encryption key. It
// writes nothing.
func (d *Doctor) checkStorage(ctx context.Context, r *config.RedisStorage) Result {
	const check = "storage.redis"
	opts, err := fleet.OptionsFromConfig(r)
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
