//! Creating deployments, the one way every trigger does it: the API, schedules, GitHub, drift
//! remediation. A request is validated and merged over the stack's settings (`prepare`), stored
//! (`create`), then sent to the workers and announced (`queued`).

use serde_json::{Value, json};
use uuid::Uuid;

use crate::deps::Deps;
use crate::domain::approvals::{Approval, ApprovalStatus, Ballot};
use crate::domain::hooks::Event;
use crate::domain::spec::{DeploymentConfig, GitHubTrigger, SourcePolicy, Upstream};
use crate::domain::{Deployment, JobStatus, NewDeployment, Operation, PageRequest, StackRef};
use crate::error::{Error, Result};
use crate::ports::QueueMessage;
use crate::settings::{self, Nulls};

/// A create-deployment request (reference §5.2), and who makes it.
#[derive(Debug, Clone)]
pub(crate) struct CreateRequest<'a> {
    pub stack: &'a StackRef,
    /// `{operation, inheritSettings, ...settings}`.
    pub body: &'a Value,
    /// What started it: `api`, `schedule`, `github`, `drift-remediation`, or a client's own
    /// `X-Pulumi-Deployment-Initiator`.
    pub initiator: &'a str,
    /// The token (or component) it acts for.
    pub requested_by: &'a str,
    /// A fixed id, so that a retried create is a conflict that changes nothing (a GitHub
    /// delivery, say); a new one otherwise.
    pub id: Option<Uuid>,
    pub trigger: Option<GitHubTrigger>,
    pub upstream: Option<Upstream>,
    /// What a body without `inheritSettings` means: true, as Pulumi's current API has it;
    /// false on the `/api/preview` routes, as its first one had it.
    pub inherit_by_default: bool,
}

impl<'a> CreateRequest<'a> {
    pub(crate) fn new(
        stack: &'a StackRef,
        body: &'a Value,
        initiator: &'a str,
        requested_by: &'a str,
    ) -> Self {
        Self {
            stack,
            body,
            initiator,
            requested_by,
            id: None,
            trigger: None,
            upstream: None,
            inherit_by_default: true,
        }
    }
}

/// A create-deployment request in the form a schedule stores: checked (operation, settings'
/// shape), canonical, nulls dropped, and every secret sealed, so nothing is kept or shown in
/// plaintext. Whether the merged settings can run is checked when the schedule fires.
pub(crate) fn sealed_request(deps: &Deps, org: &str, body: &Value) -> Result<Value> {
    let (operation, inherit, rest) = settings::split_create_request(body, true)?;
    let operation = required_operation(operation)?;
    refuse_approvals(&rest)?;
    let mut request =
        settings::strip_nulls(&settings::canonicalize(&rest, &deps.cipher.for_org(org))?);
    request["operation"] = json!(operation);
    request["inheritSettings"] = json!(inherit);
    Ok(request)
}

/// A deployment cannot bring its own approval rule: the stack's applies, whatever the request
/// says, or any writer could lift the gate.
fn refuse_approvals(request: &Value) -> Result<()> {
    if crate::json::member(request, "approvals").is_some_and(|v| !v.is_null()) {
        return Err(Error::invalid(
            "approvals is a stack setting: a deployment request cannot set it",
        ));
    }
    Ok(())
}

fn required_operation(op: Option<String>) -> Result<Operation> {
    op.ok_or_else(|| {
        Error::invalid("operation is required: one of update, preview, refresh, destroy, detect-drift, remediate-drift")
    })?
    .parse()
}

/// Builds the deployment a request asks for, without storing it: the request's settings are
/// merged over `stored` (the stack's settings) unless `inheritSettings` is false, and the
/// result must be a run this server can carry out (a source it may clone, valid options, an
/// agent pool of the stack's org). Every way a deployment is made goes through here.
pub(crate) async fn prepare(
    deps: &Deps,
    req: &CreateRequest<'_>,
    stored: Option<&Value>,
) -> Result<NewDeployment> {
    let new = build(deps, req, stored)?;
    check_pool(
        deps,
        &req.stack.org,
        new.config.spec().agent_pool.as_deref(),
    )
    .await?;
    Ok(new)
}

fn build(deps: &Deps, req: &CreateRequest<'_>, stored: Option<&Value>) -> Result<NewDeployment> {
    let (operation, inherit, rest) =
        settings::split_create_request(req.body, req.inherit_by_default)?;
    let operation = required_operation(operation)?;
    refuse_approvals(&rest)?;
    let request = settings::canonicalize(&rest, &deps.cipher.for_org(&req.stack.org))?;
    let mut merged = if inherit {
        settings::merge(stored.unwrap_or(&json!({})), &request, Nulls::Ignore)
    } else {
        settings::strip_nulls(&request)
    };
    // The stack's approval rule holds for every deployment, inheriting or not.
    if let Some(rule) = stored.map(|s| &s["approvals"]).filter(|r| !r.is_null()) {
        merged["approvals"] = rule.clone();
    }
    settings::check_size(&merged)?;
    let mut config = DeploymentConfig::parse(merged, SourcePolicy::Server(&deps.local_repos))?;
    if let Some(trigger) = &req.trigger {
        config = config.with_trigger(trigger.clone())?;
    }
    if let Some(upstream) = &req.upstream {
        config = config.with_upstream(upstream.clone())?;
    }
    let approval = Approval::needed(
        config.spec().approvals.as_ref(),
        operation,
        time::OffsetDateTime::now_utc(),
    );
    Ok(NewDeployment {
        id: req.id.unwrap_or_else(Uuid::new_v4),
        stack: req.stack.clone(),
        operation,
        config,
        initiator: req.initiator.to_string(),
        requested_by: req.requested_by.to_string(),
        approval,
    })
}

