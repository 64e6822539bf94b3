//! The agent protocol's server side (`/api/agent`, see `crate::agent::protocol`): pool tokens
//! only, and a pool token reaches nothing else. A run's calls act under its lease, which names
//! the pool that claimed it, so an agent can touch only what its pool's agents hold.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::json;
use time::OffsetDateTime;
use uuid::Uuid;

use super::AppState;
use super::extract::{Params, param};
use crate::agent::protocol::*;
use crate::crypto::token_hash;
use crate::domain::pools::{AgentInfo, AgentPool, ClaimQueue};
use crate::domain::{Deployment, Lease, LogLine, StackRef};
use crate::error::{Error, Result};
use crate::oidc::ExchangeRequest;
use crate::runner::{Ended, Output};

/// Agents send their engine state in one body; state files are small but not tiny.
pub(super) const STATE_BODY_LIMIT: usize = 64 * 1024 * 1024;

/// The caller: an agent of this pool.
pub(super) struct AgentCtx {
    pub pool: AgentPool,
}

fn bearer(parts: &Parts) -> Result<String> {
    let value = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            Error::Unauthorized(
                "missing Authorization header; send 'Authorization: token <pool token>'".into(),
            )
        })?;
    value
        .strip_prefix("token ")
        .or_else(|| value.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Error::Unauthorized("invalid Authorization header".into()))
}

impl FromRequestParts<AppState> for AgentCtx {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        let token = bearer(parts)?;
        let pool = state
            .deps
            .pools
            .find_pool_by_token(&token_hash(&token))
            .await?
            .ok_or_else(|| {
                Error::Unauthorized(
                    "invalid or revoked agent pool token (the agent API takes only pool tokens)"
                        .into(),
                )
            })?;
        Ok(Self { pool })
    }
}

/// A call about one run: the pool, the deployment and the lease it holds.
pub(super) struct RunCtx {
    pub pool: AgentPool,
    pub stack: StackRef,
    pub id: Uuid,
    pub lease: Lease,
}

/// An agent's lease owner: it names the pool, so a lease works only with that pool's token.
fn lease_owner(pool: &AgentPool, agent: &str) -> String {
    format!("pool:{}:{agent}:{}", pool.id, Uuid::new_v4().simple())
}

/// The agent id in a lease owner that `lease_owner` made.
fn lease_agent<'a>(pool: &AgentPool, owner: &'a str) -> Option<&'a str> {
    let rest = owner.strip_prefix(&format!("pool:{}:", pool.id))?;
    rest.rsplit_once(':').map(|(agent, _)| agent)
}

impl FromRequestParts<AppState> for RunCtx {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        let AgentCtx { pool } = AgentCtx::from_request_parts(parts, state).await?;
        let Params(p) = Params::from_request_parts(parts, state).await?;
        let stack = StackRef::new(
            &param(&p, "org"),
            &param(&p, "project"),
            &param(&p, "stack"),
        )?;
        let id = Uuid::parse_str(&param(&p, "id"))
            .map_err(|_| Error::not_found("deployment not found"))?;
        if stack.org != pool.org {
            return Err(Error::not_found(format!("deployment '{id}' not found")));
        }
        let owner = parts
            .headers
            .get(LEASE_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !owner.starts_with(&format!("pool:{}:", pool.id)) {
            return Err(Error::Forbidden(format!(
                "send the run's lease in the {LEASE_HEADER} header, as the claim gave it"
            )));
        }
        Ok(Self {
            lease: Lease {
                owner: owner.to_string(),
                ttl: state.deps.agent_lease,
            },
            pool,
            stack,
            id,
        })
    }
}

fn body<T: DeserializeOwned>(bytes: &Bytes) -> Result<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| Error::invalid(format!("malformed request body: {e}")))
}

async fn touch(state: &AppState, pool: &AgentPool, hello: &AgentHello) {
    let agent = AgentInfo {
        id: hello.id.chars().take(100).collect(),
        version: hello.version.chars().take(100).collect(),
        platform: hello.platform.chars().take(100).collect(),
        hostname: hello.hostname.chars().take(255).collect(),
        ip: String::new(),
        pid: hello.pid.chars().take(20).collect(),
        last_seen: OffsetDateTime::now_utc(),
    };
    if let Err(e) = state.deps.pools.touch_agent(pool, &agent).await {
        tracing::warn!(error = %e.chain(), "could not record an agent's visit");
    }
}

