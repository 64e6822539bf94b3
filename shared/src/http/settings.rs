//! `S/deployments/settings`: read, merge (POST), replace (PUT), delete, and encrypt.
//!
//! POST and PUT take `?dryRun=true` (a Tarmac extension): the body is checked and the settings
//! it would make are answered, but nothing is written and no stack is created. `tarmac apply`
//! and `tarmac settings edit` validate with it before they change anything.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::AppState;
use super::extract::{JsonBody, Query, StackCtx};
use crate::domain::Role;
use crate::error::{Error, Result};
use crate::settings::{self, Nulls};

fn respond(stored: &Value, version: i64) -> Response {
    let mut body = settings::render(stored);
    if let Value::Object(map) = &mut body {
        map.insert("version".into(), json!(version));
        map.insert("source".into(), json!("api"));
    }
    (StatusCode::OK, Json(body)).into_response()
}

#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub(super) struct WriteQuery {
    /// Check and answer the settings it would make; write nothing.
    #[serde(default)]
    dry_run: bool,
}

/// How many times a settings write re-reads after losing a race.
const MAX_ATTEMPTS: usize = 8;

/// Read-modify-write with optimistic concurrency: a concurrent writer makes us re-read. A dry
/// run stops after the check.
async fn write(
    state: &AppState,
    ctx: &StackCtx,
    dry_run: bool,
    next: impl Fn(Option<&Value>) -> Value,
) -> Result<(Value, i64)> {
    let stack = &ctx.stack;
    for _ in 0..MAX_ATTEMPTS {
        let current = state.deps.stacks.get_settings(stack).await?;
        let value = next(current.as_ref().map(|c| &c.settings));
        settings::check_stored(&value)?;
        let before = current
            .as_ref()
            .map_or(&Value::Null, |c| &c.settings["approvals"]);
        check_approvals_change(ctx.principal.role, before, &value["approvals"])?;
        let pool = value["agentPoolID"]
            .as_str()
            .filter(|p| !p.trim().is_empty());
        crate::service::check_pool(&state.deps, &stack.org, pool).await?;
        if dry_run {
            return Ok((value, current.map_or(0, |c| c.version)));
        }
        match state
            .deps
            .stacks
            .put_settings(stack, &value, current.map_or(0, |c| c.version))
            .await
        {
            Ok(version) => return Ok((value, version)),
            Err(Error::Conflict(_)) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(Error::conflict(
        "the settings are being changed concurrently; retry",
    ))
}

#[utoipa::path(
    get,
    path = "/deployments/settings",
    tag = "settings",
    responses((status = 200, description = "The stack's settings", body = super::schema::stacks::Settings)),
    security(("token" = ["read"])),
)]
pub(super) async fn get(State(state): State<AppState>, ctx: StackCtx) -> Result<Response> {
    let s = state
        .deps
        .stacks
        .get_settings(&ctx.stack)
        .await?
        .ok_or_else(|| {
            Error::not_found(format!("stack '{}' has no deployment settings", ctx.stack))
        })?;
    Ok(respond(&s.settings, s.version))
}

/// Merges the body into the settings (creating them, and the stack, if needed). `null`
/// deletes a key; arrays are replaced.
#[utoipa::path(
    post,
    path = "/deployments/settings",
    tag = "settings",
    params(WriteQuery),
    request_body = super::schema::stacks::Settings,
    responses((status = 200, description = "The merged settings (with `dryRun`, what they would be)", body = super::schema::stacks::Settings), (status = 409, description = "Changed concurrently; retry", body = super::openapi::ErrorBody)),
    security(("token" = ["write"])),
)]
pub(super) async fn patch(
    State(state): State<AppState>,
    ctx: StackCtx,
    Query(q): Query<WriteQuery>,
    JsonBody(body): JsonBody,
) -> Result<Response> {
    let patch = settings::canonicalize(&body, &state.deps.cipher.for_org(&ctx.stack.org))?;
    let (stored, version) = write(&state, &ctx, q.dry_run, |current| {
        let base = current.cloned().unwrap_or_else(|| json!({}));
        settings::merge(&base, &patch, Nulls::Delete)
    })
    .await?;
    Ok(respond(&stored, version))
}

