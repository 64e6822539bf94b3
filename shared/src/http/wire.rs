//! Response bodies in Pulumi's wire shapes (reference §5 and Appendix D). Every field the SDK
//! requires is always present.

use serde_json::{Value, json};

use crate::domain::approvals::{Approval, Vote};
use crate::domain::spec::EnvValue;
use crate::domain::stacks::StackInfo;
use crate::domain::time_fmt::{pulumi_datetime, rfc3339, rfc3339_or_zero};
use crate::domain::{Deployment, LogEntry};

pub fn user_info(name: &str) -> Value {
    json!({ "name": name, "githubLogin": name, "avatarUrl": "" })
}

pub fn job(d: &Deployment) -> Value {
    let steps: Vec<Value> = d
        .steps
        .iter()
        .map(|s| {
            json!({
                "name": s.name,
                "status": s.status,
                "started": rfc3339_or_zero(s.started),
                "lastUpdated": rfc3339_or_zero(s.last_updated),
            })
        })
        .collect();
    json!({
        "status": d.status,
        "started": rfc3339_or_zero(d.started),
        "lastUpdated": rfc3339(d.modified),
        "steps": steps,
    })
}

/// `configuration`: environment variables as a list (secret values left out) and the source,
/// with `repoURL` spelled as `DeploymentSourceGit` requires.
fn configuration(d: &Deployment) -> Value {
    let spec = d.config.spec();
    let env_vars: Vec<Value> = spec
        .env
        .iter()
        .map(|(name, v)| match v {
            EnvValue::Plain(value) => json!({ "name": name, "value": value, "secret": false }),
            EnvValue::Secret { .. } => json!({ "name": name, "secret": true }),
            // The reference, never the value it names.
            EnvValue::Reference(r) => json!({ "name": name, "secret": true, "reference": r }),
        })
        .collect();
    let source = &spec.source;
    let mut git = json!({ "repoURL": source.repo_url });
    for (key, value) in [
        ("branch", &source.branch),
        ("repoDir", &source.repo_dir),
        ("commit", &source.commit),
    ] {
        if let Some(v) = value {
            git[key] = json!(v);
        }
    }
    json!({ "environmentVariables": env_vars, "source": { "git": git } })
}

/// Tarmac's `approval` extension of a deployment: where its approval stands.
fn approval(a: &Approval) -> Value {
    let vote = |v: &Vote| {
        let mut out = json!({ "name": v.name, "at": rfc3339(v.at) });
        if let Some(c) = &v.comment {
            out["comment"] = json!(c);
        }
        out
    };
    json!({
        "status": a.status,
        "required": a.required,
        "given": a.approved_by.len(),
        "approvedBy": a.approved_by.iter().map(vote).collect::<Vec<_>>(),
        "rejectedBy": a.rejected_by.as_ref().map(vote),
        "approvers": a.approvers,
        "expiresAt": rfc3339(a.expires_at),
    })
}

/// Adds the extensions a deployment has (`approval`) to its wire form.
fn with_extensions(mut v: Value, d: &Deployment) -> Value {
    if let Some(a) = d.approval_now() {
        v["approval"] = approval(&a);
    }
    v
}

/// `GetDeploymentResponse`.
pub fn deployment(d: &Deployment) -> Value {
    with_extensions(
        json!({
            "id": d.id,
            "created": pulumi_datetime(d.created),
            "modified": pulumi_datetime(d.modified),
            "status": d.status,
            "version": d.version,
            "latestVersion": d.latest_version,
            "requestedBy": user_info(&d.requested_by),
            "jobs": [job(d)],
            "configuration": configuration(d),
            "initiator": d.initiator,
            "pulumiOperation": d.operation,
            "projectName": d.stack.project,
            "stackName": d.stack.stack,
            "updates": nested_updates(d),
        }),
        d,
    )
}

/// A deployment's update as `DeploymentNestedUpdate`, in a one-element list (or empty).
fn nested_updates(d: &Deployment) -> Vec<Value> {
    d.update
        .iter()
        .map(|u| {
            json!({
                "id": d.id,
                "updateID": d.id,
                "version": u.version,
                "startTime": u.started.unix_timestamp(),
                "endTime": u.ended.map_or(0, |t| t.unix_timestamp()),
                "result": u.result,
                "kind": u.kind,
                "message": "",
                "environment": update_environment(d),
            })
        })
        .collect()
}

fn update_environment(d: &Deployment) -> Value {
    json!({ "tarmac.deployment.id": d.id.to_string(), "tarmac.deployment.initiator": d.initiator })
}

/// The update a deployment made, as Pulumi's (legacy, flat) `UpdateInfo`: what `stack history`
/// reads. `None` before the deployment's engine step started.
pub(crate) fn update_info(d: &Deployment) -> Option<Value> {
    let u = d.update.as_ref()?;
    let mut v = json!({
        "kind": u.kind,
        "startTime": u.started.unix_timestamp(),
        "message": "",
        "environment": update_environment(d),
        "config": {},
        "result": u.result,
        "endTime": u.ended.map_or(0, |t| t.unix_timestamp()),
        "version": u.version,
        "resourceChanges": u.resource_changes,
    });
    if let Some(n) = u.resource_count {
        v["resourceCount"] = json!(n);
    }
    Some(v)
}

