#!/usr/bin/env bash
# The peer yardstick (issue 6): the same three workloads against nginx, HAProxy, Caddy and
# edgeproxy (fast path on, and off), each with one worker/thread pinned to one core, the
# load generator and two plain-HTTP backends pinned to the other core; TLS 1.3 with an
# ECDSA P-256 certificate, the client offering only X25519, access logs off. Prints the
# proxy's CPU µs per request and requests/s, the median of ROUNDS interleaved rounds, with
# ratios to nginx; then a CPU profile of edgeproxy under the keep-alive workload.
#
#   bench/peers/run.sh                       # ~6 min on a 2-core machine
#   ROUNDS=5 DURATION=10s bench/peers/run.sh
#   PEERS="nginx edgeproxy" WORKLOADS=keepalive bench/peers/run.sh
#   BIN=/path/to/edgeproxy bench/peers/run.sh  # measure that binary, not this tree's build
#   WORKERS=2 PROXY_CPU=0,1 LOAD_CPU=0,1 bench/peers/run.sh
#                                              # two cores: GOMAXPROCS=2, nginx worker_processes 2,
#                                              # HAProxy nbthread 2; the load generator shares the
#                                              # cores, and its CPU is not the proxy's (only the
#                                              # proxy's processes are measured, from /proc)
#   BIN_BEFORE=/path/to/old/edgeproxy PEERS="nginx edgeproxy-before edgeproxy" bench/peers/run.sh
#                                              # A/B: an older build beside this one, same run
#
# Needs: nginx, haproxy (apt-get install -y nginx haproxy), caddy (go install
# github.com/caddyserver/caddy/v2/cmd/caddy@v2.11.9), openssl, taskset, python3, go.
# Everything listens on 127.0.0.1 and stops with the script. Not run in CI: it is long.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$PATH:/usr/local/go/bin:$HOME/go/bin:/usr/sbin"

ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-5s}"
WARMUP="${WARMUP:-1s}"
CONNS="${CONNS:-16}"
PEERS="${PEERS:-nginx haproxy caddy edgeproxy edgeproxy-nofast}"
WORKLOADS="${WORKLOADS:-keepalive handshake bulk}"
PROXY_CPU="${PROXY_CPU:-0}"
LOAD_CPU="${LOAD_CPU:-1}"
WORKERS="${WORKERS:-1}" # nginx worker_processes, HAProxy nbthread, GOMAXPROCS of the Go proxies
PROFILE="${PROFILE:-10s}" # edgeproxy CPU profile under keep-alive; 0 = none

for tool in nginx haproxy caddy openssl taskset python3 go; do
  if [[ " $PEERS " != *" ${tool} "* ]] && [[ "$tool" =~ ^(nginx|haproxy|caddy)$ ]]; then continue; fi
  command -v "$tool" >/dev/null || { echo "run.sh: $tool not found" >&2; exit 1; }
done

