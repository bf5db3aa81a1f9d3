#!/usr/bin/env bash
# The API's contract, fuzzed from the outside: starts `fraisier serve` (debug build) on an
# ephemeral port with a temp data dir, and runs schemathesis against its OpenAPI document with
# a real token. Fails on a server error, a response that breaks its schema, an undocumented
# status, or a schema-valid request refused with a 400.
# Usage: scripts/fuzz-api.sh [extra `st run` arguments]; FUZZ_MAX_TIME (s) bounds each phase.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
target="${CARGO_TARGET_DIR:-$repo/target}/debug"
st="${SCHEMATHESIS:-st}"
command -v "$st" >/dev/null || { echo "schemathesis is not installed (python3 -m pip install schemathesis)" >&2; exit 1; }

work=$(mktemp -d -t fraisier-fuzz-XXXXXX)
server_pid=""
cleanup() {
  [[ -n "$server_pid" ]] && kill -9 "$server_pid" 2>/dev/null || true
  "$target/fraisier" agent stop --state-dir "$work/data/agent" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/releases"
for v in 1.0.0 2.0.0; do mkdir -p "$work/releases/$v" && echo "DEMO_VERSION=$v" > "$work/releases/$v/demo.env"; done
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cat > "$work/fraisier.yaml" <<YAML
server:
  listen: "127.0.0.1:0"
  data_dir: "$work/data"
  rate_limits: off
environments:
  development: {}
  staging: {}
  production: { required_approvals: 1 }
fraises:
  app:
    command: "exec $target/fraisier-demo"
    artifact_path: "$work/releases/{version}"
    health_check: { type: http, path: /health, interval: 100ms, timeout: 1s }
    drain_timeout: 1s
    stop_grace: 1s
    # Short pauses: a request with "wait": true answers when its run is over.
    environments:
      development:
        port: $(free_port)
        strategy_defaults: &quick
          blue_green: { scale_down_delay: 1s, health_check_timeout: 10s }
          canary: { steps: [{ weight: 50, pause: 1s }], health_check_timeout: 10s }
          recreate: { health_check_timeout: 10s }
      staging: { port: $(free_port), strategy_defaults: *quick }
      production: { port: $(free_port), instances: 2, strategy_defaults: *quick }
YAML

FRAISIER_ADMIN_PASSWORD=fuzz-admin-password FRAISIER_LOG=warn \
  "$target/fraisier" serve --config "$work/fraisier.yaml" > "$work/serve.out" 2>"$work/serve.err" &
server_pid=$!
for _ in $(seq 1 100); do grep -q "listening on" "$work/serve.out" 2>/dev/null && break; sleep 0.1; done
base=$(sed -n 's/^fraisier listening on \(http:[^ ]*\)\/api\/v1.*/\1/p' "$work/serve.out")
[[ -n "$base" ]] || { cat "$work/serve.err" >&2; echo "the server did not start" >&2; exit 1; }
token=$("$target/fraisier" auth:token --config "$work/fraisier.yaml")
# A run that cannot authenticate would test nothing but 401s.
curl -sf -H "Authorization: Bearer $token" "$base/api/v1/auth/me" >/dev/null \
  || { echo "the minted token is refused" >&2; exit 1; }
# Something to find: a finished run in staging.
curl -sf -X POST -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
  -d '{"version":"1.0.0","wait":true}' "$base/api/v1/deployments/app/staging" >/dev/null

export FRAISIER_TOKEN="$token" FUZZ_BASE_URL="$base"
fuzz() {
  status=0
  PYTHONPATH="$repo/scripts/fuzz-python${PYTHONPATH:+:$PYTHONPATH}" \
    "$st" --config-file "$repo/scripts/schemathesis.toml" run "$base/api/v1/openapi.json" \
    --max-time "${FUZZ_MAX_TIME:-60}" --no-color "$@" 2>&1 | tee "$work/st.out" || status=$?
}
# CPython 3.11's ast module can raise "AST constructor recursion depth mismatch" inside
# hypothesis (python/cpython#106905): an error of the fuzzer, not a finding about the server.
# scripts/fuzz-python/sitecustomize.py turns it into hypothesis's own fallback where it was
# seen (describing a lambda); should it surface elsewhere, a run whose only errors are that
# one is run once more. Any failure, or any other error, stands.
only_cpython_ast_errors() {
  local errors ast
  grep -q '^Failures:' "$work/st.out" && return 1
  errors=$(sed -n '/^Errors:/,/^$/p' "$work/st.out" | awk '/[0-9]+$/ { n += $NF } END { print n + 0 }')
  ast=$(grep -c 'AST constructor recursion depth mismatch' "$work/st.out" || true)
  [[ -n "$errors" && "$errors" -gt 0 && "$ast" -ge "$errors" ]]
}
fuzz "$@"
if ((status != 0)) && only_cpython_ast_errors; then
  echo "--- the fuzzer hit CPython's AST recursion bug (python/cpython#106905); running it again ---" >&2
  fuzz "$@"
fi
if ((status != 0)); then
  echo "--- the server's log (errors and warnings) ---" >&2
  tail -n 50 "$work/serve.err" >&2
  echo "--- the fuzzer's token now: $(curl -s -H "Authorization: Bearer $token" "$base/api/v1/auth/me")" >&2
fi
exit "$status"
