//! The wire shapes, as OpenAPI schemas.
//!
//! The handlers build their bodies as JSON (see `super::wire`), so these types are never
//! constructed: they describe those bodies for the document. They are checked against the real
//! responses by the schemathesis run in `tests/run.sh` (response-schema conformance), so a
//! shape that drifts from what is served fails CI. Open objects (`additionalProperties`)
//! leave room for fields a later version adds.
#![allow(dead_code)]

pub(super) mod agent;
pub(super) mod bulk;
pub(super) mod deployments;
pub(super) mod hooks;
pub(super) mod meta;
pub(super) mod orgs;
pub(super) mod schedules;
pub(super) mod stacks;
pub(super) mod tags;
pub(super) mod updates;
