//! The first Deployments API, under `/api/preview/{org}/{project}/{stack}`, which the REST
//! drivers in Pulumi's docs and `pulumi/deploy-demos` still call (and Pulumi CLIs before
//! 3.113.1): `deployment/settings` (singular), and `deployments[...]` where a list is a bare
//! array, oldest first, and `inheritSettings` defaults to false.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::Value;

use super::AppState;
use super::deployments::{ListQuery, create_with};
use super::extract::{JsonBody, Query, StackCtx};
use super::wire;
use crate::domain::PageRequest;
use crate::error::{Error, Result};

/// `POST /api/preview/.../deployments`: 202 `{id, consoleUrl, version}`.
#[utoipa::path(
    post,
    path = "/deployments",
    tag = "legacy",
    request_body = super::schema::deployments::CreateDeploymentRequest,
    responses((status = 202, description = "Queued", body = super::schema::deployments::CreateDeploymentResponse)),
    security(("token" = ["write"])),
)]
pub(super) async fn create(
    State(state): State<AppState>,
    ctx: StackCtx,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<Value>)> {
    create_with(&state, &ctx, &headers, &body, false).await
}

/// `GET /api/preview/.../deployments?page=N`: a bare array of the page's deployments, oldest
/// first, empty past the last page (the drivers page until an empty page, and take the last
/// item as the newest).
#[utoipa::path(
    get,
    path = "/deployments",
    tag = "legacy",
    params(ListQuery),
    responses((status = 200, description = "A page of the stack's deployments, oldest first", body = Vec<super::schema::deployments::DeploymentSnapshot>)),
    security(("token" = ["read"])),
)]
pub(super) async fn list(
    State(state): State<AppState>,
    ctx: StackCtx,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>> {
    let page = PageRequest {
        ascending: true,
        ..q.page()?
    };
    if !state.deps.stacks.stack_exists(&ctx.stack).await? {
        return Err(Error::not_found(format!("stack '{}' not found", ctx.stack)));
    }
    let deployments = state
        .deps
        .deployments
        .list_stack_deployments(&ctx.stack, page)
        .await?;
    Ok(Json(Value::Array(
        deployments.items.iter().map(wire::snapshot).collect(),
    )))
}

/// `GET /api/preview/.../deployment/settings` (singular): the stack's settings.
#[utoipa::path(
    get,
    path = "/deployment/settings",
    tag = "legacy",
    responses((status = 200, description = "The stack's deployment settings", body = super::schema::stacks::Settings)),
    security(("token" = ["read"])),
)]
pub(super) async fn settings_get(
    state: State<AppState>,
    ctx: StackCtx,
) -> Result<axum::response::Response> {
    super::settings::get(state, ctx).await
}

/// `POST /api/preview/.../deployment/settings` (singular): merges a patch into the settings.
#[utoipa::path(
    post,
    path = "/deployment/settings",
    tag = "legacy",
    params(super::settings::WriteQuery),
    request_body = super::schema::stacks::Settings,
    responses((status = 200, description = "The merged settings (with `dryRun`, what they would be)", body = super::schema::stacks::Settings), (status = 409, description = "Changed concurrently; retry", body = super::openapi::ErrorBody)),
    security(("token" = ["write"])),
)]
pub(super) async fn settings_patch(
    state: State<AppState>,
    ctx: StackCtx,
    query: Query<super::settings::WriteQuery>,
    body: JsonBody,
) -> Result<axum::response::Response> {
    super::settings::patch(state, ctx, query, body).await
}
