//! Webhooks, Pulumi's routes: `/api/orgs/{org}/hooks[...]` (admin to change) and
//! `S/hooks[...]` (write to change): create (201, 409 on a taken name), list, read, `PATCH`,
//! `DELETE` (204), `ping`, `deliveries`, and `deliveries/{id}/redeliver`.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use time::OffsetDateTime;

use super::AppState;
use super::extract::{JsonBody, OrgCtx, Params, StackCtx, authorize, param};
use crate::domain::Role;
use crate::error::{Error, Result};
use crate::ports::{HookStore, Outbox, OutboxMessage};
use crate::webhooks::dispatch::{deliver_now, render_delivery};
use crate::webhooks::events::hook_target;
use crate::webhooks::{Hook, HookScope, apply_request};

/// Deliveries listed per hook.
const DELIVERIES_SHOWN: usize = 100;

type Stores<'a> = (&'a Arc<dyn HookStore>, &'a Arc<dyn Outbox>);

fn stores(state: &AppState) -> Result<Stores<'_>> {
    match (&state.deps.hooks, &state.deps.outbox) {
        (Some(h), Some(o)) => Ok((h, o)),
        _ => Err(Error::not_found(
            "webhooks are not available in this deployment of Tarmac",
        )),
    }
}

/// The scope of an org route; changes need an admin token.
fn org_scope(ctx: &OrgCtx, change: bool) -> Result<HookScope> {
    if change {
        authorize(&ctx.principal, &ctx.org, Role::Admin, || {
            Error::not_found("organization not found")
        })?;
    }
    Ok(HookScope {
        org: ctx.org.clone(),
        stack: None,
    })
}

async fn stack_scope(state: &AppState, ctx: &StackCtx) -> Result<HookScope> {
    if !state.deps.stacks.stack_exists(&ctx.stack).await? {
        return Err(Error::not_found(format!("stack '{}' not found", ctx.stack)));
    }
    Ok(HookScope {
        org: ctx.stack.org.clone(),
        stack: Some(ctx.stack.clone()),
    })
}

async fn existing(state: &AppState, scope: &HookScope, name: &str) -> Result<Hook> {
    let (hooks, _) = stores(state)?;
    hooks
        .get_hook(scope, name)
        .await?
        .ok_or_else(|| Error::not_found(format!("webhook '{name}' not found")))
}

async fn create(state: &AppState, scope: HookScope, body: &Value) -> Result<Response> {
    let (hooks, _) = stores(state)?;
    let hook = apply_request(body, &scope, None, &state.deps.cipher.for_org(&scope.org))?;
    hooks.create_hook(&scope, &hook).await?;
    Ok((StatusCode::CREATED, Json(hook.render(&scope))).into_response())
}

async fn list(state: &AppState, scope: HookScope) -> Result<Response> {
    let (hooks, _) = stores(state)?;
    let all: Vec<Value> = hooks
        .list_hooks(&scope)
        .await?
        .iter()
        .map(|h| h.render(&scope))
        .collect();
    Ok(Json(all).into_response())
}

async fn read(state: &AppState, scope: HookScope, name: &str) -> Result<Response> {
    Ok(Json(existing(state, &scope, name).await?.render(&scope)).into_response())
}

async fn update(state: &AppState, scope: HookScope, name: &str, body: &Value) -> Result<Response> {
    let (hooks, _) = stores(state)?;
    let current = existing(state, &scope, name).await?;
    let hook = apply_request(
        body,
        &scope,
        Some(&current),
        &state.deps.cipher.for_org(&scope.org),
    )?;
    hooks.update_hook(&scope, &hook).await?;
    Ok(Json(hook.render(&scope)).into_response())
}

