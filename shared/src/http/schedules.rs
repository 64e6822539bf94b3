//! Schedules (`S/deployments/schedules`, `.../drift/schedules`, `.../ttl/schedules`) and drift
//! runs (`S/drift/...`), in Pulumi's shapes (reference §5.5, §5.6).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};
use time::OffsetDateTime;
use uuid::Uuid;

use super::AppState;
use super::extract::{JsonBody, Params, Query, StackCtx, param};
use crate::domain::schedule::{Cron, Purpose, Schedule, When, parse_instant};
use crate::domain::time_fmt::pulumi_datetime;
use crate::domain::{JobStatus, Operation, PageRequest, StackRef};
use crate::error::{Error, Result};
use crate::json::member;
use crate::ports::DriftRun;

/// `ScheduledAction`. Every field the SDK requires is present; `lastExecuted` and, once a
/// one-time schedule has fired, `nextExecution` are `""` (the SDK rejects null and absence).
/// Times are written as Pulumi's service writes them, `YYYY-MM-DD hh:mm:ss.fff` in UTC: the
/// Pulumi Service provider reads `scheduleOnce` with exactly that layout.
fn action(s: &Schedule) -> Value {
    let mut v = json!({
        "id": s.id,
        "orgID": s.stack.org,
        "nextExecution": s.next_execution.map(pulumi_datetime).unwrap_or_default(),
        "paused": s.paused,
        "kind": "deployment",
        // Secrets in a stored request are sealed; they show as settings show them.
        "definition": crate::settings::render(&json!({ "request": s.definition["request"] })),
        "created": pulumi_datetime(s.created),
        "modified": pulumi_datetime(s.modified),
        "lastExecuted": s.last_executed.map(pulumi_datetime).unwrap_or_default(),
    });
    match &s.when {
        When::Cron(c) => v["scheduleCron"] = json!(c.as_str()),
        When::Once(t) => v["scheduleOnce"] = json!(pulumi_datetime(*t)),
    }
    v
}

fn string_member(body: &Value, name: &str) -> Result<Option<String>> {
    match member(body, name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Error::invalid(format!("{name} must be a string"))),
    }
}

fn bool_member(body: &Value, name: &str) -> Result<bool> {
    match member(body, name) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(Error::invalid(format!("{name} must be true or false"))),
    }
}

fn require_object(body: &Value) -> Result<()> {
    if body.is_object() {
        Ok(())
    } else {
        Err(Error::invalid("the request body must be a JSON object"))
    }
}

/// Schedules need deployment settings to fire against (Pulumi answers 400 too).
async fn require_settings(state: &AppState, stack: &StackRef) -> Result<()> {
    match state.deps.stacks.get_settings(stack).await? {
        Some(_) => Ok(()),
        None if state.deps.stacks.stack_exists(stack).await? => Err(Error::invalid(
            "deployment settings not configured: schedules need the stack's deployment settings",
        )),
        None => Err(Error::not_found(format!("stack '{stack}' not found"))),
    }
}

/// `{"scheduleCron" | "scheduleOnce", "request"}`: exactly one of the two times. A request
/// that names an agent pool must name one of the org's.
async fn custom_parts(state: &AppState, stack: &StackRef, body: &Value) -> Result<(When, Value)> {
    require_object(body)?;
    let when = match (
        string_member(body, "scheduleCron")?,
        string_member(body, "scheduleOnce")?,
    ) {
        (Some(c), None) => When::Cron(Box::new(Cron::parse(&c)?)),
        (None, Some(t)) => When::Once(parse_instant("scheduleOnce", &t)?),
        _ => {
            return Err(Error::invalid(
                "set exactly one of scheduleCron and scheduleOnce",
            ));
        }
    };
    let request = member(body, "request")
        .cloned()
        .ok_or_else(|| Error::invalid("request is required: the deployment to create"))?;
    let sealed = crate::service::sealed_request(&state.deps, &stack.org, &request)?;
    let pool = sealed["agentPoolID"]
        .as_str()
        .filter(|p| !p.trim().is_empty());
    crate::service::check_pool(&state.deps, &stack.org, pool).await?;
    Ok((when, sealed))
}

