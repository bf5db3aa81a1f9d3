#!/usr/bin/env bash
# Every curl example of seed 000 (the Fraisier REST API reference), as written there, run in
# an order that gives each one something to act on; `check` asserts the status it answered.
# tests/seed_examples.rs runs this against a real server on localhost:8000 with fraise my_api.
set -euo pipefail

API="http://localhost:8000/api/v1"
last_status=""
last_body=""
# The examples stay verbatim: this wrapper only records what each answered.
curl() {
  local out
  out=$(command curl -sS -w '\n%{http_code}' "$@")
  last_status="${out##*$'\n'}"
  last_body="${out%$'\n'*}"
  printf '%s\n' "$last_body"
}
check() {
  if [[ "$last_status" != "$1" ]]; then
    echo "FAILED: expected $1, got $last_status: $last_body" >&2
    exit 1
  fi
  if [[ -n "${2:-}" ]] && ! grep -q "$2" <<<"$last_body"; then
    echo "FAILED: body lacks $2: $last_body" >&2
    exit 1
  fi
  echo "ok $1 ($SECONDS s)"
}
wait_run() {
  for _ in $(seq 1 300); do
    status=$(command curl -sS -H "Authorization: Bearer $TOKEN" "$API/deployments/$1" | jq -r .status)
    case "$status" in success|failed|cancelled) echo "$1 $status"; [[ "$status" == "${2:-success}" ]] && return 0; exit 1;; esac
    sleep 0.2
  done
  exit 1
}

# Quick Start
TOKEN=$(fraisier auth:token)
curl -H "Authorization: Bearer $TOKEN" \
  http://localhost:8000/api/v1/deployments
check 200 '"deployments"'
curl -X POST -H "Authorization: Bearer $TOKEN" \
  -H "Content-Type: application/json" \
  -d '{"version":"2.0.0"}' \
  http://localhost:8000/api/v1/deployments/my_api/production
check 202 '"id":"dep_00001"'

# Cancel Deployment (dep_00001 is still starting: 2.0.0 takes a second to become healthy)
curl -X DELETE -H "Authorization: Bearer $TOKEN" \
  http://localhost:8000/api/v1/deployments/dep_00001
check 202 '"status":"cancelled"'

# Authentication: no user "user" exists here, so the documented refusal
curl -X POST http://localhost:8000/api/v1/auth/token \
  -H "Content-Type: application/json" \
  -d '{"username":"user","password":"pass"}'
check 401 'UNAUTHORIZED'
OLD_TOKEN=$TOKEN
curl -X POST http://localhost:8000/api/v1/auth/refresh \
  -H "Authorization: Bearer $OLD_TOKEN"
check 200 '"access_token"'

# List Deployments
curl -H "Authorization: Bearer $TOKEN" \
  "http://localhost:8000/api/v1/deployments?environment=production&limit=5&sort=-created_at"
check 200 '"total":1'
curl -H "Authorization: Bearer $TOKEN" \
  "http://localhost:8000/api/v1/deployments?status=failed&limit=10"
check 200 '"total":0'
curl -H "Authorization: Bearer $TOKEN" \
  "http://localhost:8000/api/v1/deployments?fraise=my_api&environment=staging"
check 200 '"total":0'

# Get Deployment Details, Logs, Events
curl -H "Authorization: Bearer $TOKEN" \
  http://localhost:8000/api/v1/deployments/dep_00001
check 200 '"status":"cancelled"'
curl -H "Authorization: Bearer $TOKEN" \
  "http://localhost:8000/api/v1/deployments/dep_00001/logs?lines=50"
check 200 '"deployment_id":"dep_00001"'
curl -H "Authorization: Bearer $TOKEN" \
  "http://localhost:8000/api/v1/deployments/dep_00001/logs?level=error"
check 200 '"logs"'
curl -H "Authorization: Bearer $TOKEN" \
  "http://localhost:8000/api/v1/deployments/dep_00001/logs?follow=true"
check 200 'event: end'
curl -H "Authorization: Bearer $TOKEN" \
  http://localhost:8000/api/v1/deployments/dep_00001/events
check 200 'deployment.cancelled'

# Create Deployment
curl -X POST -H "Authorization: Bearer $TOKEN" \
  -H "Content-Type: application/json" \
  http://localhost:8000/api/v1/deployments/my_api/production
check 202 '"version":"2.0.0"'
wait_run dep_00002
curl -X POST -H "Authorization: Bearer $TOKEN" \
  -H "Content-Type: application/json" \
  -d '{
    "version": "2.0.0",
    "strategy": "blue_green",
    "metadata": {"ticket": "DEPLOY-123"}
  }' \
  http://localhost:8000/api/v1/deployments/my_api/production
check 202 '"strategy":"blue_green"'
wait_run dep_00003
curl -X POST -H "Authorization: Bearer $TOKEN" \
  -H "Content-Type: application/json" \
  -d '{"wait": true, "timeout": 600}' \
  http://localhost:8000/api/v1/deployments/my_api/production
check 200 '"status":"success"'

# Rollback Deployment: give it history first (1.8.0, then 1.9.0)
for v in 1.8.0 1.9.0; do
  id=$(command curl -sS -X POST -H "Authorization: Bearer $TOKEN" -H "Content-Type: application/json" \
    -d "{\"version\":\"$v\",\"wait\":true}" "$API/deployments/my_api/production" | jq -r .id)
  wait_run "$id"
done
curl -X POST -H "Authorization: Bearer $TOKEN" \
  http://localhost:8000/api/v1/deployments/my_api/production/rollback
check 202 '"to_version":"1.8.0"'
wait_run "$(jq -r .id <<<"$last_body")"
curl -X POST -H "Authorization: Bearer $TOKEN" \
  -H "Content-Type: application/json" \
  -d '{"to_version": "1.8.0", "reason": "Critical bug"}' \
  http://localhost:8000/api/v1/deployments/my_api/production/rollback
check 202 '"type":"rollback"'
wait_run "$(jq -r .id <<<"$last_body")"

# Fraises API
curl -H "Authorization: Bearer $TOKEN" \
  "http://localhost:8000/api/v1/fraises"
check 200 '"name":"my_api"'
curl -H "Authorization: Bearer $TOKEN" \
  "http://localhost:8000/api/v1/fraises?type=api&environment=production"
check 200 '"current_versions"'
curl -H "Authorization: Bearer $TOKEN" \
  http://localhost:8000/api/v1/fraises/my_api
check 200 '"current_version":"1.8.0"'

# Filtering & Searching
curl -H "Authorization: Bearer $TOKEN" \
  "http://localhost:8000/api/v1/deployments?q=api"
check 200 '"fraise":"my_api"'
curl -H "Authorization: Bearer $TOKEN" \
  "http://localhost:8000/api/v1/deployments?sort=-created_at"
check 200 '"id":"dep_00008"'
curl -H "Authorization: Bearer $TOKEN" \
  "http://localhost:8000/api/v1/deployments?environment=production&status=success&sort=-created_at"
check 200 '"status":"success"'
echo "all seed curl examples answered as documented"
