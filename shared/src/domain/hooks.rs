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
    /// A hook's payload format. `pulumi_deployments` is not a payload: its hook starts a
    /// deployment of another stack (`payloadUrl` is `<project>/<stack>` in the hook's org).
    Format {
        Raw = "raw",
        Slack = "slack",
        MsTeams = "ms_teams",
        PulumiDeployments = "pulumi_deployments",
    }
);

wire_enum!(
    /// The events Tarmac emits (Pulumi's filter names).
    Event {
        DeploymentQueued = "deployment_queued",
        /// Tarmac's: the deployment waits for approval (the stack's `approvals`).
        DeploymentApprovalRequired = "deployment_approval_required",
        /// Tarmac's: it has all the approvals it needs, and is queued to run.
        DeploymentApproved = "deployment_approved",
        /// Tarmac's: an approver rejected it, and it was skipped.
        DeploymentRejected = "deployment_rejected",
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
            | Self::DeploymentApprovalRequired
            | Self::DeploymentApproved
            | Self::DeploymentRejected
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

/// Pulumi's other filter names (the Pulumi Service provider's enum, and policy events):
/// accepted and stored, so Pulumi clients can manage hooks with them, never emitted.
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
    "environment_created",
    "environment_deleted",
    "environment_revision_created",
    "environment_revision_retracted",
    "environment_revision_tag_created",
    "environment_revision_tag_deleted",
    "environment_revision_tag_updated",
    "environment_tag_created",
    "environment_tag_deleted",
    "environment_tag_updated",
    "imported_environment_changed",
    "environment_rotation_succeeded",
    "environment_rotation_failed",
    "policy_violation_mandatory",
    "policy_violation_advisory",
];

/// Pulumi's filter groups (the Service provider gives org hooks `deployments`,
/// `environments` and `stacks` by default).
pub const GROUPS: &[&str] = &["stacks", "deployments", "environments", "policies"];

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
        if self.format == Format::PulumiDeployments {
            // It acts on a stack's successful deployment: unfiltered, or asked for by its
            // deployment filter, Pulumi's `update_succeeded`, or their groups.
            return event == Event::DeploymentSucceeded
                && ((self.filters.is_empty() && self.groups.is_empty())
                    || self
                        .filters
                        .iter()
                        .any(|f| f == "deployment_succeeded" || f == "update_succeeded")
                    || self
                        .groups
                        .iter()
                        .any(|g| g == "deployments" || g == "stacks"));
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

/// A `pulumi_deployments` hook's target: `<project>/<stack>` of the hook's own org.
pub fn deployment_target(org: &str, payload_url: &str) -> Result<StackRef> {
    let refused = || {
        Error::invalid(format!(
            "payloadUrl '{payload_url}' must name a stack of this organization as <project>/<stack> for the pulumi_deployments format"
        ))
    };
    let (project, stack) = payload_url.split_once('/').ok_or_else(refused)?;
    if stack.contains('/') {
        return Err(refused());
    }
    StackRef::new(org, project, stack).map_err(|_| refused())
}