fn drift_parts(body: &Value) -> Result<(When, Value)> {
    require_object(body)?;
    let cron = string_member(body, "scheduleCron")?
        .ok_or_else(|| Error::invalid("scheduleCron is required"))?;
    let when = When::Cron(Box::new(Cron::parse(&cron)?));
    let remediate = bool_member(body, "autoRemediate")?;
    let request = json!({"operation": Operation::DetectDrift, "inheritSettings": true,
        "operationContext": {"options": {"remediateIfDriftDetected": remediate}}});
    Ok((when, request))
}

fn ttl_parts(body: &Value) -> Result<(When, Value)> {
    require_object(body)?;
    let at =
        string_member(body, "timestamp")?.ok_or_else(|| Error::invalid("timestamp is required"))?;
    let when = When::Once(parse_instant("timestamp", &at)?);
    let delete = bool_member(body, "deleteAfterDestroy")?;
    let request = json!({"operation": Operation::Destroy, "inheritSettings": true,
        "operationContext": {"options": {"deleteAfterDestroy": delete}}});
    Ok((when, request))
}

/// A schedule's stored definition: the request, and the token that set it, which its
/// deployments are requested by (so that the token cannot approve them).
fn definition(ctx: &StackCtx, request: Value) -> Value {
    json!({ "request": request, crate::domain::schedule::REQUESTED_BY: ctx.principal.token_name })
}

async fn create(
    state: &AppState,
    ctx: &StackCtx,
    purpose: Purpose,
    when: When,
    request: Value,
) -> Result<Json<Value>> {
    let stack = &ctx.stack;
    require_settings(state, stack).await?;
    let now = OffsetDateTime::now_utc();
    let s = Schedule {
        id: Uuid::new_v4(),
        stack: stack.clone(),
        purpose,
        next_execution: Schedule::first_slot(&when, now)?,
        when,
        definition: definition(ctx, request),
        paused: false,
        created: now,
        modified: now,
        last_executed: None,
    };
    state.deps.schedules.create_schedule(&s).await?;
    Ok(Json(action(&s)))
}

async fn update(
    state: &AppState,
    ctx: &StackCtx,
    raw_id: &str,
    when: When,
    request: Value,
) -> Result<Json<Value>> {
    let definition = definition(ctx, request);
    let s = modify(state, &ctx.stack, raw_id, |s, now| {
        s.next_execution = Schedule::first_slot(&when, now)?;
        s.when = when.clone();
        s.definition = definition.clone();
        Ok(())
    })
    .await?;
    Ok(Json(action(&s)))
}

/// Read, change, and write back a schedule, conditional on the slot that was read: a tick
/// firing it in between makes the write fail, and the change is made again on what the tick
/// left (so a resumed or edited schedule never fires a slot twice).
async fn modify(
    state: &AppState,
    stack: &StackRef,
    raw_id: &str,
    change: impl Fn(&mut Schedule, OffsetDateTime) -> Result<()>,
) -> Result<Schedule> {
    for _ in 0..5 {
        let mut s = find(state, stack, raw_id).await?;
        let read_next = s.next_execution;
        let now = OffsetDateTime::now_utc();
        change(&mut s, now)?;
        s.modified = now;
        match state.deps.schedules.update_schedule(&s, read_next).await {
            Ok(()) => return Ok(s),
            Err(Error::Conflict(_)) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(Error::conflict("the schedule is changing; retry"))
}

async fn find(state: &AppState, stack: &StackRef, raw_id: &str) -> Result<Schedule> {
    let id = Uuid::parse_str(raw_id)
        .map_err(|_| Error::invalid(format!("'{raw_id}' is not a schedule id (a UUID)")))?;
    state
        .deps
        .schedules
        .get_schedule(stack, id)
        .await?
        .ok_or_else(|| Error::not_found(format!("schedule '{id}' not found")))
}

#[utoipa::path(
    get,
    path = "/deployments/schedules",
    tag = "schedules",
    responses((status = 200, description = "The stack's custom, drift and TTL schedules", body = super::schema::schedules::ScheduledActionList)),
    security(("token" = ["read"])),
)]
pub(super) async fn list(State(state): State<AppState>, ctx: StackCtx) -> Result<Json<Value>> {
    if !state.deps.stacks.stack_exists(&ctx.stack).await? {
        return Err(Error::not_found(format!("stack '{}' not found", ctx.stack)));
    }
    let all = state.deps.schedules.list_schedules(&ctx.stack).await?;
    Ok(Json(
        json!({ "schedules": all.iter().map(action).collect::<Vec<_>>() }),
    ))
}

