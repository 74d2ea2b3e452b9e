#!/usr/bin/env bash
# The full test suite: formatting, vet, staticcheck, then every package's tests with the
# race detector, end-to-end tests (real Django under gunicorn, Pebble) included.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin:$HOME/go/bin"

echo "== gofmt"
unformatted=$(gofmt -l .)
if [ -n "$unformatted" ]; then echo "gofmt would change:"; echo "$unformatted"; exit 1; fi
echo "== go vet"
go vet ./...
echo "== staticcheck"
staticcheck ./...
echo "== go test -race"
go test -race -timeout 20m -count=1 ./...
echo "== allocation guards without the race detector (its instrumentation allocates in crypto/tls)"
go test -count=1 -run 'Allocat|NoAlloc' ./fastpath/ ./proxy/... ./mixedcontent/ ./internal/sysconn/
echo "== fuzz targets, briefly (scripts/fuzz.sh runs them longer)"
# A count of inputs, not a duration: Go 1.26's -fuzztime deadline can fail a clean run
# (golang/go#75804; see scripts/fuzz.sh). 60000 inputs take 2-20 s per target here.
FUZZTIME="${CI_FUZZTIME:-60000x}" ./scripts/fuzz.sh
echo "== CGO_ENABLED=0 static build"
CGO_ENABLED=0 go build -o /tmp/edgeproxy-static ./cmd/edgeproxy
if file /tmp/edgeproxy-static 2>/dev/null | grep -q 'dynamically linked'; then
  echo "edgeproxy binary is not static"; exit 1
fi
echo "ok"
