//! An org's API tokens (`/api/orgs/{org}/tokens`, admin only), in the shape of Pulumi's org
//! tokens: create one (its value shown this once; only its hash is stored), list them, revoke
//! one.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::AppState;
use super::extract::{JsonBody, OrgCtx, Params, param};
use crate::crypto::{new_token, token_hash};
use crate::domain::time_fmt::rfc3339;
use crate::domain::{Role, token_id, validate_label};
use crate::error::{Error, Result};
use crate::json::member;

/// `GET`: `{"tokens": [{id, name, role, created}]}`, oldest first.
#[utoipa::path(
    get,
    path = "/api/orgs/{org}/tokens",
    tag = "tokens",
    responses((status = 200, description = "The org's tokens, oldest first (never their values)", body = super::schema::orgs::TokenList)),
    security(("token" = ["admin"])),
    extensions(("x-tarmac-extension" = json!(true))),
)]
pub(super) async fn list(State(state): State<AppState>, ctx: OrgCtx) -> Result<Json<Value>> {
    ctx.require_admin()?;
    let tokens: Vec<Value> = state
        .deps
        .tokens
        .list_tokens(&ctx.org)
        .await?
        .into_iter()
        .map(|t| {
            json!({"id": t.id, "name": t.name, "role": t.role.as_str(), "created": rfc3339(t.created)})
        })
        .collect();
    Ok(Json(json!({ "tokens": tokens })))
}

/// `POST` `{"name", "role": admin|write|read}` (role `write` by default): 200 `{id,
/// tokenValue, name, role}`.
#[utoipa::path(
    post,
    path = "/api/orgs/{org}/tokens",
    tag = "tokens",
    request_body = super::schema::orgs::TokenCreateRequest,
    responses((status = 200, description = "Created; its value is shown this once", body = super::schema::orgs::TokenCreated)),
    security(("token" = ["admin"])),
    extensions(("x-tarmac-extension" = json!(true))),
)]
pub(super) async fn create(
    State(state): State<AppState>,
    ctx: OrgCtx,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>> {
    ctx.require_admin()?;
    let name = match member(&body, "name") {
        Some(Value::String(n)) => n.trim().to_string(),
        _ => String::new(),
    };
    validate_label(&name)?;
    let role: Role = match member(&body, "role") {
        None => Role::Write,
        Some(Value::String(r)) => r.parse()?,
        Some(_) => return Err(Error::invalid("role must be admin, write or read")),
    };
    let token = new_token();
    let hash = token_hash(&token);
    state
        .deps
        .tokens
        .create_token(&hash, &ctx.org, role, &name)
        .await?;
    Ok(Json(json!({
        "id": token_id(&hash),
        "tokenValue": token,
        "name": name,
        "role": role.as_str(),
    })))
}

/// `DELETE /{id}`: 204; 404 if the org has no such token. The token authenticates nothing
/// from then on.
#[utoipa::path(
    delete,
    path = "/api/orgs/{org}/tokens/{id}",
    tag = "tokens",
    params(("id" = String, Path, description = "The token's public id")),
    responses((status = 204, description = "Revoked: it authenticates nothing from then on")),
    security(("token" = ["admin"])),
    extensions(("x-tarmac-extension" = json!(true))),
)]
pub(super) async fn revoke(
    State(state): State<AppState>,
    ctx: OrgCtx,
    Params(p): Params,
) -> Result<StatusCode> {
    ctx.require_admin()?;
    state
        .deps
        .tokens
        .delete_token(&ctx.org, &param(&p, "id"))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
