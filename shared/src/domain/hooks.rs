//! Outbound webhooks as data: where a hook hangs, how it is formatted, and the events it can
//! hear.

use serde::{Deserialize, Serialize};

use super::StackRef;
use crate::error::{Error, Result};

/// Where a hook hangs: an org, or one of its stacks.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HookScope {
    pub org: String,
    pub stack: Option<StackRef>,
}

impl HookScope {
    pub fn for_stack(stack: &StackRef) -> Self {
        Self {
            org: stack.org.clone(),
            stack: Some(stack.clone()),
        }
    }

    pub fn for_org(org: &str) -> Self {
        Self {
            org: org.to_string(),
            stack: None,
        }
    }

    /// The scope `key` names.
    pub fn from_key(key: &str) -> Option<Self> {
        if let Some(org) = key.strip_prefix("org/") {
            return Some(Self::for_org(org));
        }
        StackRef::parse(key.strip_prefix("stack/")?)
            .ok()
            .map(|s| Self::for_stack(&s))
    }

    /// A stable key, for storage and outbox targets.
    pub fn key(&self) -> String {
        match &self.stack {
            None => format!("org/{}", self.org),
            Some(s) => format!("stack/{s}"),
        }
    }
}

wire_enum!(
    /// A hook's payload format.
    Format {
        Raw = "raw",
        Slack = "slack",
        MsTeams = "ms_teams",
    }
);

wire_enum!(
    /// The events Tarmac emits (Pulumi's filter names).
    Event {
        DeploymentQueued = "deployment_queued",
        DeploymentStarted = "deployment_started",
        DeploymentSucceeded = "deployment_succeeded",
        DeploymentFailed = "deployment_failed",
        DriftDetected = "drift_detected",
        DriftDetectionSucceeded = "drift_detection_succeeded",
        DriftDetectionFailed = "drift_detection_failed",
        DriftRemediationSucceeded = "drift_remediation_succeeded",
        DriftRemediationFailed = "drift_remediation_failed",
    }
);

impl Event {
    /// Pulumi's `Pulumi-Webhook-Kind` for the event.
    pub fn kind(self) -> &'static str {
        match self {
            Self::DeploymentQueued
            | Self::DeploymentStarted
            | Self::DeploymentSucceeded
            | Self::DeploymentFailed => "deployment",
            Self::DriftDetected | Self::DriftDetectionSucceeded | Self::DriftDetectionFailed => {
                "drift_detection"
            }
            Self::DriftRemediationSucceeded | Self::DriftRemediationFailed => "drift_remediation",
        }
    }

    /// The filter group the event belongs to.
    pub fn group(self) -> &'static str {
        "deployments"
    }
}

/// Pulumi's other filter names: accepted, so Pulumi clients can store them, never emitted.
pub const ACCEPTED_FILTERS: &[&str] = &[
    "stack_created",
    "stack_deleted",
    "preview_succeeded",
    "preview_failed",
    "update_succeeded",
    "update_failed",
    "destroy_succeeded",
    "destroy_failed",
    "refresh_succeeded",
    "refresh_failed",
    "policy_violation_mandatory",
    "policy_violation_advisory",
];

/// Pulumi's filter groups.
pub const GROUPS: &[&str] = &["stacks", "deployments", "policies"];

/// A webhook as stored; `secret` is sealed for the org.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Hook {
    pub name: String,
    pub display_name: String,
    pub payload_url: String,
    pub secret: Option<String>,
    pub active: bool,
    pub format: Format,
    pub filters: Vec<String>,
    pub groups: Vec<String>,
}

impl Hook {
    /// Whether this hook wants `event`: no filters and no groups means every event.
    pub fn wants(&self, event: Event) -> bool {
        if !self.active {
            return false;
        }
        if self.filters.is_empty() && self.groups.is_empty() {
            return true;
        }
        self.filters.iter().any(|f| f == event.as_str())
            || self.groups.iter().any(|g| g == event.group())
    }
}

/// Every filter name a hook may carry: those Tarmac emits and those it only stores.
pub fn known_filters() -> Vec<&'static str> {
    Event::ALL
        .iter()
        .map(|e| e.as_str())
        .chain(ACCEPTED_FILTERS.iter().copied())
        .collect()
}