/// Creates a deployment: prepared against the stack's settings, stored as `not-started` (the
/// stack is created if needed), sent to the workers and announced. Nothing is written if the
/// request is refused. `Error::Conflict` if a deployment with the request's fixed id exists.
#[tracing::instrument(skip_all, fields(org = %req.stack.org, project = %req.stack.project, stack = %req.stack.stack))]
pub(crate) async fn create(deps: &Deps, req: &CreateRequest<'_>) -> Result<Deployment> {
    let stored = deps
        .stacks
        .get_settings(req.stack)
        .await?
        .map(|s| s.settings);
    let new = prepare(deps, req, stored.as_ref()).await?;
    let d = deps.deployments.create_deployment(new).await?;
    queued(deps, &d).await;
    Ok(d)
}

/// What follows a deployment's creation, wherever it was stored (`create`, or a schedule's
/// firing, whose store write also advances the schedule): it goes to the queue, where the
/// queue is separate from the store, and `deployment_queued` is announced.
pub(crate) async fn queued(deps: &Deps, d: &Deployment) {
    tracing::info!(deployment_id = %d.id, version = d.version, operation = %d.operation, initiator = %d.initiator, "deployment queued");
    // A pool's deployments wait for its agents, which claim them from the store; one waiting
    // for approval is sent when it is approved.
    if !d.awaiting_approval() {
        send(deps, d, 0).await;
    }
    crate::webhooks::events::deployment(deps, d, Event::DeploymentQueued).await;
    if d.awaiting_approval() {
        tracing::info!(deployment_id = %d.id, "deployment awaits approval");
        crate::webhooks::events::deployment(deps, d, Event::DeploymentApprovalRequired).await;
    }
}

/// Sends a queued deployment to the workers, where the queue is separate from the store and
/// no agent pool serves it. `attempt` tells sends of one deployment apart (the queue drops a
/// repeated one).
async fn send(deps: &Deps, d: &Deployment, attempt: u64) {
    if let Some(queue) = &deps.queue
        && d.config.spec().agent_pool.is_none()
        && let Err(e) = queue
            .send(&QueueMessage::new(&d.stack, d.id), attempt)
            .await
    {
        // The deployment is stored; the scheduler's reconciler sends it again.
        tracing::warn!(deployment_id = %d.id, error = %e.chain(), "could not send to the queue; the reconciler will");
    }
}

/// Records an approver's decision (see `DeploymentStore::decide_approval`) and what follows:
/// approved, the deployment goes to the workers, and so does the rest of its stack's queue,
/// which waited behind it; each outcome is announced.
pub(crate) async fn decide(
    deps: &Deps,
    stack: &StackRef,
    id: Uuid,
    ballot: &Ballot,
) -> Result<Deployment> {
    let d = deps.deployments.decide_approval(stack, id, ballot).await?;
    let status = d.approval.as_ref().map(|a| a.status);
    tracing::info!(deployment_id = %d.id, approver = %ballot.voter.token_name, ?status, "approval decided");
    match status {
        Some(ApprovalStatus::Approved) => {
            crate::webhooks::events::deployment(deps, &d, Event::DeploymentApproved).await;
            resend_stack(deps, stack).await;
        }
        Some(ApprovalStatus::Rejected) => {
            crate::webhooks::events::deployment(deps, &d, Event::DeploymentRejected).await;
            resend_stack(deps, stack).await;
        }
        _ => {}
    }
    Ok(d)
}

/// Where the queue is separate from the store, sends a stack's queued deployments again: those
/// that waited behind an approval, or while the stack was paused, had their messages dropped. Its newest 100 are enough: the
/// reconciler covers the rest, and any failure here.
pub(crate) async fn resend_stack(deps: &Deps, stack: &StackRef) {
    if deps.queue.is_none() {
        return;
    }
    let page = PageRequest {
        page: 1,
        page_size: 100,
        ascending: false,
    };
    match deps.deployments.list_stack_deployments(stack, page).await {
        Ok(recent) => {
            let attempt = time::OffsetDateTime::now_utc().unix_timestamp_nanos() as u64;
            for d in recent.items.iter().rev() {
                if d.status == JobStatus::NotStarted && !d.awaiting_approval() {
                    send(deps, d, attempt).await;
                }
            }
        }
        Err(e) => {
            tracing::warn!(error = %e.chain(), "could not list the stack's queued deployments to re-send")
        }
    }
}

/// Settings that name an agent pool must name one of the org's: a deployment no agent could
/// ever take would wait until the queue's expiry.
pub(crate) async fn check_pool(deps: &Deps, org: &str, pool: Option<&str>) -> Result<()> {
    let Some(id) = pool else {
        return Ok(());
    };
    if deps.pools.get_pool(org, id).await?.is_none() {
        return Err(Error::invalid(format!(
            "agentPoolID '{id}' names no agent pool of organization '{org}'"
        )));
    }
    Ok(())
}
