//! Webhooks, Pulumi's routes: `/api/orgs/{org}/hooks[...]` (admin to change) and
//! `S/hooks[...]` (write to change): create (201, 409 on a taken name), list, read, `PATCH`,
//! `DELETE` (204), `ping`, `deliveries`, and `deliveries/{id}/redeliver`. One handler serves
//! both scopes; `HookCtx` reads which from the path.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use time::OffsetDateTime;

use axum::extract::FromRequestParts;
use axum::http::Method;
use axum::http::request::Parts;

use super::AppState;
use super::extract::{JsonBody, OrgCtx, Params, StackCtx, param};
use crate::delivery::{deliver_now, render_delivery};
use crate::error::{Error, Result};
use crate::ports::{HookStore, Outbox, OutboxMessage};
use crate::webhooks::events::hook_target;
use crate::webhooks::{Hook, HookScope, apply_request, render};

/// Deliveries listed per hook.
const DELIVERIES_SHOWN: usize = 100;

type Stores<'a> = (&'a Arc<dyn HookStore>, &'a Arc<dyn Outbox>);

fn stores(state: &AppState) -> Result<Stores<'_>> {
    Ok((&state.deps.hooks, &state.deps.outbox))
}

/// An authorised request on an org's or a stack's hooks, and the hook it names, if any. An
/// org's hooks change only with an admin token; a stack's with a write token, and the stack
/// must exist.
pub(super) struct HookCtx {
    scope: HookScope,
    name: String,
}

impl FromRequestParts<AppState> for HookCtx {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        let Params(params) = Params::from_request_parts(parts, state).await?;
        let name = param(&params, "name");
        let scope = if params.contains_key("project") {
            let ctx = StackCtx::from_request_parts(parts, state).await?;
            if !state.deps.stacks.stack_exists(&ctx.stack).await? {
                return Err(Error::not_found(format!("stack '{}' not found", ctx.stack)));
            }
            HookScope::for_stack(&ctx.stack)
        } else {
            let ctx = OrgCtx::from_request_parts(parts, state).await?;
            if parts.method != Method::GET {
                ctx.require_admin()?;
            }
            HookScope {
                org: ctx.org,
                stack: None,
            }
        };
        Ok(Self { scope, name })
    }
}

async fn existing(state: &AppState, scope: &HookScope, name: &str) -> Result<Hook> {
    let (hooks, _) = stores(state)?;
    hooks
        .get_hook(scope, name)
        .await?
        .ok_or_else(|| Error::not_found(format!("webhook '{name}' not found")))
}

#[utoipa::path(
    post,
    path = "/",
    tag = "hooks",
    request_body = super::schema::hooks::WebhookCreateRequest,
    responses(
        (status = 201, description = "Created (an organization's hooks need an admin token; a stack's, a write token)", body = super::schema::hooks::Webhook),
        (status = 409, description = "A webhook of that name exists in this scope", body = super::openapi::ErrorBody),
    ),
    security(("token" = ["write"])),
)]
pub(super) async fn create(
    State(state): State<AppState>,
    HookCtx { scope, .. }: HookCtx,
    JsonBody(body): JsonBody,
) -> Result<Response> {
    let (hooks, _) = stores(&state)?;
    let hook = apply_request(&body, &scope, None, &state.deps.cipher.for_org(&scope.org))?;
    hooks.create_hook(&scope, &hook).await?;
    Ok((StatusCode::CREATED, Json(render(&hook, &scope))).into_response())
}

#[utoipa::path(
    get,
    path = "/",
    tag = "hooks",
    responses((status = 200, description = "The organization's or the stack's webhooks (not the organization's under a stack)", body = Vec<super::schema::hooks::Webhook>)),
    security(("token" = ["read"])),
)]
pub(super) async fn list(
    State(state): State<AppState>,
    HookCtx { scope, .. }: HookCtx,
) -> Result<Response> {
    let (hooks, _) = stores(&state)?;
    let all: Vec<Value> = hooks
        .list_hooks(&scope)
        .await?
        .iter()
        .map(|h| render(h, &scope))
        .collect();
    Ok(Json(all).into_response())
}

#[utoipa::path(
    get,
    path = "/{name}",
    tag = "hooks",
    params(("name" = String, Path, description = "The webhook's name")),
    responses((status = 200, description = "The webhook", body = super::schema::hooks::Webhook)),
    security(("token" = ["read"])),
)]
pub(super) async fn read(
    State(state): State<AppState>,
    HookCtx { scope, name }: HookCtx,
) -> Result<Response> {
    Ok(Json(render(&existing(&state, &scope, &name).await?, &scope)).into_response())
}