#[utoipa::path(
    post,
    path = "/deployments/schedules",
    tag = "schedules",
    request_body = super::schema::schedules::CustomScheduleRequest,
    responses((status = 200, description = "The new schedule (the stack needs deployment settings)", body = super::schema::schedules::ScheduledAction)),
    security(("token" = ["write"])),
)]
pub(super) async fn create_custom(
    State(state): State<AppState>,
    ctx: StackCtx,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>> {
    let (when, request) = custom_parts(&state, &ctx.stack, &body).await?;
    create(&state, &ctx, Purpose::Custom, when, request).await
}

#[utoipa::path(
    post,
    path = "/deployments/schedules/{id}",
    tag = "schedules",
    params(("id" = uuid::Uuid, Path, description = "The schedule's id")),
    request_body = super::schema::schedules::CustomScheduleRequest,
    responses(
        (status = 200, description = "The schedule, changed", body = super::schema::schedules::ScheduledAction),
        (status = 409, description = "The schedule kept changing under this request; retry", body = super::openapi::ErrorBody),
    ),
    security(("token" = ["write"])),
)]
pub(super) async fn update_custom(
    State(state): State<AppState>,
    ctx: StackCtx,
    Params(p): Params,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>> {
    let (when, request) = custom_parts(&state, &ctx.stack, &body).await?;
    update(&state, &ctx, &param(&p, "id"), when, request).await
}

#[utoipa::path(
    post,
    path = "/deployments/drift/schedules",
    tag = "drift",
    request_body = super::schema::schedules::DriftScheduleRequest,
    responses((status = 200, description = "The new drift-detection schedule (the stack needs deployment settings)", body = super::schema::schedules::ScheduledAction)),
    security(("token" = ["write"])),
)]
pub(super) async fn create_drift(
    State(state): State<AppState>,
    ctx: StackCtx,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>> {
    let (when, request) = drift_parts(&body)?;
    create(&state, &ctx, Purpose::Drift, when, request).await
}

#[utoipa::path(
    post,
    path = "/deployments/drift/schedules/{id}",
    tag = "drift",
    params(("id" = uuid::Uuid, Path, description = "The schedule's id")),
    request_body = super::schema::schedules::DriftScheduleRequest,
    responses(
        (status = 200, description = "The schedule, changed", body = super::schema::schedules::ScheduledAction),
        (status = 409, description = "The schedule kept changing under this request; retry", body = super::openapi::ErrorBody),
    ),
    security(("token" = ["write"])),
)]
pub(super) async fn update_drift(
    State(state): State<AppState>,
    ctx: StackCtx,
    Params(p): Params,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>> {
    let (when, request) = drift_parts(&body)?;
    update(&state, &ctx, &param(&p, "id"), when, request).await
}

#[utoipa::path(
    post,
    path = "/deployments/ttl/schedules",
    tag = "ttl",
    request_body = super::schema::schedules::TtlScheduleRequest,
    responses((status = 200, description = "The new one-time destroy schedule (the stack needs deployment settings)", body = super::schema::schedules::ScheduledAction)),
    security(("token" = ["write"])),
)]
pub(super) async fn create_ttl(
    State(state): State<AppState>,
    ctx: StackCtx,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>> {
    let (when, request) = ttl_parts(&body)?;
    create(&state, &ctx, Purpose::Ttl, when, request).await
}

#[utoipa::path(
    post,
    path = "/deployments/ttl/schedules/{id}",
    tag = "ttl",
    params(("id" = uuid::Uuid, Path, description = "The schedule's id")),
    request_body = super::schema::schedules::TtlScheduleRequest,
    responses(
        (status = 200, description = "The schedule, changed", body = super::schema::schedules::ScheduledAction),
        (status = 409, description = "The schedule kept changing under this request; retry", body = super::openapi::ErrorBody),
    ),
    security(("token" = ["write"])),
)]
pub(super) async fn update_ttl(
    State(state): State<AppState>,
    ctx: StackCtx,
    Params(p): Params,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>> {
    let (when, request) = ttl_parts(&body)?;
    update(&state, &ctx, &param(&p, "id"), when, request).await
}

#[utoipa::path(
    get,
    path = "/deployments/schedules/{id}",
    tag = "schedules",
    params(("id" = uuid::Uuid, Path, description = "The schedule's id")),
    responses((status = 200, description = "The schedule (custom, drift or TTL)", body = super::schema::schedules::ScheduledAction)),
    security(("token" = ["read"])),
)]
pub(super) async fn read(
    State(state): State<AppState>,
    ctx: StackCtx,
    Params(p): Params,
) -> Result<Json<Value>> {
    Ok(Json(action(
        &find(&state, &ctx.stack, &param(&p, "id")).await?,
    )))
}