dir=$(mktemp -d /tmp/edgeproxy-peers.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

echo "== build edgeproxy, certificate, configs in $dir"
bin="${BIN:-}" # BIN=path uses a built edgeproxy (e.g. of a clean checkout) instead of this tree's
if [ -z "$bin" ]; then
  bin="$dir/edgeproxy"
  go build -o "$bin" ./cmd/edgeproxy
fi
# BIN_BEFORE=path: the peer edgeproxy-before is that binary (fast path on), so that a change
# is measured before and after in the same run, against the same nginx.
bin_before="${BIN_BEFORE:-}"
if [[ " $PEERS " == *" edgeproxy-before "* ]] && [ -z "$bin_before" ]; then
  echo "run.sh: the peer edgeproxy-before needs BIN_BEFORE=path" >&2
  exit 1
fi
# The load generator and the backends: this tree's benchmark harness, whichever edgeproxy.
harness="$dir/edgeproxy-bench"
go build -o "$harness" ./cmd/edgeproxy-bench
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -keyout "$dir/key.pem" -out "$dir/cert.pem" -subj /CN=localhost \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" 2>/dev/null
cat "$dir/cert.pem" "$dir/key.pem" >"$dir/combined.pem"
mkdir -p "$dir"/nginx-{body,proxy,fastcgi,uwsgi,scgi}

freeport() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
B1="127.0.0.1:$(freeport)"
B2="127.0.0.1:$(freeport)"
declare -A port
for p in $PEERS; do port[$p]=$(freeport); done

render() { # template output ADDR PORT [METRICS]
  sed -e "s|@ADDR@|127.0.0.1:$3|g" -e "s|@PORT@|$3|g" -e "s|@METRICS@|${4:-}|g" \
    -e "s|@B1@|$B1|g" -e "s|@B2@|$B2|g" -e "s|@DIR@|$dir|g" -e "s|@WORKERS@|$WORKERS|g" \
    -e "s|@CERT@|$dir/cert.pem|g" -e "s|@KEY@|$dir/key.pem|g" -e "s|@PEM@|$dir/combined.pem|g" \
    "bench/peers/$1" >"$2"
}

echo "== backends on CPU $LOAD_CPU: $B1 $B2"
for b in "$B1" "$B2"; do
  taskset -c "$LOAD_CPU" "$harness" -role backend -plain "$b" 2>>"$dir/backend.log" &
  pids+=($!)
done

declare -A measure # peer -> pids to measure, a+b
start_peer() {
  local p=$1 pt=${port[$1]}
  case $p in
  nginx)
    render nginx.conf "$dir/nginx.conf" "$pt"
    taskset -c "$PROXY_CPU" nginx -c "$dir/nginx.conf" -p "$dir" 2>>"$dir/nginx.log" &
    pids+=($!)
    ;;
  haproxy)
    render haproxy.cfg "$dir/haproxy.cfg" "$pt"
    taskset -c "$PROXY_CPU" haproxy -f "$dir/haproxy.cfg" -db 2>>"$dir/haproxy.log" &
    pids+=($!)
    ;;
  caddy)
    render Caddyfile "$dir/Caddyfile" "$pt"
    XDG_DATA_HOME="$dir" XDG_CONFIG_HOME="$dir" GOMAXPROCS=$WORKERS taskset -c "$PROXY_CPU" \
      caddy run --config "$dir/Caddyfile" --adapter caddyfile >>"$dir/caddy.log" 2>&1 &
    pids+=($!)
    ;;
  edgeproxy | edgeproxy-nofast | edgeproxy-before)
    render edgeproxy.yaml "$dir/$p.yaml" "$pt" "127.0.0.1:$(freeport)"
    [ "$p" = edgeproxy-nofast ] && printf 'proxy:\n  fast_path: false\n' >>"$dir/$p.yaml"
    local b=$bin
    [ "$p" = edgeproxy-before ] && b=$bin_before
    GOMAXPROCS=$WORKERS taskset -c "$PROXY_CPU" "$b" run -config "$dir/$p.yaml" 2>>"$dir/$p.log" &
    pids+=($!)
    ;;
  esac
  local main=$! ok=""
  for _ in $(seq 100); do
    if "$harness" -role load -addr "127.0.0.1:$pt" -tls -bytes 1 -c 1 -warmup 0s -duration 100ms >/dev/null 2>&1; then
      ok=1
      break
    fi
    sleep 0.1
  done
  if [ -z "$ok" ]; then
    echo "run.sh: $p did not answer on 127.0.0.1:$pt" >&2
    tail -20 "$dir/$p.log" "$dir/nginx-error.log" 2>/dev/null >&2 || true
    exit 1
  fi
  # edgeproxy calibrates its TLS cost accounting in the background after start-up (with a
  # client process of its own): wait for it, so that it is not measured as the proxy's.
  # Then, left idle, it refines that calibration (up to 160 rounds, ~45 s once per build
  # and machine, kept in its cache): wait for that too, as a deployed edge has done it, so
  # that none of it lands in a measured run.
  if [[ "$p" == edgeproxy* ]]; then
    for _ in $(seq 600); do grep -q "tlscost: calibrated" "$dir/$p.log" && break; sleep 0.1; done
    for _ in $(seq 1800); do grep -q "rounds=160" "$dir/$p.log" && break; sleep 0.1; done
  fi
  # Every process of the peer: nginx's master and worker.
  local all=$main child
  for child in $(pgrep -P "$main" || true); do all="$all+$child"; done
  measure[$p]=$all
  echo "   $p on 127.0.0.1:$pt, CPU $PROXY_CPU, pids $all"
}

echo "== peers on CPU $PROXY_CPU"
for p in $PEERS; do start_peer "$p"; done

workload_args() {
  case $1 in
  keepalive) echo "-bytes 64 -keepalive=true" ;;
  handshake) echo "-bytes 64 -keepalive=false" ;;
  bulk) echo "-bytes 65536 -keepalive=true" ;;
  esac
}