/// `POST P/claim`: the pool's oldest deployment that may start, now `running` under a lease
/// for this agent, with its secrets opened; 204 if none came within `waitSeconds`.
#[utoipa::path(
    post,
    path = "/api/agent/claim",
    tag = "agent",
    request_body = super::schema::agent::AgentClaimRequest,
    responses(
        (status = 200, description = "A deployment, now `running` under a lease for this agent", body = super::schema::agent::AgentJob),
        (status = 204, description = "Nothing to run came within `waitSeconds`"),
    ),
    security(("poolToken" = [])),
    extensions(("x-tarmac-extension" = json!(true))),
)]
pub(super) async fn claim(
    State(state): State<AppState>,
    AgentCtx { pool }: AgentCtx,
    bytes: Bytes,
) -> Result<Response> {
    let req: ClaimRequest = body(&bytes)?;
    if req.agent.id.trim().is_empty() {
        return Err(Error::invalid("agent.id is required"));
    }
    touch(&state, &pool, &req.agent).await;
    let deps = &state.deps;
    let deadline =
        tokio::time::Instant::now() + Duration::from_secs(req.wait_seconds.min(MAX_WAIT_SECONDS));
    let lease = Lease {
        owner: lease_owner(&pool, &req.agent.id),
        ttl: deps.agent_lease,
    };
    loop {
        let notified = deps.work_signal.as_ref().map(|n| n.notified());
        tokio::pin!(notified);
        if let Some(n) = notified.as_mut().as_pin_mut() {
            n.enable();
        }
        if let Some(claimed) = deps
            .runs
            .claim_next(&lease, ClaimQueue::Pool(&pool.id))
            .await?
        {
            let d = claimed.deployment;
            deps.runs.mark_running(d.id, &lease).await?;
            // Every way a deployment is made checks that its pool is its org's; should one
            // slip through anyway, another org's agent gets nothing of it.
            if d.stack.org != pool.org {
                tracing::error!(deployment_id = %d.id, pool = %pool.id, "a deployment named another org's agent pool");
                refuse(deps, &d, &lease).await;
                continue;
            }
            crate::runner::started(deps, &d).await;
            tracing::info!(deployment_id = %d.id, pool = %pool.id, agent = %req.agent.id, "an agent claimed a deployment");
            let opened = crate::runner::open(deps, &d);
            let job = Job {
                id: d.id,
                org: d.stack.org.clone(),
                project: d.stack.project.clone(),
                stack: d.stack.stack.clone(),
                version: d.version,
                operation: d.operation,
                settings: d.config.settings().clone(),
                error: opened.as_ref().err().cloned(),
                opened: opened.ok(),
                lease: lease.owner.clone(),
                lease_millis: lease.ttl.as_millis() as u64,
            };
            return Ok(Json(job).into_response());
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
        // Woken by new work where this process sees it; otherwise (AWS) a look each second.
        let tick = tokio::time::sleep_until(deadline.min(now + Duration::from_secs(1)));
        match notified.as_mut().as_pin_mut() {
            Some(n) => {
                tokio::select! {
                    _ = n => {}
                    _ = tick => {}
                }
            }
            None => tick.await,
        }
    }
}

/// Fails a claimed deployment that its agent may not run, saying why in its log.
async fn refuse(deps: &crate::deps::Deps, d: &Deployment, lease: &Lease) {
    let line = LogLine {
        step: 0,
        timestamp: OffsetDateTime::now_utc(),
        line: "Failed: the deployment's agentPoolID names an agent pool of another organization."
            .into(),
        event: None,
    };
    let _ = deps.runs.append_logs(d.id, lease, &[line]).await;
    let ended = Ended {
        status: crate::domain::JobStatus::Failed,
        drift: None,
        last_step: 0,
    };
    crate::runner::conclude(deps, d, lease, ended).await;
}

/// The deployment a run's calls are about, as its lease holds it.
async fn held(state: &AppState, ctx: &RunCtx) -> Result<Deployment> {
    state
        .deps
        .runs
        .held_deployment(&ctx.stack, ctx.id, &ctx.lease.owner)
        .await?
        .ok_or_else(|| {
            Error::conflict("this agent no longer holds the deployment (its lease was lost)")
        })
}

/// `POST R/heartbeat`.
#[utoipa::path(
    post,
    path = "/heartbeat",
    tag = "agent",
    params(("Tarmac-Lease" = String, Header, description = "The run's lease, as the claim gave it")),
    responses(
        (status = 200, description = "The lease is extended", body = super::schema::agent::AgentHeartbeat),
        (status = 403, description = "No `Tarmac-Lease` header, or a lease of another pool", body = super::openapi::ErrorBody),
        (status = 409, description = "This agent no longer holds the deployment (its lease was lost or it has ended)", body = super::openapi::ErrorBody),
    ),
    security(("poolToken" = [])),
    extensions(("x-tarmac-extension" = json!(true))),
)]
pub(super) async fn heartbeat(
    State(state): State<AppState>,
    ctx: RunCtx,
) -> Result<Json<HeartbeatReply>> {
    let hb = state.deps.runs.heartbeat(ctx.id, &ctx.lease).await?;
    // A busy agent claims nothing, but its runs' heartbeats say it is alive.
    if let Some(agent) = lease_agent(&ctx.pool, &ctx.lease.owner) {
        let seen = state
            .deps
            .pools
            .agent_seen(&ctx.pool, agent, OffsetDateTime::now_utc())
            .await;
        if let Err(e) = seen {
            tracing::warn!(error = %e.chain(), "could not record an agent's heartbeat");
        }
    }
    Ok(Json(HeartbeatReply {
        cancel_requested: hb.cancel_requested,
    }))
}

