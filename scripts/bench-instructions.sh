#!/usr/bin/env bash
# User-space instructions per proxied request: Fraisier's router against nginx in front of the
# same static upstream, each counted by callgrind while wrk drives it. Throughput on a shared
# 2-vCPU guest moves by ±10–25 % from one run to the next; an instruction count repeats, so
# this is the figure that shows whether a change to the router's hot path made it cheaper
# (docs/benchmarks.md, "Instructions per request"). Kernel work is not counted: compare
# syscalls with `perf stat -e 'syscalls:sys_enter_*'` against `fraisier-bench proxy`.
#
#   bash scripts/bench-instructions.sh               # 4 connections, 6 s per proxy
#   bash scripts/bench-instructions.sh 16 10         # connections, seconds
#
# Under callgrind a proxy runs some 50 times slower, so it is the bottleneck whatever the
# connection count; both proxies are measured the same way, one after the other.
set -euo pipefail
cd "$(dirname "$0")/.."

conns=${1:-4}
secs=${2:-6}

need=()
command -v valgrind >/dev/null || need+=(valgrind)
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || need+=(nginx)
if ((${#need[@]})); then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    echo "installing ${need[*]} (apt)…" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    if command -v systemctl >/dev/null; then systemctl disable --now nginx >/dev/null 2>&1 || true; fi
  else
    echo "needed: apt-get install -y ${need[*]} (as root)" >&2
    exit 1
  fi
fi

cargo build --release -p fraisier-bench
bench="${CARGO_TARGET_DIR:-target}/release/fraisier-bench"

dir=$(mktemp -d)
pids=()
cleanup() {
  for pid in ${pids[@]+"${pids[@]}"}; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_for() {
  for _ in $(seq 1 300); do
    curl -sf -o /dev/null "http://127.0.0.1:$1/" && return 0
    sleep 0.1
  done
  echo "nothing answered on port $1" >&2
  return 1
}

# One nginx config: a static server of one small file, or a reverse proxy to it with
# keep-alive (the settings of `fraisier-bench sweep`). One process, no master: callgrind
# follows it without following forks.
nginx_conf() { # root port [upstream_port]
  local root=$1 port=$2 upstream=${3:-}
  mkdir -p "$root/logs" "$root/www"
  echo '{"version":"static","served_by":"nginx"}' >"$root/www/index.json"
  local user=""
  [ "$(id -u)" -eq 0 ] && user="user root;"
  local http_block
  if [ -n "$upstream" ]; then
    http_block="upstream up { server 127.0.0.1:$upstream; keepalive 64; keepalive_requests 100000; }
  server { listen 127.0.0.1:$port; location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_set_header Host \$host; proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for; } }"
  else
    http_block="server { listen 127.0.0.1:$port; location / { root $root/www; index index.json; default_type application/json; } }"
  fi
  cat >"$root/nginx.conf" <<EOF
$user
daemon off;
master_process off;
worker_processes 1;
pid $root/nginx.pid;
error_log $root/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $root/cb; proxy_temp_path $root/px; fastcgi_temp_path $root/fc;
  uwsgi_temp_path $root/uw; scgi_temp_path $root/sc;
  keepalive_requests 100000;
  $http_block
}
EOF
}

upstream_port=$(free_port)
nginx_conf "$dir/static" "$upstream_port"
nginx -p "$dir/static" -e "$dir/static/logs/error.log" -c "$dir/static/nginx.conf" &
pids+=($!)
wait_for "$upstream_port"

# Counts one proxy: start it under callgrind, warm up, zero the counters, drive it, dump.
measure() { # name port command...
  local name=$1 port=$2
  shift 2
  valgrind --tool=callgrind --callgrind-out-file="$dir/cg.$name.%p" "$@" >"$dir/$name.log" 2>&1 &
  local pid=$!
  pids+=("$pid")
  wait_for "$port"
  wrk -t1 -c"$conns" -d2s "http://127.0.0.1:$port/" >/dev/null
  callgrind_control -z "$pid" >"$dir/$name.zero.log" 2>&1
  local out requests
  out=$(wrk -t1 -c"$conns" -d"${secs}s" "http://127.0.0.1:$port/")
  if grep -qE 'Non-2xx|Socket errors' <<<"$out"; then
    echo "$name: wrk saw errors, the count would mean nothing:" >&2
    echo "$out" >&2
    return 1
  fi
  requests=$(awk '/requests in/ {print $1}' <<<"$out")
  callgrind_control -d "$pid" >"$dir/$name.dump.log" 2>&1
  # callgrind_control exits 0 even when it reached no run: the dump file is the proof.
  local dump="$dir/cg.$name.$pid.1"
  if [ ! -s "$dump" ]; then
    echo "$name: callgrind wrote no dump ($dump):" >&2
    cat "$dir/$name.zero.log" "$dir/$name.dump.log" >&2
    return 1
  fi
  local total
  total=$(awk '/^totals:/ {print $2}' "$dump")
  kill "$pid" 2>/dev/null || true
  local per
  per=$(awk -v t="$total" -v r="$requests" 'BEGIN { printf "%.0f", t / r }')
  printf '%-8s %10s requests %14s instructions %8s per request\n' "$name" "$requests" "$total" "$per"
  eval "per_$name=$per"
}

echo "tree: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- crates bench 2>/dev/null || echo ' (with uncommitted changes)'); $(nginx -v 2>&1); $(valgrind --version)"
echo "user-space instructions per request (callgrind), wrk -t1 -c$conns, ${secs} s per proxy, static nginx upstream"
nginx_port=$(free_port)
nginx_conf "$dir/proxy" "$nginx_port" "$upstream_port"
measure nginx "$nginx_port" nginx -p "$dir/proxy" -e "$dir/proxy/logs/error.log" -c "$dir/proxy/nginx.conf"
router_port=$(free_port)
measure router "$router_port" "$bench" proxy --upstream "127.0.0.1:$upstream_port" --listen "127.0.0.1:$router_port"
awk -v r="$per_router" -v n="$per_nginx" 'BEGIN { printf "router/nginx instructions per request: %.2f\n", r / n }'
