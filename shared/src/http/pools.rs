//! Agent pools (`/api/orgs/{org}/agent-pools`), in the shape of Pulumi's customer-managed agent
//! pools: create one (its token shown this once; only its hash is stored), list, read with its
//! agents, rename, delete. Reading needs `read`; changes need an admin token.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};
use time::OffsetDateTime;

use super::AppState;
use super::extract::{JsonBody, OrgCtx, Params, Query, param};
use crate::crypto::{new_secret, token_hash};
use crate::domain::pools::{AgentPool, parse_pool_id, validate_pool_description};
use crate::domain::validate_label;
use crate::error::{Error, Result};
use crate::json::member;

/// The prefix of a pool token, so that one pasted in the wrong place is recognisable.
pub const POOL_TOKEN_PREFIX: &str = "tpa_";

fn unix(t: OffsetDateTime) -> i64 {
    t.unix_timestamp()
}

fn not_found(id: &str) -> Error {
    Error::not_found(format!("agent pool '{id}' not found"))
}

/// The org's pool named by the path, or 404.
async fn pool_of(state: &AppState, ctx: &OrgCtx, p: &Params) -> Result<AgentPool> {
    let raw = param(&p.0, "poolId");
    let id = parse_pool_id(&raw).ok_or_else(|| not_found(&raw))?;
    state
        .deps
        .pools
        .get_pool(&ctx.org, &id)
        .await?
        .ok_or_else(|| not_found(&id))
}

fn text(body: &Value, key: &str) -> Result<Option<String>> {
    match member(body, key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.trim().to_string())),
        Some(_) => Err(Error::invalid(format!("{key} must be a string"))),
    }
}

/// `GET`: `{"agentPools": [{created, id, name, description, lastSeen, status, isDefault}]}`,
/// oldest first; `lastSeen` and `status` are those of the pool's most recently seen agent.
#[utoipa::path(
    get,
    path = "/api/orgs/{org}/agent-pools",
    tag = "agent-pools",
    responses((status = 200, description = "The org's agent pools, oldest first", body = super::schema::orgs::AgentPoolList)),
    security(("token" = ["read"])),
)]
pub(super) async fn list(State(state): State<AppState>, ctx: OrgCtx) -> Result<Json<Value>> {
    let now = OffsetDateTime::now_utc();
    let mut pools = Vec::new();
    for pool in state.deps.pools.list_pools(&ctx.org).await? {
        let agents = state.deps.pools.list_agents(&pool).await?;
        let latest = agents.first();
        pools.push(json!({
            "created": unix(pool.created),
            "id": pool.id,
            "name": pool.name,
            "description": pool.description,
            "lastSeen": latest.map_or(0, |a| unix(a.last_seen)),
            "status": latest.map_or("offline", |a| a.status(now)),
            "isDefault": false,
        }));
    }
    Ok(Json(json!({ "agentPools": pools })))
}

/// `POST` `{"name", "description"}`: 200 `{id, tokenValue}`. The token is shown this once.
#[utoipa::path(
    post,
    path = "/api/orgs/{org}/agent-pools",
    tag = "agent-pools",
    request_body = super::schema::orgs::PoolCreateRequest,
    responses((status = 200, description = "Created; its token is shown this once", body = super::schema::orgs::PoolCreated)),
    security(("token" = ["admin"])),
)]
pub(super) async fn create(
    State(state): State<AppState>,
    ctx: OrgCtx,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>> {
    ctx.require_admin()?;
    let name = text(&body, "name")?.unwrap_or_default();
    validate_label(&name)?;
    let description = text(&body, "description")?.unwrap_or_default();
    validate_pool_description(&description)?;
    let pool = AgentPool {
        id: uuid::Uuid::new_v4().to_string(),
        org: ctx.org.clone(),
        name,
        description,
        created: OffsetDateTime::now_utc(),
    };
    let token = new_secret(POOL_TOKEN_PREFIX);
    state
        .deps
        .pools
        .create_pool(&pool, &token_hash(&token))
        .await?;
    tracing::info!(org = %ctx.org, pool = %pool.id, by = %ctx.principal.token_name, "agent pool created");
    Ok(Json(json!({ "id": pool.id, "tokenValue": token })))
}

/// `GET /{poolId}`: `{created, id, name, description, agents: [{version, platform, hostname,
/// ip, pid, lastSeen, status}]}`.
#[utoipa::path(
    get,
    path = "/api/orgs/{org}/agent-pools/{poolId}",
    tag = "agent-pools",
    params(("poolId" = uuid::Uuid, Path, description = "The agent pool's id")),
    responses((status = 200, description = "The pool, with its agents", body = super::schema::orgs::AgentPoolDetail)),
    security(("token" = ["read"])),
)]
pub(super) async fn get(
    State(state): State<AppState>,
    ctx: OrgCtx,
    p: Params,
) -> Result<Json<Value>> {
    let pool = pool_of(&state, &ctx, &p).await?;
    let now = OffsetDateTime::now_utc();
    let agents: Vec<Value> = state
        .deps
        .pools
        .list_agents(&pool)
        .await?
        .into_iter()
        .map(|a| {
            json!({
                "version": a.version,
                "platform": a.platform,
                "hostname": a.hostname,
                "ip": a.ip,
                "pid": a.pid,
                "lastSeen": unix(a.last_seen),
                "status": a.status(now),
            })
        })
        .collect();
    Ok(Json(json!({
        "created": unix(pool.created),
        "id": pool.id,
        "name": pool.name,
        "description": pool.description,
        "agents": agents,
    })))
}

