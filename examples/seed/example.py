import requests

token = "your_bearer_token"
api = "http://localhost:8000/api/v1"
headers = {"Authorization": f"Bearer {token}"}

# List deployments
response = requests.get(
    f"{api}/deployments?environment=production",
    headers=headers
)
deployments = response.json()["deployments"]

# Trigger deployment
response = requests.post(
    f"{api}/deployments/my_api/production",
    headers=headers,
    json={
        "version": "2.0.0",
        "strategy": "blue_green"
    }
)
deployment = response.json()
print(f"Deployment {deployment['id']} started")
