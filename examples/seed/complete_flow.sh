#!/bin/bash
set -e

TOKEN=$(fraisier auth:token)
API="http://localhost:8000/api/v1"

# 1. Get fraise info
echo "Getting fraise info..."
curl -H "Authorization: Bearer $TOKEN" "$API/fraises/my_api"

# 2. Trigger deployment
echo "Triggering deployment..."
DEPLOY=$(curl -X POST -H "Authorization: Bearer $TOKEN" \
  -H "Content-Type: application/json" \
  -d '{"strategy":"rolling"}' \
  "$API/deployments/my_api/production")

DEPLOY_ID=$(echo $DEPLOY | jq -r '.id')
echo "Deployment started: $DEPLOY_ID"

# 3. Watch deployment progress
echo "Watching deployment..."
while true; do
  STATUS=$(curl -s -H "Authorization: Bearer $TOKEN" \
    "$API/deployments/$DEPLOY_ID" | jq -r '.status')

  if [ "$STATUS" = "success" ]; then
    echo "Deployment successful!"
    break
  elif [ "$STATUS" = "failed" ]; then
    echo "Deployment failed!"
    exit 1
  fi

  echo "Status: $STATUS"
  sleep 5
done

# 4. View final logs
echo "Deployment logs:"
curl -H "Authorization: Bearer $TOKEN" \
  "$API/deployments/$DEPLOY_ID/logs?lines=50"
