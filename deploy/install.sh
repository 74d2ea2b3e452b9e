#!/usr/bin/env bash
# Installs edgeproxy as a systemd service: the binary in /usr/local/bin, an example config
# in /etc/edgeproxy (only if there is none), the unit in /etc/systemd/system, then
# daemon-reload and enable. It does not start or restart the service: edit the config, then
# `systemctl start edgeproxy`. Running it again is safe: it replaces the binary and the
# unit, keeps the config, and says what to restart.
#
# Usage: deploy/install.sh [--dry-run] [--binary FILE] [--root DIR]
#   --dry-run      print what would be done, change nothing
#   --binary FILE  install FILE instead of building (needs Go >= go.mod's version)
#   --root DIR     install into DIR as if it were / (packaging, tests); no daemon-reload,
#                  and `systemctl --root` enables the unit offline
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")

dry_run=0
binary=""
root=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --binary) binary=${2:?--binary needs a file}; shift ;;
    --binary=*) binary=${1#--binary=} ;;
    --root) root=${2:?--root needs a directory}; shift ;;
    --root=*) root=${1#--root=} ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done

bin_dir="$root/usr/local/bin"
etc_dir="$root/etc/edgeproxy"
unit_dir="$root/etc/systemd/system"
config="$etc_dir/edgeproxy.yaml"
unit="$unit_dir/edgeproxy.service"

# run prints a command and, unless --dry-run, runs it.
run() {
  echo "+ $*"
  if [ "$dry_run" = 0 ]; then "$@"; fi
}

if [ "$dry_run" = 0 ] && [ -z "$root" ] && [ "$(id -u)" != 0 ]; then
  echo "install.sh: run as root (sudo $0 $*), or try --dry-run" >&2
  exit 1
fi

# 1. The binary: given, or built static (CGO_ENABLED=0: Go's resolver, no libc, the same
#    binary as in the container image).
if [ -z "$binary" ]; then
  go=$(command -v go || true)
  [ -n "$go" ] || go=/usr/local/go/bin/go
  if [ ! -x "$go" ]; then
    echo "install.sh: no Go toolchain to build with; install Go or pass --binary FILE" >&2
    exit 1
  fi
  build_dir=$(mktemp -d)
  trap 'rm -rf "$build_dir"' EXIT
  binary="$build_dir/edgeproxy"
  echo "+ (cd $repo && CGO_ENABLED=0 $go build -trimpath -o $binary ./cmd/edgeproxy)"
  if [ "$dry_run" = 0 ]; then
    (cd "$repo" && CGO_ENABLED=0 "$go" build -trimpath -o "$binary" ./cmd/edgeproxy)
  fi
elif [ ! -x "$binary" ]; then
  echo "install.sh: $binary is not an executable file" >&2
  exit 1
fi

# 2. Install. `install` replaces the file by a new one, so a running edgeproxy keeps its
#    old binary until restarted.
run install -d -m 0755 "$bin_dir" "$etc_dir" "$unit_dir"
run install -m 0755 "$binary" "$bin_dir/edgeproxy"
if [ -e "$config" ]; then
  echo "  keeping $config (the example is $here/edgeproxy.example.yaml)"
else
  # Readable by the service's dynamic user; it holds no secret (keys come through
  # LoadCredential= or the ACME cache).
  run install -m 0644 "$here/edgeproxy.example.yaml" "$config"
fi
unit_changed=1
if [ -e "$unit" ] && cmp -s "$here/systemd/edgeproxy.service" "$unit"; then
  unit_changed=0
fi
run install -m 0644 "$here/systemd/edgeproxy.service" "$unit"

# 3. Check the config with the installed binary: syntax only, since key files may exist
#    only in the unit's ${CREDENTIALS_DIRECTORY}.
if [ "$dry_run" = 0 ]; then
  echo "+ $bin_dir/edgeproxy validate -syntax-only -config $config"
  "$bin_dir/edgeproxy" validate -syntax-only -config "$config" ||
    echo "  fix $config before starting the service"
fi

# 4. Tell systemd and enable at boot (not started here).
if [ -n "$root" ]; then
  if command -v systemctl >/dev/null; then
    run systemctl --root="$root" enable edgeproxy.service
  else
    echo "  no systemctl: enable with systemctl enable edgeproxy.service on the target"
  fi
else
  if [ "$unit_changed" = 1 ]; then
    run systemctl daemon-reload
  fi
  run systemctl enable edgeproxy.service
fi

echo
if [ -z "$root" ] && [ "$dry_run" = 0 ] && systemctl is-active --quiet edgeproxy.service; then
  echo "edgeproxy is running the old binary: restart it with  systemctl restart edgeproxy"
  echo "(a config change alone needs only  systemctl reload edgeproxy)"
else
  echo "next: edit $config, then  systemctl start edgeproxy  and  journalctl -u edgeproxy -f"
fi
