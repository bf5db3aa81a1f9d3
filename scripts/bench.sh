#!/usr/bin/env bash
# Fraisier's benchmarks, in one run: router vs nginx on the same upstream, the overhead of a
# rolling deploy, the API over 100,000 stored runs, a fleet of 100 agents — figures and ratios against the targets
# (docs/benchmarks.md). Benchmarks, not tests: nothing here fails because a machine is slow.
#
#   bash scripts/bench.sh              # everything (about 6 minutes on 2 cores)
#   bash scripts/bench.sh router       # one of: router, deploy, api, fleet, sweep, all (default),
#                                      # instructions (callgrind; not part of all)
#   bash scripts/bench.sh router --rounds 5 --connections 128
#   bash scripts/bench.sh all --quick  # a short run to check the harness works
#
# Installs wrk and nginx with apt when missing (as root), builds the release binaries from
# this tree (all three, so that the router measured in the agent and the one linked into the
# bench are the same code), and prints the figures; the output is also kept in
# target/bench/bench-<date>.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v wrk >/dev/null || ! command -v nginx >/dev/null; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    echo "installing wrk and nginx (apt)…" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx >/dev/null
    # The package may start a system nginx on port 80; the benchmark runs its own.
    if command -v systemctl >/dev/null; then systemctl disable --now nginx >/dev/null 2>&1 || true; fi
  else
    echo "wrk and nginx are needed: apt-get install -y wrk nginx (as root)" >&2
    exit 1
  fi
fi

cargo build --release -p fraisier -p fraisier-demo -p fraisier-bench

out_dir=target/bench
mkdir -p "$out_dir"
out="$out_dir/bench-$(date -u +%Y%m%dT%H%M%SZ).txt"
{
  echo "tree: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- crates examples bench 2>/dev/null || echo ' (with uncommitted changes)')"
  echo "nproc: $(nproc); $(wrk --version 2>&1 | head -1 | cut -d' ' -f1-2); $(nginx -v 2>&1)"
} | tee "$out"

cmd=${1:-all}
[ $# -gt 0 ] && shift
# pipefail: the status is the benchmark's, not tee's.
"${CARGO_TARGET_DIR:-target}/release/fraisier-bench" "$cmd" "$@" 2>&1 | tee -a "$out"
echo "(kept in $out)"
