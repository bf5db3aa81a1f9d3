//! The data plane: `fraisier agent` runs the instances of every fraise deployed on this host,
//! probes them, routes traffic to them and reconciles them toward the desired state the
//! server writes through the control API. It keeps serving when the server is down.
//!
//! Modules, each with one job: `agent` (process lifecycle and shared state), `control` (the
//! HTTP control API), `admission` (request checks), `reconcile` (per-service loop), `plan` (its
//! pure decisions), `restart` (backoff), `process` (instance processes), `health` (probes),
//! `exec` (one-shot commands), `release` (releases on disk), `state_dir` (files and atomic
//! writes), `router` (the reverse proxy), `secrets` (opening sealed values), `signal` (the
//! libc calls), `membership` (joining a server and heartbeating to it),
//! `stream` (the task stream to the server it joined).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

pub mod admission;
mod agent;
mod control;
mod error;
mod exec;
pub mod fetch;
mod health;
pub mod membership;
pub mod plan;
pub mod process;
mod reconcile;
pub mod release;
pub mod restart;
pub mod router;
mod schedule;
pub mod secrets;
pub mod signal;
mod state_dir;
mod stream;

pub use error::AgentError;

/// How to run an agent.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// Owned by this agent alone: releases, logs, desired state, instance records, agent.json.
    pub state_dir: PathBuf,
    /// The control API's address; must be loopback. Port 0 picks a free one (see agent.json).
    pub listen: SocketAddr,
    /// Releases kept per fraise beyond those the desired states reference, for rollback.
    pub keep_releases: usize,
    /// The key file secrets are opened with (`FRAISIER_SECRET_KEY` when unset and present).
    pub secret_keys: Option<PathBuf>,
    /// A server to join and report to; `None` for the agent `fraisier serve` starts, which
    /// that server links with `PUT /v1/server`.
    pub join: Option<membership::Join>,
}

// === impl AgentOptions ===

impl AgentOptions {
    /// Defaults for `dir`: a free loopback port, 3 releases kept.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        AgentOptions {
            state_dir: state_dir.into(),
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            keep_releases: 3,
            secret_keys: None,
            join: None,
        }
    }
}

/// Runs the agent on `opts.state_dir` until `POST /v1/shutdown` has stopped everything (then
/// returns `Ok`, and the caller exits), or until SIGTERM/SIGINT, which leave the instances
/// running for the next agent to re-adopt.
pub async fn run(opts: AgentOptions) -> Result<(), AgentError> {
    agent::run(opts).await
}