/// `UpdateInfo` (the SDK's name): the flat info with its id, versions and requester.
pub(crate) fn update_record(d: &Deployment, latest_version: i64) -> Option<Value> {
    let info = update_info(d)?;
    Some(json!({
        "info": info,
        "updateID": d.id,
        "version": info["version"],
        "latestVersion": latest_version,
        "requestedBy": user_info(&d.requested_by),
    }))
}

/// `GET S`: Pulumi's `Stack` (`activeUpdate` is the deployment holding the stack's run slot,
/// whose update id is its own).
/// A stack's git sync, as `GET S/deployments/sync` and the stack's metadata show it.
pub(crate) fn git_sync(s: &crate::domain::gitsync::SyncState, next: time::OffsetDateTime) -> Value {
    json!({
        "enabled": true,
        "lastSeenHead": s.last_seen_head,
        "lastSyncedCommit": s.last_synced_commit,
        "lastAttemptedCommit": s.last_attempted_commit,
        "pendingDeployment": s.pending.as_ref().map(|p| p.deployment),
        "lastError": s.last_error,
        "failures": s.failures,
        "lastCheck": s.last_check.map(rfc3339),
        "nextCheck": rfc3339(next),
    })
}

pub(crate) fn stack(info: &StackInfo) -> Value {
    let mut v = json!({
        "id": crate::oidc::token::stack_id(&info.stack),
        "orgName": info.stack.org,
        "projectName": info.stack.project,
        "stackName": info.stack.stack,
        "activeUpdate": info.active.map(|a| a.to_string()).unwrap_or_default(),
        "tags": info.tags,
        "version": info.update_version,
    });
    if let Some(n) = info.resource_count {
        v["resourceCount"] = json!(n);
    }
    v
}

/// A stack in `GET /api/user/stacks`.
pub(crate) fn stack_summary(info: &StackInfo) -> Value {
    let mut v = json!({
        "id": crate::oidc::token::stack_id(&info.stack),
        "orgName": info.stack.org,
        "projectName": info.stack.project,
        "stackName": info.stack.stack,
    });
    if let Some(n) = info.resource_count {
        v["resourceCount"] = json!(n);
    }
    v
}

/// `ListDeploymentSnapshot`.
pub fn snapshot(d: &Deployment) -> Value {
    with_extensions(
        json!({
            "id": d.id,
            "created": pulumi_datetime(d.created),
            "modified": pulumi_datetime(d.modified),
            "status": d.status,
            "version": d.version,
            "requestedBy": user_info(&d.requested_by),
            "projectName": d.stack.project,
            "stackName": d.stack.stack,
            "paused": d.stack_paused,
            "pulumiOperation": d.operation,
            "updates": nested_updates(d),
            "jobs": [job(d)],
            "initiator": d.initiator,
        }),
        d,
    )
}

/// A streaming-mode log entry: a header marks a new step.
pub fn stream_line(e: &LogEntry) -> Value {
    match (&e.header, &e.line) {
        (Some(h), _) => json!({ "header": h, "timestamp": rfc3339(e.timestamp) }),
        (None, line) => {
            json!({ "timestamp": rfc3339(e.timestamp), "line": line.clone().unwrap_or_default() })
        }
    }
}

pub fn step_line(e: &LogEntry) -> Value {
    json!({ "timestamp": rfc3339(e.timestamp), "line": e.line.clone().unwrap_or_default() })
}

/// A stack's outputs in the export shape that clients read them from. Secret outputs use
/// Pulumi's secret signature, with the sealed value as ciphertext.
pub fn export(stack: &crate::domain::StackRef, outputs: &Value) -> Value {
    let mut out = serde_json::Map::new();
    if let Some(map) = outputs.as_object() {
        for (k, v) in map {
            let rendered = match (v.get("value"), v.get("secret")) {
                (Some(value), _) => value.clone(),
                (None, Some(sealed)) => json!({
                    "4dabf18193072939515e22adb298388d": "1b47061264138c4ac30d75fd1eb44270",
                    "ciphertext": sealed,
                }),
                _ => Value::Null,
            };
            out.insert(k.clone(), rendered);
        }
    }
    let urn = format!(
        "urn:pulumi:{}::{}::pulumi:pulumi:Stack::{}-{}",
        stack.stack, stack.project, stack.project, stack.stack
    );
    json!({
        "version": 3,
        "deployment": {
            "manifest": { "time": rfc3339(time::OffsetDateTime::now_utc()), "magic": "", "version": "" },
            "resources": [{ "urn": urn, "custom": false, "type": "pulumi:pulumi:Stack", "outputs": out }],
        },
    })
}
