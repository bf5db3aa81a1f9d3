const token = "your_bearer_token";
const api = "http://localhost:8000/api/v1";

// List deployments
const response = await fetch(
  `${api}/deployments?environment=production`,
  {
    headers: { "Authorization": `Bearer ${token}` }
  }
);
const { deployments } = await response.json();

// Trigger deployment
const deployResponse = await fetch(
  `${api}/deployments/my_api/production`,
  {
    method: "POST",
    headers: {
      "Authorization": `Bearer ${token}`,
      "Content-Type": "application/json"
    },
    body: JSON.stringify({
      version: "2.0.0",
      strategy: "blue_green"
    })
  }
);
const deployment = await deployResponse.json();
console.log(`Deployment ${deployment.id} started`);
