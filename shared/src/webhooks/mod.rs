//! Outbound webhooks, Pulumi-compatible (`/api/orgs/{org}/hooks`, `S/hooks`), and the outbox
//! that delivers them and Tarmac's GitHub notifications.
//!
//! An event (a deployment queued, started, succeeded or failed; a drift run) becomes one outbox
//! message per interested hook, in the same store as everything else. A dispatcher sends due
//! messages with a timeout, records every attempt, and retries failures with exponential
//! backoff, so delivery is at least once and a slow or dead receiver never delays a
//! deployment. Beyond Pulumi: a per-stack `sequence` in every payload, a timestamped signature
//! (`Tarmac-Webhook-Signature: t=<unix>,v1=<hex hmac(t "." body)>`) that lets receivers refuse
//! replays, automatic retries, a delivery log, and redelivery of any past message.

pub mod dispatch;
pub mod events;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::crypto::OrgCipher;
use crate::domain::StackRef;
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

    /// The scope `key` names.
    pub fn from_key(key: &str) -> Option<Self> {
        if let Some(org) = key.strip_prefix("org/") {
            return Some(Self {
                org: org.to_string(),
                stack: None,
            });
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    Raw,
    Slack,
    MsTeams,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Slack => "slack",
            Format::MsTeams => "ms_teams",
        }
    }
}

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

/// The events Tarmac emits, with their Pulumi kind and group.
pub const EMITTED: &[(&str, &str, &str)] = &[
    ("deployment_queued", "deployment", "deployments"),
    ("deployment_started", "deployment", "deployments"),
    ("deployment_succeeded", "deployment", "deployments"),
    ("deployment_failed", "deployment", "deployments"),
    ("drift_detected", "drift_detection", "deployments"),
    (
        "drift_detection_succeeded",
        "drift_detection",
        "deployments",
    ),
    ("drift_detection_failed", "drift_detection", "deployments"),
    (
        "drift_remediation_succeeded",
        "drift_remediation",
        "deployments",
    ),
    (
        "drift_remediation_failed",
        "drift_remediation",
        "deployments",
    ),
];

/// Pulumi's other filter names: accepted, so Pulumi clients can store them, never emitted.
const ACCEPTED: &[&str] = &[
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

const GROUPS: &[&str] = &["stacks", "deployments", "policies"];

impl Hook {
    /// Whether this hook wants `event`: no filters and no groups means every event.
    pub fn wants(&self, event: &str) -> bool {
        if !self.active {
            return false;
        }
        if self.filters.is_empty() && self.groups.is_empty() {
            return true;
        }
        let group = EMITTED
            .iter()
            .find(|(e, _, _)| *e == event)
            .map(|(_, _, g)| *g);
        self.filters.iter().any(|f| f == event)
            || group.is_some_and(|g| self.groups.iter().any(|x| x == g))
    }

    /// The Pulumi `WebhookResponse`.
    pub fn render(&self, scope: &HookScope) -> Value {
        let mut v = json!({
            "organizationName": scope.org,
            "name": self.name,
            "displayName": self.display_name,
            "payloadUrl": self.payload_url,
            "active": self.active,
            "format": self.format.as_str(),
            "filters": self.filters,
            "groups": self.groups,
            "hasSecret": self.secret.is_some(),
            "secretCiphertext": self.secret.clone().unwrap_or_default(),
        });
        if let Some(s) = &scope.stack {
            v["projectName"] = json!(s.project);
            v["stackName"] = json!(s.stack);
        }
        v
    }
}

fn string_list(body: &Value, key: &str, allowed: &[&str]) -> Result<Option<Vec<String>>> {
    match crate::settings::member(body, key) {
        None => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| match i.as_str() {
                Some(s) if allowed.contains(&s) => Ok(s.to_string()),
                _ => Err(Error::invalid(format!(
                    "{key} has {i}; known values: {}",
                    allowed.join(", ")
                ))),
            })
            .collect::<Result<Vec<_>>>()
            .map(Some),
        Some(_) => Err(Error::invalid(format!("{key} must be an array of strings"))),
    }
}

fn string(body: &Value, key: &str) -> Result<Option<String>> {
    match crate::settings::member(body, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Error::invalid(format!("{key} must be a string"))),
    }
}

/// The Pulumi CLI's way of clearing a secret in an update.
const REMOVE_SECRET: &str = "__remove-secret";

