//! Tarmac: a self-hosted deployments platform for infrastructure-as-code stacks, wire-compatible
//! with Pulumi Cloud's Deployments API.
//!
//! The domain and settings logic sit in the middle; `ports` are what they need from storage;
//! `sqlite` is the embedded adapter; `http` is the one router; `runner` and `worker` execute
//! deployments, each child process confined by `sandbox`; `serve` and `deps` wire it together.
#![forbid(unsafe_code)]

pub mod agent;
pub mod app;
pub mod aws;
pub mod crypto;
mod delivery;
pub mod deps;
pub mod domain;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod github;
pub mod gitsync;
pub mod http;
mod json;
#[cfg(feature = "aws")]
pub mod lambda;
pub mod oidc;
pub mod ports;
mod runner;
pub mod sandbox;
pub mod scheduler;
pub mod serve;
mod service;
mod settings;
mod sqlite;
mod store_codec;
mod tags;
pub mod telemetry;
pub mod webhooks;
mod worker;

pub use error::{Error, Result};
pub use runner::cache;

/// How Tarmac names itself to the servers it calls (webhook receivers, GitHub).
pub const USER_AGENT: &str = concat!("tarmac/", env!("CARGO_PKG_VERSION"));
