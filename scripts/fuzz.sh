#!/usr/bin/env bash
# Runs every fuzz target for a while (default 60s each; FUZZTIME=10m for a long run).
# A crasher is written by `go test` under the package's testdata/fuzz/<Target>/ and then
# runs as a regression case in every plain `go test`: fix the bug and commit the file.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
fuzztime="${FUZZTIME:-60s}"

# Every package with Fuzz targets, found rather than listed, so a new one is not missed.
status=0
for pkg in $(go list ./...); do
  dir=$(go list -f '{{.Dir}}' "$pkg")
  targets=$(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //' | sort -u || true)
  for target in $targets; do
    echo "== $pkg $target ($fuzztime)"
    if ! go test -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" "$pkg"; then
      status=1
    fi
  done
done
exit $status
