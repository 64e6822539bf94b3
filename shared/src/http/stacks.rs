//! Stacks, pause and resume, metadata, and the caller's identity.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::AppState;
use super::extract::{Auth, JsonBody, OrgCtx, Params, StackCtx, authorize, param};
use super::wire;
use crate::domain::{JobStatus, Role, StackRef};
use crate::error::{Error, Result};
use crate::ports::QueueMessage;

pub(super) async fn current_user(Auth(p): Auth) -> Json<Value> {
    Json(json!({
        "name": p.token_name,
        "githubLogin": p.token_name,
        "avatarUrl": "",
        "organizations": [{ "githubLogin": p.org, "name": p.org }],
    }))
}

/// `POST /api/stacks/{org}/{project}` with `{"stackName"}`: 200, or 409 if it exists.
pub(super) async fn create_stack(
    State(state): State<AppState>,
    Auth(p): Auth,
    Params(params): Params,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>> {
    let org = param(&params, "org");
    let project = param(&params, "project");
    authorize(&p, &org, Role::Write, || {
        Error::not_found(format!("organization '{org}' not found"))
    })?;
    let name = crate::json::member(&body, "stackName")
        .and_then(|v| v.as_str())
        .ok_or_else(|| Error::invalid("stackName is required"))?;
    let stack = StackRef::new(&org, &project, name)?;
    state.deps.stacks.create_stack(&stack).await?;
    Ok(Json(
        json!({ "orgName": stack.org, "projectName": stack.project, "stackName": stack.stack }),
    ))
}

/// Deletes the stack, its settings, deployments, logs and engine state.
pub(super) async fn delete_stack(
    State(state): State<AppState>,
    ctx: StackCtx,
) -> Result<StatusCode> {
    state.deps.stacks.delete_stack(&ctx.stack).await?;
    state.deps.forget_state(&ctx.stack).await;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn export(State(state): State<AppState>, ctx: StackCtx) -> Result<Json<Value>> {
    let outputs = state
        .deps
        .stacks
        .get_outputs(&ctx.stack)
        .await?
        .ok_or_else(|| Error::not_found(format!("stack '{}' not found", ctx.stack)))?;
    Ok(Json(wire::export(&ctx.stack, &outputs)))
}

pub(super) async fn pause_stack(
    State(state): State<AppState>,
    ctx: StackCtx,
) -> Result<StatusCode> {
    set_stack_paused(&state, &ctx.stack, true).await
}

pub(super) async fn resume_stack(
    State(state): State<AppState>,
    ctx: StackCtx,
) -> Result<StatusCode> {
    set_stack_paused(&state, &ctx.stack, false).await?;
    let stack = ctx.stack.to_string();
    resend_queued(&state, |m| {
        format!("{}/{}/{}", m.org, m.project, m.stack) == stack
    })
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// Where the queue is separate from the store (AWS), a paused stack's deployments had their
/// messages dropped; resuming sends them again now rather than at the reconciler's next look.
/// Best effort: the reconciler covers a failure here.
async fn resend_queued(state: &AppState, select: impl Fn(&QueueMessage) -> bool) {
    let Some(queue) = &state.deps.queue else {
        return;
    };
    let now = time::OffsetDateTime::now_utc();
    let queued = match state.deps.runs.queued_before(now).await {
        Ok(q) => q,
        Err(e) => {
            return tracing::warn!(error = %e.chain(), "could not list queued deployments to re-send");
        }
    };
    let attempt = now.unix_timestamp_nanos() as u64;
    for m in queued.iter().filter(|m| select(m)) {
        if let Err(e) = queue.send(m, attempt).await {
            tracing::warn!(deployment_id = %m.deployment_id, error = %e.chain(), "could not re-send on resume");
        }
    }
}

async fn set_stack_paused(state: &AppState, stack: &StackRef, paused: bool) -> Result<StatusCode> {
    state
        .deps
        .stacks
        .set_stack_paused(stack, paused)
        .await
        .map_err(|e| match e {
            Error::NotFound(_) => Error::not_found(format!("stack '{stack}' not found")),
            other => other,
        })?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn stack_metadata(
    State(state): State<AppState>,
    ctx: StackCtx,
) -> Result<Json<Value>> {
    let stack_paused = state
        .deps
        .stacks
        .stack_paused(&ctx.stack)
        .await?
        .ok_or_else(|| Error::not_found(format!("stack '{}' not found", ctx.stack)))?;
    let org_paused = state.deps.orgs.org_paused(&ctx.stack.org).await?;
    Ok(Json(json!({
        "paused": stack_paused || org_paused,
        "stackPaused": stack_paused,
        "organizationPaused": org_paused,
        "hasSchedules": super::schedules::has_schedules(&state, &ctx.stack).await?,
        "drift": super::schedules::drift_status_of(&state, &ctx.stack).await?,
    })))
}

/// There is no dependency cache to clear; accepted for compatibility.
pub(super) async fn clear_cache(ctx: StackCtx) -> StatusCode {
    let _ = ctx;
    StatusCode::NO_CONTENT
}

pub(super) async fn pause_org(State(state): State<AppState>, ctx: OrgCtx) -> Result<StatusCode> {
    ctx.require_admin()?;
    state.deps.orgs.set_org_paused(&ctx.org, true).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn resume_org(State(state): State<AppState>, ctx: OrgCtx) -> Result<StatusCode> {
    ctx.require_admin()?;
    state.deps.orgs.set_org_paused(&ctx.org, false).await?;
    resend_queued(&state, |m| m.org == ctx.org).await;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn org_metadata(
    State(state): State<AppState>,
    ctx: OrgCtx,
) -> Result<Json<Value>> {
    let s = state.deps.orgs.org_state(&ctx.org).await?;
    let n = |status: JobStatus| s.counts.0.get(&status).copied().unwrap_or(0);
    let total: u64 = s.counts.0.values().sum();
    Ok(Json(json!({
        "paused": s.paused,
        "pausedStacks": s.paused_stacks,
        "concurrency": state.deps.concurrency,
        "deploymentCounts": {
            "notStarted": n(JobStatus::NotStarted),
            "accepted": n(JobStatus::Accepted),
            "running": n(JobStatus::Running),
            "failed": n(JobStatus::Failed),
            "succeeded": n(JobStatus::Succeeded),
            "skipped": n(JobStatus::Skipped),
            "total": total,
        },
    })))
}