/// `PATCH /{poolId}` `{"name"?, "description"?}`: only what is given changes. 200 `{name,
/// description}`.
#[utoipa::path(
    patch,
    path = "/api/orgs/{org}/agent-pools/{poolId}",
    tag = "agent-pools",
    params(("poolId" = uuid::Uuid, Path, description = "The agent pool's id")),
    request_body = super::schema::orgs::PoolPatchRequest,
    responses((status = 200, description = "Renamed or redescribed", body = super::schema::orgs::PoolPatched)),
    security(("token" = ["admin"])),
)]
pub(super) async fn patch(
    State(state): State<AppState>,
    ctx: OrgCtx,
    p: Params,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>> {
    ctx.require_admin()?;
    if !body.is_object() {
        return Err(Error::invalid(
            "send a JSON object: {\"name\", \"description\"}",
        ));
    }
    let name = text(&body, "name")?;
    let description = text(&body, "description")?;
    if let Some(n) = &name {
        validate_label(n)?;
    }
    if let Some(d) = &description {
        validate_pool_description(d)?;
    }
    let mut pool = pool_of(&state, &ctx, &p).await?;
    pool.name = name.unwrap_or(pool.name);
    pool.description = description.unwrap_or(pool.description);
    state.deps.pools.update_pool(&pool).await?;
    Ok(Json(
        json!({ "name": pool.name, "description": pool.description }),
    ))
}

#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct DeleteQuery {
    /// Delete even with queued or running deployments: the queued ones fail, the running ones
    /// are stopped.
    #[serde(default)]
    force: bool,
}

/// `DELETE /{poolId}[?force=true]`: 204. A pool with queued or running deployments is 409
/// unless `force`, which fails the queued ones (saying why in their log) and stops the running
/// ones. Its token authenticates nothing from then on.
#[utoipa::path(
    delete,
    path = "/api/orgs/{org}/agent-pools/{poolId}",
    tag = "agent-pools",
    params(("poolId" = uuid::Uuid, Path, description = "The agent pool's id"), DeleteQuery),
    responses(
        (status = 204, description = "Deleted, with its token and agents"),
        (status = 409, description = "The pool has queued or running deployments, and `force` is not set", body = super::openapi::ErrorBody),
    ),
    security(("token" = ["admin"])),
)]
pub(super) async fn delete(
    State(state): State<AppState>,
    ctx: OrgCtx,
    p: Params,
    Query(q): Query<DeleteQuery>,
) -> Result<StatusCode> {
    ctx.require_admin()?;
    let pool = pool_of(&state, &ctx, &p).await?;
    let deleted = state
        .deps
        .pools
        .delete_pool(&ctx.org, &pool.id, q.force)
        .await?;
    tracing::info!(org = %ctx.org, pool = %pool.id, failed = deleted.failed.len(),
        stopped = deleted.cancelled, "agent pool deleted");
    for (stack, id) in &deleted.failed {
        if let Ok(Some(d)) = state.deps.deployments.get_deployment(stack, *id).await {
            crate::webhooks::events::deployment(
                &state.deps,
                &d,
                crate::domain::hooks::Event::DeploymentFailed,
            )
            .await;
        }
    }
    Ok(StatusCode::NO_CONTENT)
}
