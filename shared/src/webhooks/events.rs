//! From lifecycle events to outbox messages: one per interested hook, formatted for it, and the
//! GitHub status (and preview comment) of deployments that GitHub triggered.
//!
//! Emitting never fails the caller and never waits on a receiver: it writes outbox messages
//! and returns. Stacks with no hook and no GitHub trigger cost one read.

use serde_json::{Value, json};
use time::OffsetDateTime;

use super::{Event, Format, Hook, HookScope};
use crate::deps::Deps;
use crate::domain::{Deployment, JobStatus, Operation};
use crate::ports::{LogQuery, OutboxMessage};

/// Pulumi's raw payload for a deployment event, plus `sequence`, `deploymentId` and `event`.
fn deployment_payload(
    deps: &Deps,
    d: &Deployment,
    status: JobStatus,
    event: Event,
    seq: i64,
) -> Value {
    let org = json!({"name": d.stack.org, "githubLogin": d.stack.org, "avatarUrl": ""});
    json!({
        "user": {"name": d.requested_by, "githubLogin": d.requested_by, "avatarUrl": ""},
        "organization": org,
        "projectName": d.stack.project,
        "stackName": d.stack.stack,
        "deploymentUrl": deps.console_url(&d.stack, d.version),
        "version": d.version,
        "operation": d.operation.as_str(),
        "status": status.as_str(),
        "deploymentId": d.id,
        "event": event,
        "sequence": seq,
    })
}

/// A one-line summary for chat formats.
fn summary(payload: &Value, event: Event) -> String {
    let stack = format!(
        "{}/{}/{}",
        payload["organization"]["name"].as_str().unwrap_or_default(),
        payload["projectName"].as_str().unwrap_or_default(),
        payload["stackName"].as_str().unwrap_or_default()
    );
    let url = payload["deploymentUrl"]
        .as_str()
        .or(payload["referenceUrl"].as_str())
        .unwrap_or_default();
    let name = event.as_str();
    let what = match name.strip_prefix("deployment_") {
        Some(outcome) => format!(
            "deployment #{} ({}) {}",
            payload["version"],
            payload["operation"].as_str().unwrap_or_default(),
            outcome.replace('_', " "),
        ),
        None => name.replace('_', " "),
    };
    format!("{stack}: {what} <{url}>")
}

/// The body a hook of `format` receives.
pub fn format_body(format: Format, payload: &Value, event: Event) -> Value {
    match format {
        // A pulumi_deployments hook's message is the event itself, for its sender.
        Format::Raw | Format::PulumiDeployments => payload.clone(),
        Format::Slack => json!({ "text": summary(payload, event) }),
        Format::MsTeams => {
            let color = if event.as_str().ends_with("failed") {
                "d73a49"
            } else {
                "2ea44f"
            };
            json!({
                "@type": "MessageCard",
                "@context": "https://schema.org/extensions",
                "summary": summary(payload, event),
                "themeColor": color,
                "title": event.as_str().replace('_', " "),
                "text": summary(payload, event),
            })
        }
    }
}

/// A stack's events in order: by deployment version (assigned in creation order), then by
/// lifecycle step. Derived from the event itself, so it holds however emissions interleave
/// (a run's `started` can be emitted before the request that queued it has emitted `queued`).
pub fn sequence(version: i64, event: Event) -> i64 {
    let step = match event {
        Event::DeploymentQueued => 1,
        Event::DeploymentApprovalRequired => 2,
        Event::DeploymentApproved | Event::DeploymentRejected => 3,
        Event::DeploymentStarted => 4,
        Event::DeploymentSucceeded | Event::DeploymentFailed => 5,
        Event::DriftDetected => 6,
        Event::DriftDetectionSucceeded | Event::DriftDetectionFailed => 7,
        Event::DriftRemediationSucceeded | Event::DriftRemediationFailed => 8,
    };
    // Sixteen steps per version (there were eight before approvals): sequences still only grow.
    version * 16 + step
}

