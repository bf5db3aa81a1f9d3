#!/usr/bin/env bash
# The whole test suite: formatting, lints, and every test (unit, store on SQLite and — when
# FRAISIER_TEST_DATABASE_URL is set — PostgreSQL, and the integration tests that start the
# real binary), then the API's contract fuzzed with schemathesis (installed by .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# Integration tests start target/<profile>/fraisier-demo, so build every binary first.
cargo build --workspace --bins
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast --retries 0
else
  cargo test --workspace --no-fail-fast
fi

st="${SCHEMATHESIS:-st}"
if command -v "$st" >/dev/null 2>&1; then
  bash scripts/fuzz-api.sh
elif [[ "${CI:-}" == true ]]; then
  echo "schemathesis is missing: .ci/run installs it" >&2
  exit 1
else
  echo "skipped the contract fuzz: schemathesis is not installed (see .ci/run)"
fi