/// Replaces the settings with the body; anything missing or null is removed.
#[utoipa::path(
    put,
    path = "/deployments/settings",
    tag = "settings",
    params(WriteQuery),
    request_body = super::schema::stacks::Settings,
    responses((status = 200, description = "The new settings (with `dryRun`, what they would be)", body = super::schema::stacks::Settings), (status = 409, description = "Changed concurrently; retry", body = super::openapi::ErrorBody)),
    security(("token" = ["write"])),
)]
pub(super) async fn replace(
    State(state): State<AppState>,
    ctx: StackCtx,
    Query(q): Query<WriteQuery>,
    JsonBody(body): JsonBody,
) -> Result<Response> {
    let replacement = settings::strip_nulls(&settings::canonicalize(
        &body,
        &state.deps.cipher.for_org(&ctx.stack.org),
    )?);
    let (stored, version) = write(&state, &ctx, q.dry_run, |_| replacement.clone()).await?;
    Ok(respond(&stored, version))
}

/// A stack's approval rule is its admins' to set, change or remove: a gate its writers could
/// lift would gate nothing.
pub(super) fn check_approvals_change(role: Role, before: &Value, after: &Value) -> Result<()> {
    if before != after && role < Role::Admin {
        return Err(Error::Forbidden(
            "only an admin token may set, change or remove a stack's approvals".into(),
        ));
    }
    Ok(())
}

#[utoipa::path(
    delete,
    path = "/deployments/settings",
    tag = "settings",
    responses((status = 204, description = "Deleted"), (status = 409, description = "Changed concurrently; retry", body = super::openapi::ErrorBody)),
    security(("token" = ["write"])),
)]
pub(super) async fn delete(State(state): State<AppState>, ctx: StackCtx) -> Result<StatusCode> {
    // Deletes the settings it checked: an approval rule an admin sets meanwhile is not lifted
    // by a writer's delete.
    for _ in 0..MAX_ATTEMPTS {
        let current = state.deps.stacks.get_settings(&ctx.stack).await?;
        if let Some(c) = &current {
            check_approvals_change(ctx.principal.role, &c.settings["approvals"], &Value::Null)?;
        }
        let version = current.map_or(0, |c| c.version);
        match state.deps.stacks.delete_settings(&ctx.stack, version).await {
            Ok(_) => return Ok(StatusCode::NO_CONTENT),
            Err(Error::Conflict(_)) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(Error::conflict(
        "the settings are being changed concurrently; retry",
    ))
}

/// Encrypts a value for use in settings. Accepts a bare string or any `SecretValue` form.
#[utoipa::path(
    post,
    path = "/deployments/settings/encrypt",
    tag = "settings",
    request_body = super::schema::stacks::EncryptRequest,
    responses((status = 200, description = "The sealed value", body = super::schema::stacks::Encrypted)),
    security(("token" = ["write"])),
)]
pub(super) async fn encrypt(
    State(state): State<AppState>,
    ctx: StackCtx,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>> {
    let plaintext = match &body {
        Value::String(s) => Some(s.clone()),
        _ => ["secret", "plaintext"].iter().find_map(|k| {
            crate::json::member(&body, k).and_then(|v| v.as_str().map(str::to_string))
        }),
    };
    let plaintext = plaintext
        .filter(|p| !p.is_empty())
        .ok_or_else(|| Error::invalid("send the value to encrypt as a JSON string or {\"secret\": \"...\"}; it must not be empty"))?;
    let sealed = state.deps.cipher.for_org(&ctx.stack.org).seal(&plaintext);
    Ok(Json(json!({ "secret": sealed, "ciphertext": sealed })))
}