/// `POST R/steps`.
#[utoipa::path(
    post,
    path = "/steps",
    tag = "agent",
    params(("Tarmac-Lease" = String, Header, description = "The run's lease, as the claim gave it")),
    request_body = super::schema::agent::AgentStepStart,
    responses(
        (status = 200, description = "The step, started (`running`)", body = super::schema::agent::AgentStepStarted),
        (status = 403, description = "No `Tarmac-Lease` header, or a lease of another pool", body = super::openapi::ErrorBody),
        (status = 409, description = "This agent no longer holds the deployment (its lease was lost or it has ended)", body = super::openapi::ErrorBody),
    ),
    security(("poolToken" = [])),
    extensions(("x-tarmac-extension" = json!(true))),
)]
pub(super) async fn step_start(
    State(state): State<AppState>,
    ctx: RunCtx,
    bytes: Bytes,
) -> Result<Json<serde_json::Value>> {
    let req: StepStart = body(&bytes)?;
    let step = state
        .deps
        .runs
        .start_step(ctx.id, &ctx.lease, &req.name)
        .await?;
    Ok(Json(json!({ "step": step })))
}

/// `POST R/steps/{step}`.
#[utoipa::path(
    post,
    path = "/steps/{step}",
    tag = "agent",
    params(("step" = u64, Path, description = "The step's index, as `POST R/steps` gave it"), ("Tarmac-Lease" = String, Header, description = "The run's lease, as the claim gave it")),
    request_body = super::schema::agent::AgentStepEnd,
    responses(
        (status = 204, description = "The step's status is set"),
        (status = 403, description = "No `Tarmac-Lease` header, or a lease of another pool", body = super::openapi::ErrorBody),
        (status = 409, description = "This agent no longer holds the deployment (its lease was lost or it has ended)", body = super::openapi::ErrorBody),
    ),
    security(("poolToken" = [])),
    extensions(("x-tarmac-extension" = json!(true))),
)]
pub(super) async fn step_end(
    State(state): State<AppState>,
    ctx: RunCtx,
    Params(p): Params,
    bytes: Bytes,
) -> Result<StatusCode> {
    let req: StepEnd = body(&bytes)?;
    let step: usize = param(&p, "step")
        .parse()
        .map_err(|_| Error::invalid("the step must be a number"))?;
    state
        .deps
        .runs
        .finish_step(ctx.id, &ctx.lease, step, req.status)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST R/logs`.
#[utoipa::path(
    post,
    path = "/logs",
    tag = "agent",
    params(("Tarmac-Lease" = String, Header, description = "The run's lease, as the claim gave it")),
    request_body = super::schema::agent::AgentLogsRequest,
    responses(
        (status = 204, description = "The lines are appended"),
        (status = 403, description = "No `Tarmac-Lease` header, or a lease of another pool", body = super::openapi::ErrorBody),
        (status = 409, description = "This agent no longer holds the deployment (its lease was lost or it has ended)", body = super::openapi::ErrorBody),
    ),
    security(("poolToken" = [])),
    extensions(("x-tarmac-extension" = json!(true))),
)]
pub(super) async fn logs(
    State(state): State<AppState>,
    ctx: RunCtx,
    bytes: Bytes,
) -> Result<StatusCode> {
    let req: Logs = body(&bytes)?;
    let lines: Vec<LogLine> = req
        .lines
        .into_iter()
        .map(|l| LogLine {
            step: l.step,
            timestamp: crate::domain::time_fmt::from_micros(l.ts),
            line: l.line,
            event: l.event,
        })
        .collect();
    state
        .deps
        .runs
        .append_logs(ctx.id, &ctx.lease, &lines)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST R/update`.
#[utoipa::path(
    post,
    path = "/update",
    tag = "agent",
    params(("Tarmac-Lease" = String, Header, description = "The run's lease, as the claim gave it")),
    request_body = super::schema::agent::AgentUpdateStart,
    responses(
        (status = 200, description = "The update is started", body = super::schema::agent::AgentUpdateStarted),
        (status = 403, description = "No `Tarmac-Lease` header, or a lease of another pool", body = super::openapi::ErrorBody),
        (status = 409, description = "The lease was lost, or the deployment has started its update already", body = super::openapi::ErrorBody),
    ),
    security(("poolToken" = [])),
    extensions(("x-tarmac-extension" = json!(true))),
)]
pub(super) async fn update_start(
    State(state): State<AppState>,
    ctx: RunCtx,
    bytes: Bytes,
) -> Result<Json<serde_json::Value>> {
    let req: UpdateStart = body(&bytes)?;
    let version = state
        .deps
        .runs
        .start_update(ctx.id, &ctx.lease, req.kind)
        .await?;
    Ok(Json(json!({ "version": version })))
}

