//! Updates: the engine operation a deployment runs, as Pulumi clients know it (`updateID`,
//! a per-stack `version`, kind, result, times, resource changes).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::Operation;
use crate::error::{Error, Result};

wire_enum!(
    /// Pulumi's `UpdateKind` for the operations deployments run.
    UpdateKind {
        Update = "update",
        Preview = "preview",
        Refresh = "refresh",
        Destroy = "destroy",
    }
);

impl UpdateKind {
    /// The kind of update an operation makes: drift detection previews, remediation updates.
    pub fn of(op: Operation) -> Self {
        match op {
            Operation::Update | Operation::RemediateDrift => Self::Update,
            Operation::Preview | Operation::DetectDrift => Self::Preview,
            Operation::Refresh => Self::Refresh,
            Operation::Destroy => Self::Destroy,
        }
    }
}

wire_enum!(
    /// Pulumi's `UpdateResult`.
    UpdateResult {
        NotStarted = "not-started",
        InProgress = "in-progress",
        Succeeded = "succeeded",
        Failed = "failed",
    }
);

/// An update, as stored with its deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateInfo {
    /// The stack's update sequence: 1, 2, ... in the order updates start.
    pub version: i64,
    pub kind: UpdateKind,
    pub result: UpdateResult,
    #[serde(with = "time::serde::timestamp")]
    pub started: OffsetDateTime,
    #[serde(default, with = "time::serde::timestamp::option")]
    pub ended: Option<OffsetDateTime>,
    /// Pulumi's `resourceChanges`: operation (`create`, `update`, `delete`, `same`, ...) to count.
    #[serde(default)]
    pub resource_changes: BTreeMap<String, i64>,
    /// The resources the stack's state holds after the update, where known.
    #[serde(default)]
    pub resource_count: Option<i64>,
}

impl UpdateInfo {
    /// An update of `kind` that starts now, numbered `version` in its stack.
    pub fn starting(version: i64, kind: UpdateKind) -> Self {
        Self {
            version,
            kind,
            result: UpdateResult::InProgress,
            started: OffsetDateTime::now_utc(),
            ended: None,
            resource_changes: BTreeMap::new(),
            resource_count: None,
        }
    }
}

/// How an update ended, as the runner reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateOutcome {
    pub result: UpdateResult,
    pub resource_changes: BTreeMap<String, i64>,
    pub resource_count: Option<i64>,
}