/// Applies a create or update body to `current` (a new hook for creates), checking every field
/// before anything changes. The body's org and stack names, when given, must be the path's.
pub fn apply_request(
    body: &Value,
    scope: &HookScope,
    current: Option<&Hook>,
    cipher: &OrgCipher,
) -> Result<Hook> {
    if !body.is_object() {
        return Err(Error::invalid("the request body must be a JSON object"));
    }
    if let Some(org) = string(body, "organizationName")?
        && org != scope.org
    {
        return Err(Error::invalid(format!(
            "organizationName '{org}' does not match the path's organization '{}'",
            scope.org
        )));
    }
    for (key, want) in [
        (
            "projectName",
            scope.stack.as_ref().map(|s| s.project.as_str()),
        ),
        ("stackName", scope.stack.as_ref().map(|s| s.stack.as_str())),
    ] {
        if let Some(given) = string(body, key)?.filter(|g| !g.is_empty())
            && Some(given.as_str()) != want
        {
            return Err(Error::invalid(format!(
                "{key} '{given}' does not match the path"
            )));
        }
    }
    let filters_allowed: Vec<&str> = EMITTED
        .iter()
        .map(|(e, _, _)| *e)
        .chain(ACCEPTED.iter().copied())
        .collect();
    let display_name = string(body, "displayName")?
        .or(current.map(|c| c.display_name.clone()))
        .filter(|d| !d.trim().is_empty())
        .ok_or_else(|| Error::invalid("displayName is required"))?;
    let payload_url = string(body, "payloadUrl")?
        .or(current.map(|c| c.payload_url.clone()))
        .ok_or_else(|| Error::invalid("payloadUrl is required"))?;
    if !(payload_url.starts_with("https://") || payload_url.starts_with("http://")) {
        return Err(Error::invalid(format!(
            "payloadUrl '{payload_url}' must be an http(s) URL"
        )));
    }
    let format = match string(body, "format")?.as_deref() {
        None | Some("") => current.map_or(Format::Raw, |c| c.format),
        Some("raw") => Format::Raw,
        Some("slack") => Format::Slack,
        Some("ms_teams") => Format::MsTeams,
        Some("pulumi_deployments") => {
            return Err(Error::invalid(
                "format pulumi_deployments is not supported; use raw, slack or ms_teams",
            ));
        }
        Some(other) => {
            return Err(Error::invalid(format!(
                "format '{other}' is not one of raw, slack, ms_teams"
            )));
        }
    };
    let active = match crate::settings::member(body, "active") {
        None => current.is_none_or(|c| c.active),
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(Error::invalid("active must be true or false")),
    };
    let secret = match string(body, "secret")?.as_deref() {
        // Empty or absent: unchanged (what Pulumi's CLI expects).
        None | Some("") => current.and_then(|c| c.secret.clone()),
        Some(REMOVE_SECRET) => None,
        Some(s) => Some(cipher.seal(s)),
    };
    let name = match (current, string(body, "name")?.filter(|n| !n.is_empty())) {
        (Some(c), _) => c.name.clone(),
        (None, Some(n)) => {
            crate::domain::validate_name("webhook", &n)?;
            n
        }
        (None, None) => uuid::Uuid::new_v4().simple().to_string()[..8].to_string(),
    };
    Ok(Hook {
        name,
        display_name,
        payload_url,
        secret,
        active,
        format,
        filters: string_list(body, "filters", &filters_allowed)?
            .or(current.map(|c| c.filters.clone()))
            .unwrap_or_default(),
        groups: string_list(body, "groups", GROUPS)?
            .or(current.map(|c| c.groups.clone()))
            .unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope() -> HookScope {
        HookScope {
            org: "acme".into(),
            stack: None,
        }
    }

    #[test]
    fn requests_are_checked_and_updates_keep_what_they_do_not_name() {
        let key = crate::crypto::Cipher::from_key(&[4; 32]);
        let c = key.for_org("acme");
        let h = apply_request(
            &json!({"organizationName": "acme", "displayName": "ops", "payloadUrl": "https://x/h", "secret": "s", "filters": ["deployment_failed"]}),
            &scope(),
            None,
            &c,
        )
        .unwrap();
        assert_eq!(h.name.len(), 8);
        assert!(h.active && h.format == Format::Raw);
        assert_eq!(c.open(h.secret.as_ref().unwrap()).unwrap(), "s");
        assert!(h.wants("deployment_failed") && !h.wants("deployment_started"));
        let shown = h.render(&scope()).to_string();
        assert!(!shown.contains("\"s\"") && shown.contains("\"hasSecret\":true"));

        let u = apply_request(
            &json!({"active": false, "secret": ""}),
            &scope(),
            Some(&h),
            &c,
        )
        .unwrap();
        assert_eq!(
            (u.name.as_str(), u.secret.clone()),
            (h.name.as_str(), h.secret.clone())
        );
        assert!(!u.active && !u.wants("deployment_failed"));
        let cleared = apply_request(
            &json!({"secret": "__remove-secret"}),
            &scope(),
            Some(&h),
            &c,
        )
        .unwrap();
        assert_eq!(cleared.secret, None);

        for (body, want) in [
            (json!({"displayName": "d"}), "payloadUrl is required"),
            (
                json!({"payloadUrl": "https://x"}),
                "displayName is required",
            ),
            (
                json!({"displayName": "d", "payloadUrl": "ftp://x"}),
                "must be an http(s) URL",
            ),
            (
                json!({"displayName": "d", "payloadUrl": "https://x", "format": "pulumi_deployments"}),
                "not supported",
            ),
            (
                json!({"displayName": "d", "payloadUrl": "https://x", "filters": ["nope"]}),
                "known values",
            ),
            (
                json!({"displayName": "d", "payloadUrl": "https://x", "organizationName": "other"}),
                "does not match",
            ),
        ] {
            let err = apply_request(&body, &scope(), None, &c)
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{body}: {err}");
        }
        // Groups select every event of the group.
        let g = apply_request(
            &json!({"displayName": "d", "payloadUrl": "https://x", "groups": ["deployments"]}),
            &scope(),
            None,
            &c,
        )
        .unwrap();
        assert!(g.wants("drift_detected") && g.wants("deployment_queued"));
    }
}