/// `POST R/update/finish`.
#[utoipa::path(
    post,
    path = "/update/finish",
    tag = "agent",
    params(("Tarmac-Lease" = String, Header, description = "The run's lease, as the claim gave it")),
    request_body = super::schema::agent::AgentUpdateOutcome,
    responses(
        (status = 204, description = "The update's end is recorded (404 if it was never started)"),
        (status = 403, description = "No `Tarmac-Lease` header, or a lease of another pool", body = super::openapi::ErrorBody),
        (status = 409, description = "This agent no longer holds the deployment (its lease was lost or it has ended)", body = super::openapi::ErrorBody),
    ),
    security(("poolToken" = [])),
    extensions(("x-tarmac-extension" = json!(true))),
)]
pub(super) async fn update_finish(
    State(state): State<AppState>,
    ctx: RunCtx,
    bytes: Bytes,
) -> Result<StatusCode> {
    let outcome: crate::domain::updates::UpdateOutcome = body(&bytes)?;
    state
        .deps
        .runs
        .finish_update(ctx.id, &ctx.lease, &outcome)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST R/outputs`: the secret ones are sealed here, with the org's key.
#[utoipa::path(
    post,
    path = "/outputs",
    tag = "agent",
    params(("Tarmac-Lease" = String, Header, description = "The run's lease, as the claim gave it")),
    request_body = super::schema::agent::AgentOutputsRequest,
    responses(
        (status = 204, description = "The stack's outputs are recorded, the secret ones sealed"),
        (status = 403, description = "No `Tarmac-Lease` header, or a lease of another pool", body = super::openapi::ErrorBody),
        (status = 409, description = "This agent no longer holds the deployment (its lease was lost or it has ended)", body = super::openapi::ErrorBody),
    ),
    security(("poolToken" = [])),
    extensions(("x-tarmac-extension" = json!(true))),
)]
pub(super) async fn outputs(
    State(state): State<AppState>,
    ctx: RunCtx,
    bytes: Bytes,
) -> Result<StatusCode> {
    #[derive(serde::Deserialize)]
    struct Req {
        outputs: Vec<Output>,
    }
    let req: Req = body(&bytes)?;
    let stored = crate::runner::seal_outputs(&state.deps, &ctx.stack.org, &req.outputs);
    state
        .deps
        .runs
        .record_outputs(ctx.id, &ctx.lease, &stored)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET R/state`.
#[utoipa::path(
    get,
    path = "/state",
    tag = "agent",
    params(("Tarmac-Lease" = String, Header, description = "The run's lease, as the claim gave it")),
    responses(
        (status = 200, description = "The stack's state files and their manifest", body = super::schema::agent::AgentStateFiles),
        (status = 403, description = "No `Tarmac-Lease` header, or a lease of another pool", body = super::openapi::ErrorBody),
        (status = 409, description = "This agent no longer holds the deployment (its lease was lost or it has ended)", body = super::openapi::ErrorBody),
    ),
    security(("poolToken" = [])),
    extensions(("x-tarmac-extension" = json!(true))),
)]
pub(super) async fn state_get(
    State(state): State<AppState>,
    ctx: RunCtx,
) -> Result<Json<StateFiles>> {
    held(&state, &ctx).await?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("state");
    let manifest = state.deps.agent_state.restore(&ctx.stack, &dir).await?;
    let files = tokio::task::spawn_blocking(move || read_state_files(&dir))
        .await
        .map_err(|e| Error::internal(format!("reading state: {e}")))??;
    Ok(Json(StateFiles {
        files,
        manifest: (&manifest).into(),
    }))
}

