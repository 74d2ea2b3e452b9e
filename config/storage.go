package config

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"os"
	"strings"
	"unicode"
)

// Storage is where a fleet of replicas shares its ACME certificates, the lock held while
// ordering, and the TLS session ticket keys (tls.acme.storage). The zero value (no
// redis) keeps everything in tls.acme.cache_dir, for one box.
type Storage struct {
	// Redis shares the state through a Redis server (see docs/fleet.md). Nil means none.
	Redis *RedisStorage `yaml:"redis"`
}

// RedisStorage is tls.acme.storage.redis: how to reach Redis and protect what is stored.
type RedisStorage struct {
	// Addr is Redis's "host:port". Required.
	Addr string `yaml:"addr"`
	// Username is the Redis ACL user; empty means the default user.
	Username string `yaml:"username"`
	// PasswordFile holds the password (a trailing newline is ignored); empty means no
	// password. With systemd: LoadCredential= and ${CREDENTIALS_DIRECTORY}/NAME.
	PasswordFile string `yaml:"password_file"`
	// DB is the Redis database number; default 0.
	DB int `yaml:"db"`
	// KeyPrefix starts every Redis key and channel edgeproxy uses, so that several fleets
	// can share one Redis. Empty means "edgeproxy:".
	KeyPrefix string `yaml:"key_prefix"`
	// TLS connects to Redis over TLS, verified against the system roots. Default false.
	TLS bool `yaml:"tls"`
	// EncryptionKeyFile holds the AES-256 key that seals every stored value (private keys
	// included), as 64 hex digits, 44 base64 characters, or 32 raw bytes; make one with
	// `openssl rand -hex 32`. Every replica needs the same. Empty means values are stored
	// in clear (a warning).
	EncryptionKeyFile string `yaml:"encryption_key_file"`
}

// DefaultRedisKeyPrefix is tls.acme.storage.redis.key_prefix when it is empty.
const DefaultRedisKeyPrefix = "edgeproxy:"

const storageRedis = "tls.acme.storage.redis"

// storage checks tls.acme.storage against itself.
func (k *checker) storage() {
	r := k.c.TLS.ACME.Storage.Redis
	if r == nil {
		return
	}
	if r.Addr == "" {
		k.errorf(storageRedis, "%s.addr is required: Redis's host:port", storageRedis)
	} else if err := checkTargetAddr(r.Addr); err != nil {
		k.errorf(storageRedis+".addr", "%s.addr: %v", storageRedis, err)
	}
	if r.DB < 0 {
		k.errorf(storageRedis+".db", "%s.db must be 0 or more, got %d", storageRedis, r.DB)
	}
	if p := r.KeyPrefix; len(p) > 100 || strings.IndexFunc(p, func(c rune) bool { return unicode.IsSpace(c) || unicode.IsControl(c) }) >= 0 {
		k.errorf(storageRedis+".key_prefix", "%s.key_prefix %q must be at most 100 characters without spaces, such as %q", storageRedis, p, DefaultRedisKeyPrefix)
	}
	if r.Username != "" && r.PasswordFile == "" {
		k.warnf(storageRedis+".username", "%s.username is set without password_file: the ACL user must then be nopass", storageRedis)
	}
	if r.EncryptionKeyFile == "" {
		k.warnf(storageRedis, "%s.encryption_key_file is empty: private keys are stored in Redis in clear, readable by anyone who can read Redis (make a key with `openssl rand -hex 32`)", storageRedis)
	}
}

// storagePathKeys are the path-valued keys of tls.acme.storage (see pathKeys).
func (c *Config) storagePathKeys() []pathKey {
	r := c.TLS.ACME.Storage.Redis
	if r == nil {
		return nil
	}
	return []pathKey{{storageRedis + ".password_file", &r.PasswordFile}, {storageRedis + ".encryption_key_file", &r.EncryptionKeyFile}}
}

// storageEnvironment checks the files tls.acme.storage names: they can be read, hold a
// password or a key, and are not readable by others.
func (k *checker) storageEnvironment(unset map[string]bool) {
	r := k.c.TLS.ACME.Storage.Redis
	if r == nil {
		return
	}
	for _, f := range []struct {
		key, file string
		load      func(string) error
	}{
		{storageRedis + ".password_file", r.PasswordFile, func(f string) error { _, err := LoadSecret(f); return err }},
		{storageRedis + ".encryption_key_file", r.EncryptionKeyFile, func(f string) error { _, err := LoadEncryptionKey(f); return err }},
	} {
		if f.file == "" || unset[f.key] {
			continue
		}
		if err := f.load(f.file); err != nil {
			k.errorf(f.key, "%s: %v", f.key, err)
			continue
		}
		if fi, err := os.Stat(f.file); err == nil && fi.Mode().Perm()&0o077 != 0 {
			k.warnf(f.key, "%s %s has mode %04o: it is a secret, make it 0600 (or use systemd's LoadCredential=)", f.key, f.file, fi.Mode().Perm())
		}
	}
}

// LoadSecret reads a password file: its content without the trailing newline. It fails
// for an empty file.
func LoadSecret(file string) (string, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("cannot read %v", unwrapPathErr(err))
	}
	s := strings.TrimRight(string(data), "\r\n")
	if s == "" {
		return "", fmt.Errorf("%s is empty", file)
	}
	return s, nil
}

// LoadEncryptionKey reads a 32-byte AES-256 key written as 64 hex digits, as base64, or
// as the raw 32 bytes.
func LoadEncryptionKey(file string) ([]byte, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("cannot read %v", unwrapPathErr(err))
	}
	if len(data) == 32 {
		return data, nil
	}
	text := string(bytes.TrimSpace(data))
	if key, err := hex.DecodeString(text); err == nil && len(key) == 32 {
		return key, nil
	}
	if key, err := base64.StdEncoding.DecodeString(text); err == nil && len(key) == 32 {
		return key, nil
	}
	return nil, fmt.Errorf("%s does not hold a 32-byte key as 64 hex digits, base64 or raw bytes (make one with `openssl rand -hex 32`)", file)
}
