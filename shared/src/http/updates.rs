//! Updates behind deployments: a deployment's update (`S/deployments/{id}/updates`), its
//! engine events (`S/update/{id}/events`), and the stack's history (`S/updates`), as the
//! Pulumi CLI, Automation API and the SDK read them. A deployment's update has the deployment's
//! id as its `updateID`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::AppState;
use super::deployments::{ListQuery, find, parse_id};
use super::extract::{Params, Query, StackCtx, param};
use super::wire;
use crate::domain::updates::UpdateResult;
use crate::domain::{CancelOutcome, Deployment};
use crate::error::{Error, Result};
use crate::ports::LogQuery;

/// `GET S/deployments/{id}/updates`: `[{updateID, version, latestVersion}]`, empty until the
/// deployment's engine step starts.
#[utoipa::path(
    get,
    path = "/deployments/{id}/updates",
    tag = "updates",
    params(("id" = uuid::Uuid, Path, description = "The deployment's id")),
    responses((status = 200, description = "The deployment's update, once its engine step started", body = Vec<super::schema::updates::UpdateRecord>)),
    security(("token" = ["read"])),
)]
pub(super) async fn of_deployment(
    State(state): State<AppState>,
    ctx: StackCtx,
    Params(p): Params,
) -> Result<Json<Value>> {
    let d = find(&state, &ctx.stack, parse_id(&param(&p, "id"))?).await?;
    let latest = latest_version(&state, &ctx).await?;
    // The SDK's `UpdateInfo`; the CLI reads its `updateID`, `version` and `latestVersion`.
    Ok(Json(json!(
        wire::update_record(&d, latest)
            .into_iter()
            .collect::<Vec<_>>()
    )))
}

async fn latest_version(state: &AppState, ctx: &StackCtx) -> Result<i64> {
    Ok(state
        .deps
        .stacks
        .get_stack(&ctx.stack)
        .await?
        .map_or(0, |s| s.update_version))
}

/// The deployment behind an update id of this stack: 404 for anything else (another stack's
/// or org's update included).
async fn update(state: &AppState, ctx: &StackCtx, raw: &str) -> Result<Deployment> {
    let id = uuid::Uuid::parse_str(raw)
        .map_err(|_| Error::invalid(format!("'{raw}' is not an update id")))?;
    let d = find(state, &ctx.stack, id).await.map_err(|_| {
        Error::not_found(format!("update '{raw}' not found in stack '{}'", ctx.stack))
    })?;
    if d.update.is_none() {
        return Err(Error::not_found(format!(
            "update '{raw}' not found in stack '{}'",
            ctx.stack
        )));
    }
    Ok(d)
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub(super) struct EventsQuery {
    continuation_token: Option<String>,
}

/// Events returned per call.
const EVENTS_LIMIT: usize = 1000;

/// `GET S/update/{id}/events`: the update's engine events after the continuation token, and
/// the next token; `null` only once the update has ended and every event was returned (what
/// the CLI and Automation API stop on). The deployment is read before its events, so an ended
/// update seen here has every event stored.
#[utoipa::path(
    get,
    path = "/update/{id}/events",
    tag = "updates",
    params(("id" = uuid::Uuid, Path, description = "The update's id (its deployment's)"), EventsQuery),
    responses((status = 200, description = "Engine events", body = super::schema::updates::UpdateEvents)),
    security(("token" = ["read"])),
)]
pub(super) async fn events(
    State(state): State<AppState>,
    ctx: StackCtx,
    Params(p): Params,
    Query(q): Query<EventsQuery>,
) -> Result<Json<Value>> {
    let d = update(&state, &ctx, &param(&p, "id")).await?;
    let after = match q.continuation_token.as_deref() {
        None | Some("") => 0,
        Some(t) => t.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
            Error::invalid(format!(
                "'{t}' is not a continuation token from this server"
            ))
        })?,
    };
    let entries = state
        .deps
        .logs
        .read_logs(
            d.id,
            LogQuery::Stream {
                after,
                limit: EVENTS_LIMIT,
            },
        )
        .await?;
    let read_all = entries.len() < EVENTS_LIMIT;
    let last = entries.last().map_or(after, |e| e.seq);
    let mut events: Vec<Value> = entries.into_iter().filter_map(|e| e.event).collect();
    let ended = d
        .update
        .as_ref()
        .is_some_and(|u| u.result != UpdateResult::InProgress);
    // A run whose worker died never closed its update: its deployment's end closes it.
    let abandoned = !ended && d.status.is_terminal();
    if abandoned && read_all {
        let sequence = events
            .last()
            .and_then(|e| e["sequence"].as_i64())
            .unwrap_or(0);
        events.push(json!({
            "sequence": sequence + 1,
            "timestamp": d.modified.unix_timestamp(),
            "summaryEvent": {"maybeCorrupt": true, "durationSeconds": 0, "resourceChanges": {},
                "PolicyPacks": {}, "isPreview": false, "result": "failed"},
        }));
    }
    let token = if (ended || abandoned) && read_all {
        Value::Null
    } else {
        json!(last.to_string())
    };
    Ok(Json(
        json!({ "events": events, "continuationToken": token }),
    ))
}

