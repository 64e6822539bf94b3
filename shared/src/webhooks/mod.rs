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

pub mod events;

use serde_json::{Value, json};

use crate::crypto::OrgCipher;
use crate::error::{Error, Result};

pub use crate::domain::hooks::{Event, Format, Hook, HookScope};
use crate::domain::hooks::{GROUPS, known_filters};

/// The Pulumi `WebhookResponse`.
pub fn render(hook: &Hook, scope: &HookScope) -> Value {
    let mut v = json!({
        "organizationName": scope.org,
        "name": hook.name,
        "displayName": hook.display_name,
        "payloadUrl": hook.payload_url,
        "active": hook.active,
        "format": hook.format.as_str(),
        "filters": hook.filters,
        "groups": hook.groups,
        "hasSecret": hook.secret.is_some(),
        "secretCiphertext": hook.secret.clone().unwrap_or_default(),
    });
    if let Some(s) = &scope.stack {
        v["projectName"] = json!(s.project);
        v["stackName"] = json!(s.stack);
    }
    v
}

fn string_list(body: &Value, key: &str, allowed: &[&str]) -> Result<Option<Vec<String>>> {
    match crate::json::member(body, key) {
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
    match crate::json::member(body, key) {
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
    cipher: &OrgCipher<'_>,
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
    let filters_allowed = known_filters();
    let display_name = string(body, "displayName")?
        .or(current.map(|c| c.display_name.clone()))
        .filter(|d| !d.trim().is_empty())
        .ok_or_else(|| Error::invalid("displayName is required"))?;
    let payload_url = string(body, "payloadUrl")?
        .or(current.map(|c| c.payload_url.clone()))
        .ok_or_else(|| Error::invalid("payloadUrl is required"))?;
    let format = match string(body, "format")?.as_deref() {
        None | Some("") => current.map_or(Format::Raw, |c| c.format),
        Some(other) => other.parse()?,
    };
    if format == Format::PulumiDeployments {
        crate::domain::hooks::deployment_target(&scope.org, &payload_url)?;
    } else if !(payload_url.starts_with("https://") || payload_url.starts_with("http://")) {
        return Err(Error::invalid(format!(
            "payloadUrl '{payload_url}' must be an http(s) URL"
        )));
    }
    let active = match crate::json::member(body, "active") {
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
        HookScope::for_org("acme")
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
        assert!(h.wants(Event::DeploymentFailed) && !h.wants(Event::DeploymentStarted));
        let shown = render(&h, &scope()).to_string();
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
        assert!(!u.active && !u.wants(Event::DeploymentFailed));
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
                "<project>/<stack>",
            ),
            (
                json!({"displayName": "d", "payloadUrl": "other/p/s", "format": "pulumi_deployments"}),
                "<project>/<stack>",
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
        assert!(g.wants(Event::DriftDetected) && g.wants(Event::DeploymentQueued));
    }
}