#[utoipa::path(
    delete,
    path = "/deployments/schedules/{id}",
    tag = "schedules",
    params(("id" = uuid::Uuid, Path, description = "The schedule's id")),
    responses((status = 204, description = "Deleted")),
    security(("token" = ["write"])),
)]
pub(super) async fn delete(
    State(state): State<AppState>,
    ctx: StackCtx,
    Params(p): Params,
) -> Result<StatusCode> {
    let s = find(&state, &ctx.stack, &param(&p, "id")).await?;
    state
        .deps
        .schedules
        .delete_schedule(&ctx.stack, s.id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    post,
    path = "/deployments/schedules/{id}/pause",
    tag = "schedules",
    params(("id" = uuid::Uuid, Path, description = "The schedule's id")),
    responses(
        (status = 204, description = "Paused (already paused: unchanged)"),
        (status = 409, description = "The schedule kept changing under this request; retry", body = super::openapi::ErrorBody),
    ),
    security(("token" = ["write"])),
)]
pub(super) async fn pause(
    State(state): State<AppState>,
    ctx: StackCtx,
    Params(p): Params,
) -> Result<StatusCode> {
    set_paused(&state, &ctx.stack, &param(&p, "id"), true).await
}

#[utoipa::path(
    post,
    path = "/deployments/schedules/{id}/resume",
    tag = "schedules",
    params(("id" = uuid::Uuid, Path, description = "The schedule's id")),
    responses(
        (status = 204, description = "Resumed; a cron schedule moves on to its next slot, skipping those missed while paused"),
        (status = 409, description = "The schedule kept changing under this request; retry", body = super::openapi::ErrorBody),
    ),
    security(("token" = ["write"])),
)]
pub(super) async fn resume(
    State(state): State<AppState>,
    ctx: StackCtx,
    Params(p): Params,
) -> Result<StatusCode> {
    set_paused(&state, &ctx.stack, &param(&p, "id"), false).await
}

/// Resuming a cron schedule moves it to its next future slot: what it missed while paused
/// does not fire.
async fn set_paused(
    state: &AppState,
    stack: &StackRef,
    raw_id: &str,
    paused: bool,
) -> Result<StatusCode> {
    modify(state, stack, raw_id, |s, now| {
        if !paused && s.paused && matches!(s.when, When::Cron(_)) {
            s.next_execution = Schedule::first_slot(&s.when, now)?;
        }
        s.paused = paused;
        Ok(())
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get,
    path = "/deployments/schedules/{id}/history",
    tag = "schedules",
    params(("id" = uuid::Uuid, Path, description = "The schedule's id")),
    responses((status = 200, description = "The schedule's latest 100 firings, skips and refusals, newest first", body = super::schema::schedules::ScheduleHistory)),
    security(("token" = ["read"])),
)]
pub(super) async fn history(
    State(state): State<AppState>,
    ctx: StackCtx,
    Params(p): Params,
) -> Result<Json<Value>> {
    let s = find(&state, &ctx.stack, &param(&p, "id")).await?;
    let events = state.deps.schedules.history(&ctx.stack, s.id, 100).await?;
    let mut out = Vec::with_capacity(events.len());
    for e in events {
        // A firing's result is its deployment's status now; a skip or refusal, its note.
        let (version, result) = match e.deployment {
            Some((_, version)) => {
                let d = state
                    .deps
                    .deployments
                    .get_deployment_by_version(&ctx.stack, version)
                    .await?;
                (
                    version,
                    d.map_or_else(|| "deleted".to_string(), |d| d.status.to_string()),
                )
            }
            None => (0, e.note.clone()),
        };
        out.push(json!({
            "id": e.id,
            "scheduledActionID": s.id,
            "executed": pulumi_datetime(e.executed),
            "version": version,
            "result": result,
        }));
    }
    Ok(Json(json!({ "scheduleHistoryEvents": out })))
}

/// `DriftRun`: its status is the detect-drift deployment's, read now.
async fn drift_json(state: &AppState, run: &DriftRun) -> Result<Value> {
    let deps = &state.deps;
    let detect = deps
        .deployments
        .get_deployment(&run.stack, run.detect.0)
        .await?;
    let mut v = json!({
        "id": run.id,
        "driftDetected": run.drift_detected,
        "created": pulumi_datetime(run.created),
        "status": detect.as_ref().map_or(JobStatus::Failed, |d| d.status),
        "deploymentId": run.detect.0,
        "deploymentVersion": run.detect.1,
    });
    if let Some((id, _)) = run.remediation
        && let Some(r) = deps.deployments.get_deployment(&run.stack, id).await?
    {
        v["remediateUpdate"] =
            json!({"updateId": id, "modified": pulumi_datetime(r.modified), "status": r.status});
    }
    Ok(v)
}

#[utoipa::path(
    get,
    path = "/drift/runs",
    tag = "drift",
    params(super::deployments::ListQuery),
    responses((status = 200, description = "A page of the stack's drift runs", body = super::schema::schedules::DriftRunList)),
    security(("token" = ["read"])),
)]
pub(super) async fn drift_runs(
    State(state): State<AppState>,
    ctx: StackCtx,
    Query(q): Query<super::deployments::ListQuery>,
) -> Result<Json<Value>> {
    let req = q.page()?;
    if !state.deps.stacks.stack_exists(&ctx.stack).await? {
        return Err(Error::not_found(format!("stack '{}' not found", ctx.stack)));
    }
    let runs = state.deps.drift.drift_runs(&ctx.stack, req).await?;
    let mut items = Vec::with_capacity(runs.items.len());
    for r in &runs.items {
        items.push(drift_json(&state, r).await?);
    }
    Ok(Json(
        json!({ "driftRuns": items, "itemsPerPage": req.page_size, "total": runs.total }),
    ))
}