/// `POST S/update/{id}/cancel` (Automation API's `Cancel`, the CLI's `pulumi cancel`): cancels
/// the deployment behind the update.
#[utoipa::path(
    post,
    path = "/update/{id}/cancel",
    tag = "updates",
    params(("id" = uuid::Uuid, Path, description = "The update's id (its deployment's)")),
    responses((status = 204, description = "Cancelled"), (status = 409, description = "It has already finished", body = super::openapi::ErrorBody)),
    security(("token" = ["write"])),
)]
pub(super) async fn cancel(
    State(state): State<AppState>,
    ctx: StackCtx,
    Params(p): Params,
) -> Result<StatusCode> {
    let d = update(&state, &ctx, &param(&p, "id")).await?;
    match state
        .deps
        .deployments
        .cancel_deployment(&ctx.stack, d.id)
        .await?
    {
        CancelOutcome::Dequeued | CancelOutcome::Requested => Ok(StatusCode::NO_CONTENT),
        CancelOutcome::AlreadyFinished => Err(Error::conflict(format!(
            "update '{}' has already finished",
            d.id
        ))),
    }
}

/// `GET S/updates`: the stack's history in the legacy flat shape the CLI's `stack history`
/// and Automation API read (`{"updates": [UpdateInfo]}`), newest first.
#[utoipa::path(
    get,
    path = "/updates",
    tag = "updates",
    params(ListQuery),
    responses((status = 200, description = "The stack's updates, newest first", body = super::schema::updates::UpdateHistory)),
    security(("token" = ["read"])),
)]
pub(super) async fn history(
    State(state): State<AppState>,
    ctx: StackCtx,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>> {
    let page = q.page()?;
    let updates = state
        .deps
        .deployments
        .list_updates(&ctx.stack, page)
        .await?;
    let items: Vec<Value> = updates.items.iter().filter_map(wire::update_info).collect();
    Ok(Json(
        json!({ "updates": items, "itemsPerPage": page.page_size, "total": updates.total }),
    ))
}

/// `GET S/updates/latest`.
#[utoipa::path(
    get,
    path = "/updates/latest",
    tag = "updates",
    responses((status = 200, description = "The latest update", body = super::schema::updates::UpdateRecord)),
    security(("token" = ["read"])),
)]
pub(super) async fn latest(State(state): State<AppState>, ctx: StackCtx) -> Result<Json<Value>> {
    let version = latest_version(&state, &ctx).await?;
    by_version(&state, &ctx, version).await
}

/// `GET S/updates/{version}`.
#[utoipa::path(
    get,
    path = "/updates/{version}",
    tag = "updates",
    params(("version" = i64, Path, minimum = 1, description = "The update's version")),
    responses((status = 200, description = "The update", body = super::schema::updates::UpdateRecord)),
    security(("token" = ["read"])),
)]
pub(super) async fn at_version(
    State(state): State<AppState>,
    ctx: StackCtx,
    Params(p): Params,
) -> Result<Json<Value>> {
    let raw = param(&p, "version");
    let version = raw.parse::<i64>().ok().filter(|v| *v >= 1).ok_or_else(|| {
        Error::invalid(format!(
            "'{raw}' is not an update version: versions are integers from 1"
        ))
    })?;
    by_version(&state, &ctx, version).await
}

async fn by_version(state: &AppState, ctx: &StackCtx, version: i64) -> Result<Json<Value>> {
    let not_found = || Error::not_found(format!("stack '{}' has no update {version}", ctx.stack));
    if version < 1 {
        return Err(not_found());
    }
    let d = state
        .deps
        .deployments
        .update_by_version(&ctx.stack, version)
        .await?
        .ok_or_else(not_found)?;
    let latest = latest_version(state, ctx).await?;
    Ok(Json(wire::update_record(&d, latest).ok_or_else(not_found)?))
}