async fn delete(state: &AppState, scope: HookScope, name: &str) -> Result<Response> {
    let (hooks, _) = stores(state)?;
    hooks.delete_hook(&scope, name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Sends a ping now, past the queue, and answers with the delivery (200 whatever the receiver
/// answered: its code is in `responseCode`).
async fn ping(state: &AppState, scope: HookScope, name: &str) -> Result<Response> {
    let (_, outbox) = stores(state)?;
    existing(state, &scope, name).await?;
    let now = OffsetDateTime::now_utc();
    let m = OutboxMessage {
        id: uuid::Uuid::new_v4().to_string(),
        org: scope.org.clone(),
        target: hook_target(&scope, name),
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

async fn deliveries(state: &AppState, scope: HookScope, name: &str) -> Result<Response> {
    let (_, outbox) = stores(state)?;
    existing(state, &scope, name).await?;
    let rows: Vec<Value> = outbox
        .attempts(&hook_target(&scope, name), DELIVERIES_SHOWN)
        .await?
        .iter()
        .map(|(m, a, n)| render_delivery(m, a, *n as usize))
        .collect();
    Ok(Json(rows).into_response())
}

/// Sends a past message again, now, with its original id.
async fn redeliver(state: &AppState, scope: HookScope, name: &str, id: &str) -> Result<Response> {
    let (_, outbox) = stores(state)?;
    existing(state, &scope, name).await?;
    let missing = || Error::not_found(format!("event '{id}' not found for webhook '{name}'"));
    let (m, attempts) = outbox.message(id).await?.ok_or_else(missing)?;
    if m.target != hook_target(&scope, name) {
        return Err(missing());
    }
    let attempt = deliver_now(&state.deps, &m, attempts).await?;
    Ok(Json(render_delivery(&m, &attempt, attempts as usize + 1)).into_response())
}

// Org routes.

pub async fn org_create(
    State(s): State<AppState>,
    ctx: OrgCtx,
    JsonBody(b): JsonBody,
) -> Result<Response> {
    create(&s, org_scope(&ctx, true)?, &b).await
}
pub async fn org_list(State(s): State<AppState>, ctx: OrgCtx) -> Result<Response> {
    list(&s, org_scope(&ctx, false)?).await
}
pub async fn org_read(
    State(s): State<AppState>,
    ctx: OrgCtx,
    Params(p): Params,
) -> Result<Response> {
    read(&s, org_scope(&ctx, false)?, &param(&p, "name")).await
}
pub async fn org_update(
    State(s): State<AppState>,
    ctx: OrgCtx,
    Params(p): Params,
    JsonBody(b): JsonBody,
) -> Result<Response> {
    update(&s, org_scope(&ctx, true)?, &param(&p, "name"), &b).await
}
pub async fn org_delete(
    State(s): State<AppState>,
    ctx: OrgCtx,
    Params(p): Params,
) -> Result<Response> {
    delete(&s, org_scope(&ctx, true)?, &param(&p, "name")).await
}
pub async fn org_ping(
    State(s): State<AppState>,
    ctx: OrgCtx,
    Params(p): Params,
) -> Result<Response> {
    ping(&s, org_scope(&ctx, true)?, &param(&p, "name")).await
}
pub async fn org_deliveries(
    State(s): State<AppState>,
    ctx: OrgCtx,
    Params(p): Params,
) -> Result<Response> {
    deliveries(&s, org_scope(&ctx, false)?, &param(&p, "name")).await
}
pub async fn org_redeliver(
    State(s): State<AppState>,
    ctx: OrgCtx,
    Params(p): Params,
) -> Result<Response> {
    redeliver(
        &s,
        org_scope(&ctx, true)?,
        &param(&p, "name"),
        &param(&p, "event"),
    )
    .await
}

// Stack routes.

pub async fn stack_create(
    State(s): State<AppState>,
    ctx: StackCtx,
    JsonBody(b): JsonBody,
) -> Result<Response> {
    let scope = stack_scope(&s, &ctx).await?;
    create(&s, scope, &b).await
}
pub async fn stack_list(State(s): State<AppState>, ctx: StackCtx) -> Result<Response> {
    let scope = stack_scope(&s, &ctx).await?;
    list(&s, scope).await
}
pub async fn stack_read(
    State(s): State<AppState>,
    ctx: StackCtx,
    Params(p): Params,
) -> Result<Response> {
    let scope = stack_scope(&s, &ctx).await?;
    read(&s, scope, &param(&p, "name")).await
}
pub async fn stack_update(
    State(s): State<AppState>,
    ctx: StackCtx,
    Params(p): Params,
    JsonBody(b): JsonBody,
) -> Result<Response> {
    let scope = stack_scope(&s, &ctx).await?;
    update(&s, scope, &param(&p, "name"), &b).await
}
pub async fn stack_delete(
    State(s): State<AppState>,
    ctx: StackCtx,
    Params(p): Params,
) -> Result<Response> {
    let scope = stack_scope(&s, &ctx).await?;
    delete(&s, scope, &param(&p, "name")).await
}
pub async fn stack_ping(
    State(s): State<AppState>,
    ctx: StackCtx,
    Params(p): Params,
) -> Result<Response> {
    let scope = stack_scope(&s, &ctx).await?;
    ping(&s, scope, &param(&p, "name")).await
}
pub async fn stack_deliveries(
    State(s): State<AppState>,
    ctx: StackCtx,
    Params(p): Params,
) -> Result<Response> {
    let scope = stack_scope(&s, &ctx).await?;
    deliveries(&s, scope, &param(&p, "name")).await
}
pub async fn stack_redeliver(
    State(s): State<AppState>,
    ctx: StackCtx,
    Params(p): Params,
) -> Result<Response> {
    let scope = stack_scope(&s, &ctx).await?;
    redeliver(&s, scope, &param(&p, "name"), &param(&p, "event")).await
}
