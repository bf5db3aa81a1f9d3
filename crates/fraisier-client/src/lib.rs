//! Typed HTTP clients for Fraisier's APIs. `agent`: the agent's control API (loopback, bearer
//! token from `agent.json`), used by the server, the CLI and the tests.

pub mod agent;
pub mod api;

pub use agent::{read_agent_info, AgentClient, AgentClientError, AgentHealth};
pub use api::{ApiClient, ApiClientError};
