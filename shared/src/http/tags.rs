//! Stack tags (`S/tags`): add one, replace them all, change one, remove one (Pulumi's
//! AddStackTag, UpdateStackTags, UpdateStackTag and DeleteStackTag).

use axum::extract::State;
use axum::http::StatusCode;
use serde_json::Value;

use super::AppState;
use super::extract::{JsonBody, Params, StackCtx, param};
use crate::domain::stacks::Tags;
use crate::error::{Error, Result};
use crate::json::member;

fn string(body: &Value, key: &str) -> Result<Option<String>> {
    match member(body, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Error::invalid(format!("{key} must be a string"))),
    }
}

/// `POST S/tags` `{"name", "value"}`: 204; 400 if the name is taken (Pulumi's tags are
/// immutable per key: remove, then add) or invalid.
#[utoipa::path(
    post,
    path = "/tags",
    tag = "tags",
    request_body = super::schema::tags::TagAddRequest,
    responses(
        (status = 204, description = "Added (a name the stack already has is refused with 400)"),
        (status = 409, description = "The stack's tags kept changing under this request; retry", body = super::openapi::ErrorBody),
    ),
    security(("token" = ["write"])),
)]
pub(super) async fn add(
    State(state): State<AppState>,
    ctx: StackCtx,
    JsonBody(body): JsonBody,
) -> Result<StatusCode> {
    let name = string(&body, "name")?.ok_or_else(|| Error::invalid("name is required"))?;
    let value = string(&body, "value")?.unwrap_or_default();
    crate::tags::change(&state.deps, &ctx.stack, |current| {
        if current.contains_key(&name) {
            return Err(Error::invalid(format!(
                "tag '{name}' already exists; change it with PATCH or remove it first"
            )));
        }
        let mut tags = current.clone();
        tags.insert(name.clone(), value.clone());
        Ok(tags)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PATCH S/tags` `{name: value, ...}`: the stack's tags become exactly these.
#[utoipa::path(
    patch,
    path = "/tags",
    tag = "tags",
    request_body = super::schema::tags::TagsReplaceRequest,
    responses(
        (status = 204, description = "The stack's tags are now exactly these"),
        (status = 409, description = "The stack's tags kept changing under this request; retry", body = super::openapi::ErrorBody),
    ),
    security(("token" = ["write"])),
)]
pub(super) async fn replace(
    State(state): State<AppState>,
    ctx: StackCtx,
    JsonBody(body): JsonBody,
) -> Result<StatusCode> {
    let tags: Tags = serde_json::from_value(body).map_err(|_| {
        Error::invalid("the request body must be an object of tag names to string values")
    })?;
    crate::tags::change(&state.deps, &ctx.stack, |_| Ok(tags.clone())).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PATCH S/tags/{name}` `{"value"}` (a `name` in the body, if any, must be the path's).
#[utoipa::path(
    patch,
    path = "/tags/{name}",
    tag = "tags",
    params(("name" = String, Path, description = "The tag's name")),
    request_body = super::schema::tags::TagUpdateRequest,
    responses(
        (status = 204, description = "Changed"),
        (status = 409, description = "The stack's tags kept changing under this request; retry", body = super::openapi::ErrorBody),
    ),
    security(("token" = ["write"])),
)]
pub(super) async fn update(
    State(state): State<AppState>,
    ctx: StackCtx,
    Params(p): Params,
    JsonBody(body): JsonBody,
) -> Result<StatusCode> {
    let name = param(&p, "name");
    if let Some(given) = string(&body, "name")?.filter(|n| *n != name) {
        return Err(Error::invalid(format!(
            "name '{given}' in the body does not match the path's '{name}'"
        )));
    }
    let value = string(&body, "value")?.ok_or_else(|| Error::invalid("value is required"))?;
    crate::tags::change(&state.deps, &ctx.stack, |current| {
        if !current.contains_key(&name) {
            return Err(Error::not_found(format!("tag '{name}' not found")));
        }
        let mut tags = current.clone();
        tags.insert(name.clone(), value.clone());
        Ok(tags)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE S/tags/{name}`: 204, or 404 if the stack has no such tag.
#[utoipa::path(
    delete,
    path = "/tags/{name}",
    tag = "tags",
    params(("name" = String, Path, description = "The tag's name")),
    responses(
        (status = 204, description = "Removed"),
        (status = 409, description = "The stack's tags kept changing under this request; retry", body = super::openapi::ErrorBody),
    ),
    security(("token" = ["write"])),
)]
pub(super) async fn delete(
    State(state): State<AppState>,
    ctx: StackCtx,
    Params(p): Params,
) -> Result<StatusCode> {
    let name = param(&p, "name");
    crate::tags::change(&state.deps, &ctx.stack, |current| {
        let mut tags = current.clone();
        tags.remove(&name)
            .ok_or_else(|| Error::not_found(format!("tag '{name}' not found")))?;
        Ok(tags)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
