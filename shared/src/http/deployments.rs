//! `S/deployments...` and `/api/orgs/{org}/deployments`: create, read, list, logs, cancel.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::AppState;
use super::extract::{JsonBody, OrgCtx, Params, Query, StackCtx, param};
use super::wire;
use crate::domain::approvals::{Ballot, Decision, Voter, validate_comment};
use crate::domain::{CancelOutcome, Deployment, PageRequest, StackRef};
use crate::error::{Error, Result};
use crate::ports::LogQuery;

/// Queues a deployment (see `service::create`).
#[utoipa::path(
    post,
    path = "/deployments",
    tag = "deployments",
    params(("x-pulumi-deployment-initiator" = Option<String>, Header, description = "Who started it (up to 64 characters; default `api`)")),
    request_body = super::schema::deployments::CreateDeploymentRequest,
    responses(
        (status = 202, description = "Queued", body = super::schema::deployments::CreateDeploymentResponse),
        (status = 409, description = "The stack is being deleted, or the idempotency key was used for another request", body = super::openapi::ErrorBody),
    ),
    security(("token" = ["write"])),
)]
pub(super) async fn create(
    State(state): State<AppState>,
    ctx: StackCtx,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<Value>)> {
    create_with(&state, &ctx, &headers, &body, true).await
}

/// Creates a deployment; `inherit_by_default` is what a body without `inheritSettings` means
/// (true on the current route, false on the `/api/preview` one, as Pulumi's v1 had it).
pub(super) async fn create_with(
    state: &AppState,
    ctx: &StackCtx,
    headers: &HeaderMap,
    body: &Value,
    inherit_by_default: bool,
) -> Result<(StatusCode, Json<Value>)> {
    let initiator = headers
        .get("x-pulumi-deployment-initiator")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 64)
        .unwrap_or("api");
    let request = crate::service::CreateRequest {
        inherit_by_default,
        ..crate::service::CreateRequest::new(&ctx.stack, body, initiator, &ctx.principal.token_name)
    };
    let d = crate::service::create(&state.deps, &request).await?;
    let console = state.deps.console_url(&ctx.stack, d.version);
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "id": d.id, "consoleUrl": console, "version": d.version })),
    ))
}

pub(super) fn parse_id(raw: &str) -> Result<Uuid> {
    Uuid::parse_str(raw)
        .map_err(|_| Error::invalid(format!("'{raw}' is not a deployment id (a UUID)")))
}

pub(super) async fn find(state: &AppState, stack: &StackRef, id: Uuid) -> Result<Deployment> {
    state
        .deps
        .deployments
        .get_deployment(stack, id)
        .await?
        .ok_or_else(|| Error::not_found(format!("deployment '{id}' not found in stack '{stack}'")))
}

#[utoipa::path(
    get,
    path = "/deployments/{id}",
    tag = "deployments",
    params(("id" = uuid::Uuid, Path, description = "The deployment's id")),
    responses((status = 200, description = "The deployment", body = super::schema::deployments::Deployment)),
    security(("token" = ["read"])),
)]
pub(super) async fn get_by_id(
    State(state): State<AppState>,
    ctx: StackCtx,
    Params(p): Params,
) -> Result<Json<Value>> {
    let id = parse_id(&param(&p, "id"))?;
    let d = find(&state, &ctx.stack, id).await?;
    Ok(Json(with_queue(&state, &d, wire::deployment(&d)).await?))
}

/// Adds Tarmac's `queue` to a queued deployment's wire form:
/// `{position, ahead, waitingFor}`, where `ahead` counts the deployments of its queue (the
/// workers' or its agent pool's) queued before it, and `waitingFor` is the first of
/// `approval`, `paused`, `stack`, `org-limit` and `worker` that holds it.
pub(super) async fn with_queue(state: &AppState, d: &Deployment, mut v: Value) -> Result<Value> {
    if d.status == crate::domain::JobStatus::NotStarted {
        let q = state.deps.runs.queue_state(d).await?;
        v["queue"] = json!({
            "position": q.ahead + 1,
            "ahead": q.ahead,
            "waitingFor": q.waiting_for(d),
        });
    }
    Ok(v)
}