#[utoipa::path(
    get,
    path = "/drift/runs/{id}",
    tag = "drift",
    params(("id" = uuid::Uuid, Path, description = "The drift run's id")),
    responses((status = 200, description = "The drift run", body = super::schema::schedules::DriftRun)),
    security(("token" = ["read"])),
)]
pub(super) async fn drift_run(
    State(state): State<AppState>,
    ctx: StackCtx,
    Params(p): Params,
) -> Result<Json<Value>> {
    let raw = param(&p, "id");
    let id = Uuid::parse_str(&raw)
        .map_err(|_| Error::invalid(format!("'{raw}' is not a drift run id (a UUID)")))?;
    let run = state
        .deps
        .drift
        .drift_run(&ctx.stack, id)
        .await?
        .ok_or_else(|| Error::not_found(format!("drift run '{id}' not found")))?;
    Ok(Json(drift_json(&state, &run).await?))
}

/// `StackDriftStatus`, also embedded in the stack's deployment metadata.
pub(super) async fn drift_status_of(state: &AppState, stack: &StackRef) -> Result<Value> {
    let latest = state
        .deps
        .drift
        .drift_runs(
            stack,
            PageRequest {
                page: 1,
                page_size: 1,
                ascending: false,
            },
        )
        .await?;
    let recent = state
        .deps
        .deployments
        .list_stack_deployments(
            stack,
            PageRequest {
                page: 1,
                page_size: 20,
                ascending: false,
            },
        )
        .await?;
    let in_progress = recent.items.iter().any(|d| {
        matches!(
            d.operation,
            Operation::DetectDrift | Operation::RemediateDrift
        ) && !d.status.is_terminal()
    });
    let run = latest.items.first();
    Ok(json!({
        "driftDetected": run.is_some_and(|r| r.drift_detected),
        "latestDriftRun": run.map(|r| r.id.to_string()).unwrap_or_default(),
        "runInProgress": in_progress,
    }))
}

#[utoipa::path(
    get,
    path = "/drift/status",
    tag = "drift",
    responses((status = 200, description = "Whether the stack has drifted, by its latest drift run", body = super::schema::schedules::StackDriftStatus)),
    security(("token" = ["read"])),
)]
pub(super) async fn drift_status(
    State(state): State<AppState>,
    ctx: StackCtx,
) -> Result<Json<Value>> {
    if !state.deps.stacks.stack_exists(&ctx.stack).await? {
        return Err(Error::not_found(format!("stack '{}' not found", ctx.stack)));
    }
    Ok(Json(drift_status_of(&state, &ctx.stack).await?))
}

/// Whether a stack has schedules, for its metadata.
pub(super) async fn has_schedules(state: &AppState, stack: &StackRef) -> Result<bool> {
    Ok(!state.deps.schedules.list_schedules(stack).await?.is_empty())
}
