//! Fraisier's domain: configuration, names, strategies and their pure planners, and the
//! desired/observed state exchanged between the control plane and the agents. No I/O here.

pub mod access;
pub mod agent;
pub mod analysis;
pub mod approval;
pub mod artifact;
pub mod config;
pub mod cron;
pub mod duration;
pub mod environment;
pub mod metrics;
pub mod names;
pub mod plan;
pub mod rate;
pub mod run;
pub mod secret;
pub mod service;
pub mod strategy;
pub mod stream;
pub mod target;
pub mod tz;
pub mod version;
pub mod webhook;

pub use config::{Config, ConfigError, FraiseConfig, FraiseType};
pub use duration::Millis;
pub use strategy::{Strategy, StrategyConfig};