#[utoipa::path(
    get,
    path = "/deployments/version/{version}",
    tag = "deployments",
    params(("version" = i64, Path, minimum = 1, description = "The deployment's version in its stack")),
    responses((status = 200, description = "The deployment", body = super::schema::deployments::Deployment)),
    security(("token" = ["read"])),
)]
pub(super) async fn get_by_version(
    State(state): State<AppState>,
    ctx: StackCtx,
    Params(p): Params,
) -> Result<Json<Value>> {
    let raw = param(&p, "version");
    let version = raw.parse::<i64>().ok().filter(|v| *v >= 1).ok_or_else(|| {
        Error::invalid(format!(
            "'{raw}' is not a deployment version: versions are integers from 1"
        ))
    })?;
    let d = state
        .deps
        .deployments
        .get_deployment_by_version(&ctx.stack, version)
        .await?
        .ok_or_else(|| {
            Error::not_found(format!(
                "stack '{}' has no deployment version {version}",
                ctx.stack
            ))
        })?;
    Ok(Json(with_queue(&state, &d, wire::deployment(&d)).await?))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    /// From 1.
    #[param(minimum = 1)]
    page: Option<i64>,
    /// 1 to 100 (default 10).
    #[param(minimum = 1, maximum = 100)]
    page_size: Option<i64>,
    /// Oldest first.
    asc: Option<bool>,
    /// Accepted for Pulumi's clients; the order is by version.
    #[allow(dead_code)]
    sort: Option<String>,
}

impl ListQuery {
    /// The page asked for: `page` from 1, `pageSize` 1 to 100 (default 10), newest first
    /// unless `asc`.
    pub(super) fn page(&self) -> Result<PageRequest> {
        Ok(PageRequest {
            ascending: self.asc.unwrap_or(false),
            ..page_request(self.page, self.page_size)?
        })
    }
}

/// `page` from 1, `pageSize` 1 to 100 (default 10), newest first.
pub(super) fn page_request(page: Option<i64>, page_size: Option<i64>) -> Result<PageRequest> {
    let page = page.unwrap_or(1);
    if page < 1 {
        return Err(Error::invalid(format!(
            "page must be 1 or more, not {page}"
        )));
    }
    let size = page_size.unwrap_or(10);
    if !(1..=100).contains(&size) {
        return Err(Error::invalid(format!(
            "pageSize must be between 1 and 100, not {size}"
        )));
    }
    Ok(PageRequest {
        page: page.min(u32::MAX as i64) as u32,
        page_size: size as u32,
        ascending: false,
    })
}

async fn list_body(
    state: &AppState,
    page: crate::domain::Page<Deployment>,
    req: PageRequest,
) -> Result<Json<Value>> {
    // Each queued one's place, read concurrently; a list is still answered without it if a
    // read fails.
    let items: Vec<Value> =
        futures_util::future::join_all(page.items.iter().map(|d| async move {
            with_queue(state, d, wire::snapshot(d))
                .await
                .unwrap_or_else(|e| {
                    tracing::warn!(deployment_id = %d.id, error = %e.chain(), "could not read a queued deployment's place");
                    wire::snapshot(d)
                })
        }))
        .await;
    Ok(Json(
        json!({ "deployments": items, "itemsPerPage": req.page_size, "total": page.total }),
    ))
}