/// Hook messages for `event` of deployment `version` on `stack`, with the payload built for
/// its sequence number. Nothing is built when no hook wants the event.
async fn hook_messages(
    deps: &Deps,
    d: &Deployment,
    event: Event,
    payload: impl FnOnce(i64) -> Value,
) -> crate::error::Result<Vec<OutboxMessage>> {
    let (stack, version) = (&d.stack, d.version);
    let wanting: Vec<(HookScope, Hook)> = deps
        .hooks
        .hooks_for_stack(stack)
        .await?
        .into_iter()
        .filter(|(_, h)| h.wants(event))
        // Dependent stacks follow their upstream's updates, not its previews or refreshes.
        .filter(|(_, h)| h.format != Format::PulumiDeployments || d.operation == Operation::Update)
        .collect();
    if wanting.is_empty() {
        return Ok(vec![]);
    }
    let payload = payload(sequence(version, event));
    let now = OffsetDateTime::now_utc();
    let messages = wanting
        .iter()
        .map(|(scope, hook)| OutboxMessage {
            id: uuid::Uuid::new_v4().to_string(),
            org: stack.org.clone(),
            target: hook_target(scope, &hook.name),
            kind: match hook.format {
                Format::PulumiDeployments => PULUMI_DEPLOYMENTS_KIND.to_string(),
                _ => event.kind().to_string(),
            },
            event: event.as_str().to_string(),
            body: format_body(hook.format, &payload, event).to_string(),
            created: now,
        })
        .collect();
    Ok(messages)
}

/// The outbox kind of a `pulumi_deployments` hook's message: a deployment to start.
pub const PULUMI_DEPLOYMENTS_KIND: &str = "pulumi_deployments";

pub fn hook_target(scope: &HookScope, name: &str) -> String {
    format!("hook:{}/{name}", scope.key())
}

/// The deployment status a deployment event reports.
fn event_status(event: Event) -> JobStatus {
    match event {
        Event::DeploymentQueued | Event::DeploymentApprovalRequired | Event::DeploymentApproved => {
            JobStatus::NotStarted
        }
        Event::DeploymentRejected => JobStatus::Skipped,
        Event::DeploymentStarted => JobStatus::Running,
        Event::DeploymentSucceeded => JobStatus::Succeeded,
        _ => JobStatus::Failed,
    }
}

/// Queues `event`'s messages: one per hook that wants it, with `payload(sequence)`, and (for
/// deployment events) GitHub's. A failure is logged, never passed on.
async fn emit(
    deps: &Deps,
    d: &Deployment,
    event: Event,
    payload: impl FnOnce(i64) -> Value,
    github: bool,
) {
    let result = async {
        let mut messages = hook_messages(deps, d, event, payload).await?;
        if github {
            messages.extend(github_messages(deps, d, event).await);
        }
        if !messages.is_empty() {
            deps.outbox.enqueue(&messages, true).await?;
        }
        Ok::<_, crate::error::Error>(())
    };
    if let Err(e) = result.await {
        tracing::error!(deployment_id = %d.id, %event, error = %e.chain(), "could not queue notifications");
    }
}

/// Emits a deployment event (`deployment_queued`, `_started`, `_succeeded`, `_failed`).
pub async fn deployment(deps: &Deps, d: &Deployment, event: Event) {
    let status = event_status(event);
    let payload = |seq| deployment_payload(deps, d, status, event, seq);
    emit(deps, d, event, payload, true).await;
}

/// Pulumi's drift payload; `detection` (run id, drift found) for detection events.
fn drift_payload(
    deps: &Deps,
    d: &Deployment,
    event: Event,
    ok: bool,
    detection: Option<(uuid::Uuid, bool)>,
    seq: i64,
) -> Value {
    let mut payload = json!({
        "organization": {"name": d.stack.org, "githubLogin": d.stack.org, "avatarUrl": ""},
        "projectName": d.stack.project,
        "stackName": d.stack.stack,
        "status": if ok { "succeeded" } else { "failed" },
        "resourceChanges": {},
        "referenceUrl": deps.console_url(&d.stack, d.version),
        "event": event,
        "sequence": seq,
    });
    if let Some((run_id, drift)) = detection {
        payload["driftDetected"] = json!(drift);
        payload["driftRunId"] = json!(run_id);
    }
    payload
}

/// Emits `drift_remediation_succeeded` or `_failed` for a finished `remediate-drift`.
pub async fn drift_remediation(deps: &Deps, d: &Deployment, ok: bool) {
    let event = if ok {
        Event::DriftRemediationSucceeded
    } else {
        Event::DriftRemediationFailed
    };
    let payload = |seq| drift_payload(deps, d, event, ok, None, seq);
    emit(deps, d, event, payload, false).await;
}