echo "== $ROUNDS rounds × workloads ($WORKLOADS) × peers, $DURATION each after $WARMUP, $CONNS connections; load: $(cut -d' ' -f1-3 /proc/loadavg)"
results="$dir/results.txt"
: >"$results"
read -ra peers <<<"$PEERS"
for r in $(seq "$ROUNDS"); do
  echo "   round $r, load: $(cut -d' ' -f1-3 /proc/loadavg)"
  for w in $WORKLOADS; do
    # Interleave: each round starts the peers at a different place in the list.
    for i in "${!peers[@]}"; do
      p=${peers[$(((i + r - 1) % ${#peers[@]}))]}
      # shellcheck disable=SC2046
      out=$(taskset -c "$LOAD_CPU" "$harness" -role load -addr "127.0.0.1:${port[$p]}" -tls -x25519 \
        $(workload_args "$w") -c "$CONNS" -warmup "$WARMUP" -duration "$DURATION" -pids "${measure[$p]}")
      echo "$p $w $r $out" >>"$results"
      echo "   round $r $w $p: $(echo "$out" | python3 -c 'import json,sys; d=json.load(sys.stdin); n=d["requests"]; print("%.0f req/s, %.1f µs CPU/req, p50 %.0f µs, p99 %.0f µs" % (n/d["seconds"], sum(d["cpu"].values())/n*1e6, d["p50_us"], d["p99_us"]))')"
    done
  done
done
echo "   load after: $(cut -d' ' -f1-3 /proc/loadavg)"

echo
echo "== proxy CPU per request and requests/s: median of $ROUNDS rounds (ratio to nginx's CPU per request)"
python3 - "$results" "$PEERS" "$WORKLOADS" <<'EOF'
import json, statistics, sys
rows = [l.split(" ", 3) for l in open(sys.argv[1]).read().splitlines() if l]
peers, workloads = sys.argv[2].split(), sys.argv[3].split()
us, rps, p99 = {}, {}, {}
for p, w, r, out in rows:
    d = json.loads(out)
    n = d["requests"]
    us.setdefault((p, w), []).append(sum(d["cpu"].values()) / n * 1e6)
    rps.setdefault((p, w), []).append(n / d["seconds"])
    p99.setdefault((p, w), []).append(d["p99_us"] / 1000)
titles = {"keepalive": "keep-alive, 64 B", "handshake": "new connection (full handshake)", "bulk": "keep-alive, 64 KiB"}
print("| peer | " + " | ".join(f"{titles[w]}: µs/req (× nginx) [min..max] | req/s | p99 ms" for w in workloads) + " |")
print("|---|" + "---|---|---|" * len(workloads))
for p in peers:
    cells = []
    for w in workloads:
        m = statistics.median(us[(p, w)])
        base = statistics.median(us[("nginx", w)]) if ("nginx", w) in us else None
        ratio = f" ({m / base:.2f}×)" if base else ""
        spread = f" [{min(us[(p, w)]):.0f}..{max(us[(p, w)]):.0f}]"
        cells.append(f"{m:.1f}{ratio}{spread} | {statistics.median(rps[(p, w)]):.0f} | {statistics.median(p99[(p, w)]):.2f}")
    print(f"| {p} | " + " | ".join(cells) + " |")
# Ratios taken within each round (the peers of a round share its background load), median
# [min..max] over the rounds: to nginx, and edgeproxy to edgeproxy-before when both ran.
byround = {}
for p, w, r, out in rows:
    d = json.loads(out)
    byround[(p, w, r)] = sum(d["cpu"].values()) / d["requests"] * 1e6
def within(a, b):
    cells = []
    for w in workloads:
        rs = [byround[(a, w, r)] / byround[(b, w, r)] for (p, ww, r) in byround if p == a and ww == w and (b, w, r) in byround]
        cells.append(f"{statistics.median(rs):.2f} [{min(rs):.2f}..{max(rs):.2f}]" if rs else "–")
    return cells
print()
print("| ratio within each round, median [min..max] | " + " | ".join(titles[w] for w in workloads) + " |")
print("|---|" + "---|" * len(workloads))
for p in peers:
    if p != "nginx" and "nginx" in peers:
        print(f"| {p} / nginx | " + " | ".join(within(p, "nginx")) + " |")
if "edgeproxy" in peers and "edgeproxy-before" in peers:
    print("| edgeproxy / edgeproxy-before | " + " | ".join(within("edgeproxy", "edgeproxy-before")) + " |")
EOF

if [ "$PROFILE" != 0 ] && [[ " $PEERS " == *" edgeproxy "* ]]; then
  echo
  echo "== CPU profile of edgeproxy (fast path on) under the keep-alive workload, $PROFILE"
  kill "$(echo "${measure[edgeproxy]}" | cut -d+ -f1)"
  sleep 1
  # Profiling starts at SIGUSR1, sent when the warm-up is over: after the TLS cost
  # calibration (waited for) and the warm-up, only the measured window is profiled.
  GOMAXPROCS=$WORKERS taskset -c "$PROXY_CPU" "$bin" bench -role edge-profile -config "$dir/edgeproxy.yaml" \
    -cpuprofile "$dir/cpu.pprof" -profile-on-usr1 2>>"$dir/edgeproxy-profile.log" &
  prof=$!
  pids+=("$prof")
  for _ in $(seq 600); do grep -q "tlscost: calibrated" "$dir/edgeproxy-profile.log" && break; sleep 0.1; done
  # shellcheck disable=SC2046
  taskset -c "$LOAD_CPU" "$harness" -role load -addr "127.0.0.1:${port[edgeproxy]}" -tls -x25519 \
    $(workload_args keepalive) -c "$CONNS" -warmup 2s -duration "$PROFILE" -pids "$prof" >/dev/null &
  load=$!
  sleep 2
  kill -USR1 "$prof"
  wait "$load"
  kill -TERM "$prof"
  wait "$prof" || true
  go tool pprof -top -nodecount=40 "$bin" "$dir/cpu.pprof" 2>/dev/null | head -50
fi