#[utoipa::path(
    get,
    path = "/deployments",
    tag = "deployments",
    params(ListQuery),
    responses((status = 200, description = "A page of the stack's deployments, newest first unless `asc`", body = super::schema::deployments::DeploymentList)),
    security(("token" = ["read"])),
)]
pub(super) async fn list_stack(
    State(state): State<AppState>,
    ctx: StackCtx,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>> {
    let req = q.page()?;
    if !state.deps.stacks.stack_exists(&ctx.stack).await? {
        return Err(Error::not_found(format!("stack '{}' not found", ctx.stack)));
    }
    let page = state
        .deps
        .deployments
        .list_stack_deployments(&ctx.stack, req)
        .await?;
    list_body(&state, page, req).await
}

#[utoipa::path(
    get,
    path = "/api/orgs/{org}/deployments",
    tag = "deployments",
    params(ListQuery),
    responses((status = 200, description = "A page of the organization's deployments", body = super::schema::deployments::DeploymentList)),
    security(("token" = ["read"])),
)]
pub(super) async fn list_org(
    State(state): State<AppState>,
    ctx: OrgCtx,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>> {
    let req = q.page()?;
    let page = state
        .deps
        .deployments
        .list_org_deployments(&ctx.org, req)
        .await?;
    list_body(&state, page, req).await
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub(super) struct LogsQuery {
    continuation_token: Option<String>,
    count: Option<i64>,
    job: Option<i64>,
    step: Option<i64>,
    offset: Option<i64>,
}

/// Streaming entries per call.
const STREAM_LIMIT: usize = 500;

/// Logs in streaming mode (`continuationToken`) or step mode (`job`, `step`, `offset`,
/// `count`). The deployment is read before its logs, so a terminal status seen here means every
/// line is already stored and an absent `nextToken`/`nextOffset` really is the end.
#[utoipa::path(
    get,
    path = "/deployments/{id}/logs",
    tag = "deployments",
    params(("id" = uuid::Uuid, Path, description = "The deployment's id"), LogsQuery),
    responses((status = 200, description = "Log lines, in streaming mode (`continuationToken`) or step mode (`job`, `step`)", body = super::schema::deployments::Logs)),
    security(("token" = ["read"])),
)]
pub(super) async fn logs(
    State(state): State<AppState>,
    ctx: StackCtx,
    Params(p): Params,
    Query(q): Query<LogsQuery>,
) -> Result<Json<Value>> {
    let id = parse_id(&param(&p, "id"))?;
    let d = find(&state, &ctx.stack, id).await?;
    let store = &state.deps.logs;
    if q.job.is_some() || q.step.is_some() {
        let job = q.job.unwrap_or(0);
        if job != 0 {
            return Err(Error::invalid(format!(
                "job {job} does not exist: deployments have one job, 0"
            )));
        }
        let step = q
            .step
            .ok_or_else(|| Error::invalid("step is required with job"))?;
        let offset = q.offset.unwrap_or(0);
        let count = q.count.unwrap_or(100);
        if step < 0 || offset < 0 {
            return Err(Error::invalid("step and offset must not be negative"));
        }
        if !(1..=499).contains(&count) {
            return Err(Error::invalid(format!(
                "count must be between 1 and 499, not {count}"
            )));
        }
        let Some(s) = d.steps.get(step as usize) else {
            if d.status.is_terminal() {
                return Err(Error::invalid(format!(
                    "step {step} does not exist; the deployment has {} steps",
                    d.steps.len()
                )));
            }
            // Not started yet: nothing to read, but come back.
            return Ok(Json(
                json!({ "__type": "DeploymentLogsStep", "name": "", "lines": [], "nextOffset": offset }),
            ));
        };
        let step_done = matches!(
            s.status,
            crate::domain::StepStatus::Succeeded | crate::domain::StepStatus::Failed
        );
        let entries = store
            .read_logs(
                id,
                LogQuery::Step {
                    step: step as usize,
                    offset: offset as usize,
                    count: count as usize,
                },
            )
            .await?;
        let mut body = json!({
            "__type": "DeploymentLogsStep",
            "name": s.name,
            "lines": entries.iter().map(wire::step_line).collect::<Vec<_>>(),
        });
        if !(step_done && entries.len() < count as usize) {
            body["nextOffset"] = json!(offset + entries.len() as i64);
        }
        return Ok(Json(body));
    }
    let after = match q.continuation_token.as_deref() {
        None | Some("") => 0,
        Some(t) => t.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
            Error::invalid(format!(
                "'{t}' is not a continuation token from this server"
            ))
        })?,
    };
    let entries = store
        .read_logs(
            id,
            LogQuery::Stream {
                after,
                limit: STREAM_LIMIT,
            },
        )
        .await?;
    let mut body = json!({
        "__type": "DeploymentLogs",
        "lines": entries
            .iter()
            // Engine events share the stream; they are served at `S/update/{id}/events`.
            .filter(|e| e.event.is_none())
            .map(wire::stream_line)
            .collect::<Vec<_>>(),
    });
    let last = entries.last().map_or(after, |e| e.seq);
    if !(d.status.is_terminal() && entries.len() < STREAM_LIMIT) {
        body["nextToken"] = json!(last.to_string());
    }
    Ok(Json(body))
}