/// `POST R/state`: makes the stored state the body's files, each write conditional on the
/// manifest the run started from (409 if another run changed the state meanwhile, and the
/// stack is paused so that no run starts from the older state).
#[utoipa::path(
    post,
    path = "/state",
    tag = "agent",
    params(("Tarmac-Lease" = String, Header, description = "The run's lease, as the claim gave it")),
    request_body = super::schema::agent::AgentStateSave,
    responses(
        (status = 200, description = "The stored state is now the body's files", body = super::schema::agent::AgentStateSaved),
        (status = 403, description = "No `Tarmac-Lease` header, or a lease of another pool", body = super::openapi::ErrorBody),
        (status = 409, description = "The lease was lost, or another run changed the state since this one read it (the stack is then paused)", body = super::openapi::ErrorBody),
    ),
    security(("poolToken" = [])),
    extensions(("x-tarmac-extension" = json!(true))),
)]
pub(super) async fn state_save(
    State(state): State<AppState>,
    ctx: RunCtx,
    bytes: Bytes,
) -> Result<Json<StateSaved>> {
    held(&state, &ctx).await?;
    let req: StateSave = body(&bytes)?;
    if let Some(bad) = req
        .manifest
        .0
        .keys()
        .find(|k| crate::runner::files::relative(k).is_none())
    {
        return Err(Error::invalid(format!(
            "'{bad}' is not a plain relative path"
        )));
    }
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("state");
    let files = req.files;
    let written_dir = dir.clone();
    tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&written_dir)?;
        write_state_files(&written_dir, &files).map_err(|e| match e {
            // The agent's files do not make a tree (`a` and `a/b`, say): its mistake.
            Error::Io(io) => Error::invalid(format!("the state files cannot be written: {io}")),
            e => e,
        })
    })
    .await
    .map_err(|e| Error::internal(format!("writing state: {e}")))??;
    let mut saved = req.manifest.into();
    let result = state
        .deps
        .agent_state
        .save(&ctx.stack, &dir, &mut saved)
        .await;
    let (written, removed) = match result {
        Ok(counts) => counts,
        // A retried save whose first attempt landed (its answer was lost) finds the state
        // already what it sends: that is success, not another run's write.
        Err(Error::Conflict(_)) if already_saved(&state, &ctx.stack, &dir).await => {
            let check = tmp.path().join("stored");
            saved = state.deps.agent_state.restore(&ctx.stack, &check).await?;
            (0, 0)
        }
        Err(e @ Error::Conflict(_)) => {
            // No run may start from the older state until someone has looked.
            if let Err(p) = state.deps.stacks.set_stack_paused(&ctx.stack, true).await {
                tracing::error!(error = %p.chain(), "could not pause a stack whose state was not saved");
            }
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    Ok(Json(StateSaved {
        manifest: (&saved).into(),
        written,
        removed,
    }))
}

/// Whether the stored state is exactly the files in `dir` (same paths, same contents).
async fn already_saved(state: &AppState, stack: &StackRef, dir: &std::path::Path) -> bool {
    let Ok(tmp) = tempfile::tempdir() else {
        return false;
    };
    let stored = tmp.path().join("stored");
    let Ok(manifest) = state.deps.agent_state.restore(stack, &stored).await else {
        return false;
    };
    let dir = dir.to_path_buf();
    let sent = tokio::task::spawn_blocking(move || {
        crate::runner::files::list_state_files(&dir)?
            .into_iter()
            .map(|rel| {
                let sha = crate::crypto::sha256_hex(&crate::runner::files::read(&dir.join(&rel))?);
                Ok((rel, sha))
            })
            .collect::<Result<std::collections::BTreeMap<String, String>>>()
    })
    .await;
    let Ok(Ok(sent)) = sent else {
        return false;
    };
    let stored: std::collections::BTreeMap<String, String> = manifest
        .into_iter()
        .map(|(rel, f)| (rel, f.sha256))
        .collect();
    stored == sent
}

/// `POST R/credentials`: the run's OIDC token and the cloud credentials it was exchanged for.
#[utoipa::path(
    post,
    path = "/credentials",
    tag = "agent",
    params(("Tarmac-Lease" = String, Header, description = "The run's lease, as the claim gave it")),
    responses(
        (status = 200, description = "The run's OIDC token and the cloud credentials it was exchanged for", body = super::schema::agent::AgentRunCredentials),
        (status = 403, description = "No `Tarmac-Lease` header, a lease of another pool, or the deployment is not running under this lease", body = super::openapi::ErrorBody),
    ),
    security(("poolToken" = [])),
    extensions(("x-tarmac-extension" = json!(true))),
)]
pub(super) async fn credentials(State(state): State<AppState>, ctx: RunCtx) -> Result<Response> {
    let request = ExchangeRequest {
        org: ctx.stack.org.clone(),
        project: ctx.stack.project.clone(),
        stack: ctx.stack.stack.clone(),
        deployment_id: ctx.id,
        lease: ctx.lease.owner.clone(),
    };
    let creds = state.deps.credentials.exchange(&request).await?;
    Ok(Json(creds).into_response())
}