#[utoipa::path(
    patch,
    path = "/{name}",
    tag = "hooks",
    params(("name" = String, Path, description = "The webhook's name")),
    request_body = super::schema::hooks::WebhookUpdateRequest,
    responses((status = 200, description = "The webhook, changed (an organization's hooks need an admin token; a stack's, a write token)", body = super::schema::hooks::Webhook)),
    security(("token" = ["write"])),
)]
pub(super) async fn update(
    State(state): State<AppState>,
    HookCtx { scope, name }: HookCtx,
    JsonBody(body): JsonBody,
) -> Result<Response> {
    let (hooks, _) = stores(&state)?;
    let current = existing(&state, &scope, &name).await?;
    let hook = apply_request(
        &body,
        &scope,
        Some(&current),
        &state.deps.cipher.for_org(&scope.org),
    )?;
    hooks.update_hook(&scope, &hook).await?;
    Ok(Json(render(&hook, &scope)).into_response())
}

#[utoipa::path(
    delete,
    path = "/{name}",
    tag = "hooks",
    params(("name" = String, Path, description = "The webhook's name")),
    responses((status = 204, description = "Deleted (an organization's hooks need an admin token; a stack's, a write token)")),
    security(("token" = ["write"])),
)]
pub(super) async fn delete(
    State(state): State<AppState>,
    HookCtx { scope, name }: HookCtx,
) -> Result<Response> {
    let (hooks, _) = stores(&state)?;
    hooks.delete_hook(&scope, &name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Sends a ping now, past the queue, and answers with the delivery (200 whatever the receiver
/// answered: its code is in `responseCode`).
#[utoipa::path(
    post,
    path = "/{name}/ping",
    tag = "hooks",
    params(("name" = String, Path, description = "The webhook's name")),
    responses((status = 200, description = "The ping's delivery, whatever the receiver answered (its status is `responseCode`) (an organization's hooks need an admin token; a stack's, a write token)", body = super::schema::hooks::WebhookDelivery)),
    security(("token" = ["write"])),
)]
pub(super) async fn ping(
    State(state): State<AppState>,
    HookCtx { scope, name }: HookCtx,
) -> Result<Response> {
    let (_, outbox) = stores(&state)?;
    existing(&state, &scope, &name).await?;
    let now = OffsetDateTime::now_utc();
    let m = OutboxMessage {
        id: uuid::Uuid::new_v4().to_string(),
        org: scope.org.clone(),
        target: hook_target(&scope, &name),
        kind: "ping".into(),
        event: "ping".into(),
        body: json!({"timestamp": now.unix_timestamp(), "message": "Just a friendly ping from Tarmac"})
            .to_string(),
        created: now,
    };
    outbox.enqueue(std::slice::from_ref(&m), false).await?;
    let attempt = deliver_now(&state.deps, &m, 0).await?;
    Ok(Json(render_delivery(&m, &attempt, 1)).into_response())
}

#[utoipa::path(
    get,
    path = "/{name}/deliveries",
    tag = "hooks",
    params(("name" = String, Path, description = "The webhook's name")),
    responses((status = 200, description = "The webhook's latest 100 delivery attempts", body = Vec<super::schema::hooks::WebhookDelivery>)),
    security(("token" = ["read"])),
)]
pub(super) async fn deliveries(
    State(state): State<AppState>,
    HookCtx { scope, name }: HookCtx,
) -> Result<Response> {
    let (_, outbox) = stores(&state)?;
    existing(&state, &scope, &name).await?;
    let rows: Vec<Value> = outbox
        .attempts(&hook_target(&scope, &name), DELIVERIES_SHOWN)
        .await?
        .iter()
        .map(|(m, a, n)| render_delivery(m, a, *n as usize))
        .collect();
    Ok(Json(rows).into_response())
}

/// Sends a past message again, now, with its original id.
#[utoipa::path(
    post,
    path = "/{name}/deliveries/{event}/redeliver",
    tag = "hooks",
    params(
        ("name" = String, Path, description = "The webhook's name"),
        ("event" = String, Path, description = "The message's id (a delivery's `id`)"),
    ),
    responses((status = 200, description = "The new attempt, sent now with the message's original id (an organization's hooks need an admin token; a stack's, a write token)", body = super::schema::hooks::WebhookDelivery)),
    security(("token" = ["write"])),
)]
pub(super) async fn redeliver(
    State(state): State<AppState>,
    HookCtx { scope, name }: HookCtx,
    Params(p): Params,
) -> Result<Response> {
    let (_, outbox) = stores(&state)?;
    existing(&state, &scope, &name).await?;
    let id = param(&p, "event");
    let missing = || Error::not_found(format!("event '{id}' not found for webhook '{name}'"));
    let (m, attempts) = outbox.message(&id).await?.ok_or_else(missing)?;
    if m.target != hook_target(&scope, &name) {
        return Err(missing());
    }
    let attempt = deliver_now(&state.deps, &m, attempts).await?;
    Ok(Json(render_delivery(&m, &attempt, attempts as usize + 1)).into_response())
}