/// A queued deployment becomes `skipped`; a running one is stopped and ends `failed`.
#[utoipa::path(
    post,
    path = "/deployments/{id}/cancel",
    tag = "deployments",
    params(("id" = uuid::Uuid, Path, description = "The deployment's id")),
    responses(
        (status = 204, description = "Dequeued (now `skipped`), or asked to stop (ends `failed`)"),
        (status = 409, description = "It has already finished", body = super::openapi::ErrorBody),
    ),
    security(("token" = ["write"])),
)]
pub(super) async fn cancel(
    State(state): State<AppState>,
    ctx: StackCtx,
    Params(p): Params,
) -> Result<StatusCode> {
    let id = parse_id(&param(&p, "id"))?;
    match state
        .deps
        .deployments
        .cancel_deployment(&ctx.stack, id)
        .await?
    {
        CancelOutcome::Dequeued | CancelOutcome::Requested => Ok(StatusCode::NO_CONTENT),
        CancelOutcome::AlreadyFinished => Err(Error::conflict(format!(
            "deployment '{id}' has already finished"
        ))),
    }
}

/// `POST S/deployments/{id}/approve` and `/reject` (Tarmac's): an approver's decision on a
/// deployment waiting for approval, with an optional `comment`. Answers the deployment.
async fn decide(
    state: &AppState,
    ctx: &StackCtx,
    raw_id: &str,
    body: &Value,
    decision: Decision,
) -> Result<Json<Value>> {
    let id = parse_id(raw_id)?;
    if !body.is_object() {
        return Err(Error::invalid("the request body must be a JSON object"));
    }
    let comment = match crate::json::member(body, "comment") {
        None | Some(Value::Null) => None,
        Some(Value::String(c)) => {
            validate_comment(c)?;
            Some(c.clone()).filter(|c| !c.trim().is_empty())
        }
        Some(_) => return Err(Error::invalid("comment must be a string")),
    };
    let ballot = Ballot {
        voter: Voter {
            token_name: ctx.principal.token_name.clone(),
            role: ctx.principal.role,
        },
        decision,
        comment,
        at: time::OffsetDateTime::now_utc(),
    };
    let d = crate::service::decide(&state.deps, &ctx.stack, id, &ballot).await?;
    Ok(Json(wire::deployment(&d)))
}

#[utoipa::path(
    post,
    path = "/deployments/{id}/approve",
    tag = "approvals",
    params(("id" = uuid::Uuid, Path, description = "The deployment's id")),
    request_body(content = super::schema::deployments::Decision, description = "An optional comment"),
    responses(
        (status = 200, description = "The deployment, with its approval", body = super::schema::deployments::Deployment),
        (status = 409, description = "It is not waiting for approval, or this token already voted", body = super::openapi::ErrorBody),
    ),
    security(("token" = ["write"])),
    extensions(("x-tarmac-extension" = json!(true))),
)]
pub(super) async fn approve(
    State(state): State<AppState>,
    ctx: StackCtx,
    Params(p): Params,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>> {
    decide(&state, &ctx, &param(&p, "id"), &body, Decision::Approve).await
}

#[utoipa::path(
    post,
    path = "/deployments/{id}/reject",
    tag = "approvals",
    params(("id" = uuid::Uuid, Path, description = "The deployment's id")),
    request_body(content = super::schema::deployments::Decision, description = "An optional comment"),
    responses(
        (status = 200, description = "The deployment, with its approval", body = super::schema::deployments::Deployment),
        (status = 409, description = "It is not waiting for approval, or this token already voted", body = super::openapi::ErrorBody),
    ),
    security(("token" = ["write"])),
    extensions(("x-tarmac-extension" = json!(true))),
)]
pub(super) async fn reject(
    State(state): State<AppState>,
    ctx: StackCtx,
    Params(p): Params,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>> {
    decide(&state, &ctx, &param(&p, "id"), &body, Decision::Reject).await
}