/// `POST R/complete`: the run is over; the server records its end as for any run.
#[utoipa::path(
    post,
    path = "/complete",
    tag = "agent",
    params(("Tarmac-Lease" = String, Header, description = "The run's lease, as the claim gave it")),
    request_body = super::schema::agent::AgentRunEnded,
    responses(
        (status = 204, description = "The run's end is recorded"),
        (status = 403, description = "No `Tarmac-Lease` header, or a lease of another pool", body = super::openapi::ErrorBody),
        (status = 409, description = "The lease was lost, or the run's end could not be recorded", body = super::openapi::ErrorBody),
    ),
    security(("poolToken" = [])),
    extensions(("x-tarmac-extension" = json!(true))),
)]
pub(super) async fn complete(
    State(state): State<AppState>,
    ctx: RunCtx,
    bytes: Bytes,
) -> Result<StatusCode> {
    let ended: Ended = body(&bytes)?;
    if !reportable(ended.status) {
        return Err(Error::invalid("status must be succeeded or failed"));
    }
    let d = held(&state, &ctx).await?;
    let status = crate::runner::conclude(&state.deps, &d, &ctx.lease, ended).await;
    if status != ended.status {
        return Err(Error::conflict(
            "the deployment's end could not be recorded",
        ));
    }
    Ok(StatusCode::NO_CONTENT)
}