/// Emits a drift run's events: `drift_detected` when drift was found, then
/// `drift_detection_succeeded` or `_failed`.
pub async fn drift_detection(
    deps: &Deps,
    d: &Deployment,
    run_id: uuid::Uuid,
    drift: bool,
    ok: bool,
) {
    let finished = if ok {
        Event::DriftDetectionSucceeded
    } else {
        Event::DriftDetectionFailed
    };
    let events = if drift {
        vec![Event::DriftDetected, finished]
    } else {
        vec![finished]
    };
    for event in events {
        let payload = |seq| drift_payload(deps, d, event, ok, Some((run_id, drift)), seq);
        emit(deps, d, event, payload, false).await;
    }
}

/// A commit status for a deployment in `status`.
pub fn github_state(status: JobStatus, op: Operation) -> (&'static str, String) {
    match status {
        JobStatus::NotStarted => ("pending", format!("{op} queued")),
        JobStatus::Accepted | JobStatus::Running => ("pending", format!("{op} running")),
        JobStatus::Succeeded => ("success", format!("{op} succeeded")),
        JobStatus::Failed => ("failure", format!("{op} failed")),
        JobStatus::Skipped => ("error", format!("{op} skipped")),
    }
}

/// The GitHub messages for a deployment GitHub triggered: its commit status at every event,
/// and for a finished preview of a pull request, the comment with the change summary.
async fn github_messages(deps: &Deps, d: &Deployment, event: Event) -> Vec<OutboxMessage> {
    let Some(t) = &d.config.spec().trigger else {
        return vec![];
    };
    let (repo, commit) = (t.repository.as_str(), t.commit.as_str());
    let (state, description) = github_state(event_status(event), d.operation);
    let url = deps.console_url(&d.stack, d.version);
    let now = OffsetDateTime::now_utc();
    let message = |kind: &str, body: Value| OutboxMessage {
        id: uuid::Uuid::new_v4().to_string(),
        org: d.stack.org.clone(),
        target: "github".into(),
        kind: kind.into(),
        event: event.as_str().into(),
        body: body.to_string(),
        created: now,
    };
    let installation = t.installation;
    let mut out = vec![message(
        "github_status",
        json!({
            "repository": repo,
            "commit": commit,
            "installation": installation,
            // The sender re-reads the deployment and reports its state then, so statuses
            // delivered out of order (or retried late) never leave a stale one last.
            "stack": d.stack.to_string(),
            "deploymentId": d.id,
            "status": {
                "state": state,
                "target_url": url,
                "description": description,
                "context": format!("tarmac/{}/{}", d.stack.project, d.stack.stack),
            },
        }),
    )];
    let finished = matches!(event, Event::DeploymentSucceeded | Event::DeploymentFailed);
    if finished
        && d.operation == Operation::Preview
        && let Some(pr) = t.pull_request
    {
        let outcome = if event == Event::DeploymentSucceeded {
            "succeeded"
        } else {
            "failed"
        };
        let changes = change_summary(deps, d).await;
        let body = format!(
            "**Tarmac preview** of `{}` at `{}` {outcome}.\n\n{changes}\n\n[Deployment #{}]({url})",
            d.stack,
            &commit[..commit.len().min(7)],
            d.version
        );
        out.push(message(
            "github_comment",
            json!({
                "repository": repo,
                "pullRequest": pr,
                "installation": installation,
                "marker": format!("<!-- tarmac:{} -->", d.stack),
                "body": body,
            }),
        ));
    }
    out
}

/// The engine's own summary lines from the deployment's log: Terraform's `Plan:` / `No
/// changes.`, Pulumi's resource counts.
async fn change_summary(deps: &Deps, d: &Deployment) -> String {
    let entries = deps
        .logs
        .read_logs(
            d.id,
            LogQuery::Stream {
                after: 0,
                limit: 100_000,
            },
        )
        .await
        .unwrap_or_default();
    let lines: Vec<String> = entries
        .iter()
        .filter_map(|e| e.line.as_deref())
        .map(str::trim)
        .filter(|l| {
            l.starts_with("Plan:")
                || l.starts_with("No changes.")
                || l.starts_with("Changes to Outputs")
                || l.contains(" to create")
                || l.contains(" to update")
                || l.contains(" to delete")
                || l.contains(" unchanged")
        })
        .map(|l| format!("    {l}"))
        .collect();
    if lines.is_empty() {
        "No change summary was found in the log.".into()
    } else {
        lines.join("\n")
    }
}
