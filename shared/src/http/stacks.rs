//! Stacks, pause and resume, metadata, and the caller's identity.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::AppState;
use super::extract::{Auth, JsonBody, OrgCtx, Params, StackCtx, authorize, param};
use super::wire;
use crate::domain::stacks::{StackInfo, Tags, validate_tags};
use crate::domain::{JobStatus, Role, StackRef};
use crate::error::{Error, Result};

/// The caller: a token stands for a user named after it, in its one org. The Pulumi CLI
/// needs every `githubLogin` non-empty.
#[utoipa::path(
    get,
    path = "/api/user",
    tag = "user",
    responses((status = 200, description = "The caller", body = super::schema::stacks::User)),
    security(("token" = ["read"])),
)]
pub(super) async fn current_user(Auth(p): Auth) -> Json<Value> {
    // Pulumi's org roles: an admin token is an org admin, any other a member.
    let role = if p.role == Role::Admin {
        "admin"
    } else {
        "member"
    };
    Json(json!({
        "id": p.token_name,
        "name": p.token_name,
        "githubLogin": p.token_name,
        "email": "",
        "avatarUrl": "",
        "hasMFA": false,
        "isOrgManaged": false,
        "isManagedByMultiOrg": false,
        "organizations": [{ "githubLogin": p.org, "name": p.org, "avatarUrl": "", "role": role }],
        "identities": [],
        "tokenInfo": { "name": p.token_name, "organization": p.org, "team": "", "role": p.role.as_str() },
    }))
}

/// `GET /api/user/organizations/default`: the token's org, in the (untagged, PascalCase) shape
/// the Pulumi CLI reads when no default org is configured.
#[utoipa::path(
    get,
    path = "/api/user/organizations/default",
    tag = "user",
    responses((status = 200, description = "The token's organization", body = super::schema::stacks::DefaultOrg)),
    security(("token" = ["read"])),
)]
pub(super) async fn default_org(Auth(p): Auth) -> Json<Value> {
    Json(json!({ "GitHubLogin": p.org, "Messages": [] }))
}

/// `GET /api/capabilities`: none of Pulumi Cloud's (delta checkpoints, batch encryption...),
/// and Tarmac's own under `tarmac`, which Pulumi clients ignore: its version, and the engines
/// and git its deployments find (empty where this process does not run them).
#[utoipa::path(
    get,
    path = "/api/capabilities",
    tag = "user",
    responses((status = 200, description = "Capabilities", body = super::schema::stacks::Capabilities)),
)]
pub(super) async fn capabilities(State(state): State<AppState>) -> Json<Value> {
    let engines: Vec<Value> = state
        .deps
        .tools
        .iter()
        .map(|t| json!({"name": t.name, "found": t.found(), "path": t.path, "version": t.version}))
        .collect();
    Json(json!({
        "capabilities": [],
        "tarmac": {
            "version": env!("CARGO_PKG_VERSION"),
            "engines": engines,
            // The quickstart's repository may be cloned (`tarmac serve --demo`).
            "demo": state.deps.local_repos.any_allowed(),
        },
    }))
}

/// `GET S`: the stack resource, as the Pulumi CLI, Automation API and the Service provider
/// read it.
#[utoipa::path(
    get,
    path = "/api/stacks/{org}/{project}/{stack}",
    tag = "stacks",
    responses((status = 200, description = "The stack", body = super::schema::stacks::Stack)),
    security(("token" = ["read"])),
)]
pub(super) async fn get_stack(State(state): State<AppState>, ctx: StackCtx) -> Result<Json<Value>> {
    let info = state
        .deps
        .stacks
        .get_stack(&ctx.stack)
        .await?
        .ok_or_else(|| Error::not_found(format!("stack '{}' not found", ctx.stack)))?;
    Ok(Json(wire::stack(&info)))
}

/// `HEAD /api/stacks/{org}/{project}`: whether the project has a stack (200) or not (404).
#[utoipa::path(
    head,
    path = "/api/stacks/{org}/{project}",
    tag = "stacks",
    responses((status = 200, description = "The project has a stack")),
    security(("token" = ["read"])),
)]
pub(super) async fn head_project(
    State(state): State<AppState>,
    Auth(p): Auth,
    Params(params): Params,
) -> Result<StatusCode> {
    let org = param(&params, "org");
    let project = param(&params, "project");
    let missing = || Error::not_found(format!("project '{org}/{project}' not found"));
    authorize(&p, &org, Role::Read, missing)?;
    let stacks = state.deps.stacks.list_stacks(&org).await?;
    if stacks.iter().any(|s| s.stack.project == project) {
        Ok(StatusCode::OK)
    } else {
        Err(missing())
    }
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub(super) struct UserStacksQuery {
    organization: Option<String>,
    project: Option<String>,
    tag_name: Option<String>,
    tag_value: Option<String>,
    continuation_token: Option<String>,
    max_results: Option<usize>,
}

/// `GET /api/user/stacks`: the caller's org's stacks (`pulumi stack ls`), filtered by
/// project and tag, paged by an opaque continuation token.
#[utoipa::path(
    get,
    path = "/api/user/stacks",
    tag = "stacks",
    params(UserStacksQuery),
    responses((status = 200, description = "The organization's stacks", body = super::schema::stacks::UserStacks)),
    security(("token" = ["read"])),
)]
pub(super) async fn user_stacks(
    State(state): State<AppState>,
    Auth(p): Auth,
    super::extract::Query(q): super::extract::Query<UserStacksQuery>,
) -> Result<Json<Value>> {
    let org = q.organization.clone().unwrap_or_else(|| p.org.clone());
    authorize(&p, &org, Role::Read, || {
        Error::not_found(format!("organization '{org}' not found"))
    })?;
    let limit = q.max_results.unwrap_or(500).clamp(1, 2000);
    let start = match q.continuation_token.as_deref() {
        None | Some("") => 0,
        Some(t) => t.parse::<usize>().map_err(|_| {
            Error::invalid(format!(
                "'{t}' is not a continuation token from this server"
            ))
        })?,
    };
    let matching: Vec<_> = state
        .deps
        .stacks
        .list_stacks(&org)
        .await?
        .into_iter()
        .filter(|s| q.project.as_ref().is_none_or(|p| &s.stack.project == p))
        .filter(|s| match (&q.tag_name, &q.tag_value) {
            (Some(name), value) => s
                .tags
                .get(name)
                .is_some_and(|v| value.as_ref().is_none_or(|want| v == want)),
            (None, _) => true,
        })
        .collect();
    let mut page = Vec::new();
    for info in matching.iter().skip(start).take(limit) {
        let mut summary = wire::stack_summary(info);
        // When its last update ended (unix seconds), as `pulumi stack ls` shows it.
        let last = state
            .deps
            .deployments
            .update_by_version(&info.stack, info.update_version)
            .await?
            .and_then(|d| d.update)
            .map(|u| u.ended.unwrap_or(u.started).unix_timestamp());
        if let Some(t) = last {
            summary["lastUpdate"] = json!(t);
        }
        page.push(summary);
    }
    let mut body = json!({ "stacks": page });
    if start + limit < matching.len() {
        body["continuationToken"] = json!((start + limit).to_string());
    }
    Ok(Json(body))
}

/// `POST /api/stacks/{org}/{project}` with `{"stackName"}`: 200, or 409 if it exists.
#[utoipa::path(
    post,
    path = "/api/stacks/{org}/{project}",
    tag = "stacks",
    request_body = super::schema::stacks::CreateStackRequest,
    responses((status = 200, description = "Created (and its first deployment queued, if asked)", body = super::schema::stacks::CreatedStack), (status = 409, description = "The stack exists", body = super::openapi::ErrorBody)),
    security(("token" = ["write"])),
)]
pub(super) async fn create_stack(
    State(state): State<AppState>,
    Auth(p): Auth,
    Params(params): Params,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>> {
    let org = param(&params, "org");
    let project = param(&params, "project");
    authorize(&p, &org, Role::Write, || {
        Error::not_found(format!("organization '{org}' not found"))
    })?;
    let name = crate::json::member(&body, "stackName")
        .and_then(|v| v.as_str())
        .ok_or_else(|| Error::invalid("stackName is required"))?;
    let stack = StackRef::new(&org, &project, name)?;
    // Checked before anything is written.
    let tags: Tags = match crate::json::member(&body, "tags") {
        None => Tags::new(),
        Some(v) => serde_json::from_value(v.clone())
            .map_err(|_| Error::invalid("tags must be an object of strings"))?,
    };
    validate_tags(&tags)?;
    let provision = Provision::read(&state, &p, &stack, &body).await?;
    state.deps.stacks.create_stack(&stack).await?;
    if !tags.is_empty() {
        crate::tags::change(&state.deps, &stack, |_| Ok(tags.clone())).await?;
    }
    let mut out =
        json!({ "orgName": stack.org, "projectName": stack.project, "stackName": stack.stack });
    if let Some(d) = provision.write(&state, &stack).await? {
        out["deployment"] = json!({
            "id": d.id,
            "version": d.version,
            "consoleUrl": state.deps.console_url(&stack, d.version),
        });
    }
    Ok(Json(out))
}

/// Tarmac's one-request signup flow on `POST /api/stacks/{org}/{project}`: beside Pulumi's
/// `stackName` and `tags`, `deploymentSettings` become the new stack's settings and
/// `deployment` (`{operation, ...}`, a create-deployment body) its first deployment. All of it
/// is checked before anything is written.
struct Provision {
    settings: Option<Value>,
    deployment: Option<crate::domain::NewDeployment>,
}

impl Provision {
    async fn read(
        state: &AppState,
        p: &crate::domain::Principal,
        stack: &StackRef,
        body: &Value,
    ) -> Result<Self> {
        let settings = match crate::json::member(body, "deploymentSettings") {
            None | Some(Value::Null) => None,
            Some(v @ Value::Object(_)) => {
                let canonical = crate::settings::strip_nulls(&crate::settings::canonicalize(
                    v,
                    &state.deps.cipher.for_org(&stack.org),
                )?);
                crate::settings::check_stored(&canonical)?;
                super::settings::check_approvals_change(
                    p.role,
                    &Value::Null,
                    &canonical["approvals"],
                )?;
                let pool = canonical["agentPoolID"]
                    .as_str()
                    .filter(|p| !p.trim().is_empty());
                crate::service::check_pool(&state.deps, &stack.org, pool).await?;
                Some(canonical)
            }
            Some(_) => return Err(Error::invalid("deploymentSettings must be an object")),
        };
        let deployment = match crate::json::member(body, "deployment") {
            None | Some(Value::Null) => None,
            Some(request @ Value::Object(_)) => {
                let req = crate::service::CreateRequest::new(stack, request, "api", &p.token_name);
                Some(crate::service::prepare(&state.deps, &req, settings.as_ref()).await?)
            }
            Some(_) => {
                return Err(Error::invalid(
                    "deployment must be an object: a create-deployment request, such as {\"operation\": \"update\"}",
                ));
            }
        };
        Ok(Self {
            settings,
            deployment,
        })
    }

    /// Writes the settings, then queues the deployment; returns it.
    async fn write(
        self,
        state: &AppState,
        stack: &StackRef,
    ) -> Result<Option<crate::domain::Deployment>> {
        if let Some(settings) = &self.settings {
            state.deps.stacks.put_settings(stack, settings, 0).await?;
        }
        let Some(new) = self.deployment else {
            return Ok(None);
        };
        let d = state.deps.deployments.create_deployment(new).await?;
        crate::service::queued(&state.deps, &d).await;
        Ok(Some(d))
    }
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub(super) struct DeleteQuery {
    force: Option<bool>,
    /// The Pulumi Service provider's spelling.
    force_destroy: Option<bool>,
}

/// Deletes the stack, its settings, deployments, logs and engine state. Without `force` (the
/// CLI's) or `forceDestroy` (the Service provider's), a stack whose last update left resources
/// is kept: deleting its state would orphan them.
#[utoipa::path(
    delete,
    path = "/api/stacks/{org}/{project}/{stack}",
    tag = "stacks",
    params(DeleteQuery),
    responses((status = 204, description = "Deleted, with its settings, deployments, logs and state")),
    security(("token" = ["write"])),
)]
pub(super) async fn delete_stack(
    State(state): State<AppState>,
    ctx: StackCtx,
    super::extract::Query(q): super::extract::Query<DeleteQuery>,
) -> Result<StatusCode> {
    let force = q.force.unwrap_or(false) || q.force_destroy.unwrap_or(false);
    if !force {
        let info = state.deps.stacks.get_stack(&ctx.stack).await?;
        if info.is_some_and(|i| i.resource_count.is_some_and(|n| n > 0)) {
            return Err(Error::invalid(
                "Bad Request: Stack still contains resources.",
            ));
        }
    }
    state.deps.stacks.delete_stack(&ctx.stack).await?;
    state.deps.forget_state(&ctx.stack).await;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get,
    path = "/export",
    tag = "stacks",
    responses((status = 200, description = "The stack's outputs", body = super::schema::stacks::Export)),
    security(("token" = ["read"])),
)]
pub(super) async fn export(State(state): State<AppState>, ctx: StackCtx) -> Result<Json<Value>> {
    let outputs = state
        .deps
        .stacks
        .get_outputs(&ctx.stack)
        .await?
        .ok_or_else(|| Error::not_found(format!("stack '{}' not found", ctx.stack)))?;
    Ok(Json(wire::export(&ctx.stack, &outputs)))
}

#[utoipa::path(
    post,
    path = "/deployments/pause",
    tag = "pause",
    responses((status = 204, description = "Paused: its queued deployments wait")),
    security(("token" = ["write"])),
    extensions(("x-tarmac-extension" = json!(true))),
)]
pub(super) async fn pause_stack(
    State(state): State<AppState>,
    ctx: StackCtx,
) -> Result<StatusCode> {
    set_stack_paused(&state, &ctx.stack, true).await
}

#[utoipa::path(
    post,
    path = "/deployments/resume",
    tag = "pause",
    responses((status = 204, description = "Resumed")),
    security(("token" = ["write"])),
    extensions(("x-tarmac-extension" = json!(true))),
)]
pub(super) async fn resume_stack(
    State(state): State<AppState>,
    ctx: StackCtx,
) -> Result<StatusCode> {
    set_stack_paused(&state, &ctx.stack, false).await?;
    // Its deployments' messages were dropped while it was paused.
    crate::service::resend_stack(&state.deps, &ctx.stack).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Where the queue is separate from the store (AWS), a paused org's deployments had their
/// messages dropped; resuming sends them again now rather than at the reconciler's next look.
/// Best effort: the reconciler covers a failure here. (A stack's: `service::resend_stack`.)
async fn resend_org(state: &AppState, org: &str) {
    let Some(queue) = &state.deps.queue else {
        return;
    };
    let now = time::OffsetDateTime::now_utc();
    let queued = match state.deps.runs.queued_before(now).await {
        Ok(q) => q,
        Err(e) => {
            return tracing::warn!(error = %e.chain(), "could not list queued deployments to re-send");
        }
    };
    let attempt = now.unix_timestamp_nanos() as u64;
    for m in queued.iter().filter(|m| m.org == org) {
        if let Err(e) = queue.send(m, attempt).await {
            tracing::warn!(deployment_id = %m.deployment_id, error = %e.chain(), "could not re-send on resume");
        }
    }
}

async fn set_stack_paused(state: &AppState, stack: &StackRef, paused: bool) -> Result<StatusCode> {
    state
        .deps
        .stacks
        .set_stack_paused(stack, paused)
        .await
        .map_err(|e| match e {
            Error::NotFound(_) => Error::not_found(format!("stack '{stack}' not found")),
            other => other,
        })?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get,
    path = "/deployments/metadata",
    tag = "pause",
    responses((status = 200, description = "Pause flags, schedules, drift and git sync", body = super::schema::stacks::StackMetadata)),
    security(("token" = ["read"])),
    extensions(("x-tarmac-extension" = json!(true))),
)]
pub(super) async fn stack_metadata(
    State(state): State<AppState>,
    ctx: StackCtx,
) -> Result<Json<Value>> {
    let stack_paused = state
        .deps
        .stacks
        .stack_paused(&ctx.stack)
        .await?
        .ok_or_else(|| Error::not_found(format!("stack '{}' not found", ctx.stack)))?;
    let org_paused = state.deps.orgs.org_paused(&ctx.stack.org).await?;
    Ok(Json(json!({
        "paused": stack_paused || org_paused,
        "stackPaused": stack_paused,
        "organizationPaused": org_paused,
        "hasSchedules": super::schedules::has_schedules(&state, &ctx.stack).await?,
        "drift": super::schedules::drift_status_of(&state, &ctx.stack).await?,
        "gitSync": git_sync_of(&state, &ctx.stack).await?,
    })))
}

/// `GET S/deployments/sync` (a Tarmac extension): what git sync has seen of the stack's branch,
/// and when it looks next. 404 if the stack does not exist; `{"enabled": false}` if its sync is
/// off.
#[utoipa::path(
    get,
    path = "/deployments/sync",
    tag = "git-sync",
    responses((status = 200, description = "The stack's git sync", body = super::schema::stacks::GitSync)),
    security(("token" = ["read"])),
    extensions(("x-tarmac-extension" = json!(true))),
)]
pub(super) async fn git_sync(State(state): State<AppState>, ctx: StackCtx) -> Result<Json<Value>> {
    if !state.deps.stacks.stack_exists(&ctx.stack).await? {
        return Err(Error::not_found(format!("stack '{}' not found", ctx.stack)));
    }
    Ok(Json(git_sync_of(&state, &ctx.stack).await?))
}

async fn git_sync_of(state: &AppState, stack: &StackRef) -> Result<Value> {
    Ok(match state.deps.stacks.get_sync(stack).await? {
        Some((sync, next)) => wire::git_sync(&sync, next),
        None => json!({"enabled": false}),
    })
}

/// `DELETE S/deployments/cache`: empties the stack's dependency cache (`TARMAC_CACHE_DIR` and
/// the npm, pip and Go caches its runs use), so the next run starts without it. 409 while a run
/// of the stack uses it. In AWS mode each worker's cache is its own and short-lived: accepted,
/// and nothing to do here.
#[utoipa::path(
    delete,
    path = "/deployments/cache",
    tag = "stacks",
    responses((status = 204, description = "Emptied"), (status = 409, description = "A run of the stack is using it", body = super::openapi::ErrorBody)),
    security(("token" = ["write"])),
)]
pub(super) async fn clear_cache(
    State(state): State<AppState>,
    ctx: StackCtx,
) -> Result<StatusCode> {
    if !state.deps.stacks.stack_exists(&ctx.stack).await? {
        return Err(Error::not_found(format!("stack '{}' not found", ctx.stack)));
    }
    if let Some(cache) = state.deps.run_cache.clone() {
        let stack = ctx.stack.clone();
        let cleared = tokio::task::spawn_blocking(move || cache.clear_stack(&stack))
            .await
            .map_err(|e| Error::internal(format!("clearing the cache: {e}")))?
            .map_err(|e| Error::internal(format!("clearing the cache: {e}")))?;
        if !cleared {
            return Err(Error::conflict(format!(
                "a deployment of '{}' is using its cache; clear it when the run has ended",
                ctx.stack
            )));
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    post,
    path = "/api/orgs/{org}/deployments/pause",
    tag = "pause",
    responses((status = 204, description = "Paused")),
    security(("token" = ["admin"])),
    extensions(("x-tarmac-extension" = json!(true))),
)]
pub(super) async fn pause_org(State(state): State<AppState>, ctx: OrgCtx) -> Result<StatusCode> {
    ctx.require_admin()?;
    state.deps.orgs.set_org_paused(&ctx.org, true).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    post,
    path = "/api/orgs/{org}/deployments/resume",
    tag = "pause",
    responses((status = 204, description = "Resumed")),
    security(("token" = ["admin"])),
    extensions(("x-tarmac-extension" = json!(true))),
)]
pub(super) async fn resume_org(State(state): State<AppState>, ctx: OrgCtx) -> Result<StatusCode> {
    ctx.require_admin()?;
    state.deps.orgs.set_org_paused(&ctx.org, false).await?;
    resend_org(&state, &ctx.org).await;
    Ok(StatusCode::NO_CONTENT)
}

fn limit_body(l: &crate::domain::OrgLimit) -> Value {
    json!({ "maxConcurrent": l.max_concurrent, "running": l.running })
}

/// `GET /api/orgs/{org}/deployments/limits` (Tarmac's): the org's concurrency limit and what it
/// runs now.
#[utoipa::path(
    get,
    path = "/api/orgs/{org}/deployments/limits",
    tag = "limits",
    responses((status = 200, description = "The limit and what runs now", body = super::schema::stacks::OrgLimit)),
    security(("token" = ["read"])),
    extensions(("x-tarmac-extension" = json!(true))),
)]
pub(super) async fn get_limits(State(state): State<AppState>, ctx: OrgCtx) -> Result<Json<Value>> {
    Ok(Json(limit_body(
        &state.deps.orgs.org_limit(&ctx.org).await?,
    )))
}

/// `PUT /api/orgs/{org}/deployments/limits` `{"maxConcurrent": N | null}` (admins): at most N
/// of the org's deployments run at once; the rest wait, `queue.waitingFor: "org-limit"`.
#[utoipa::path(
    put,
    path = "/api/orgs/{org}/deployments/limits",
    tag = "limits",
    request_body = super::schema::stacks::OrgLimitRequest,
    responses((status = 200, description = "The new limit", body = super::schema::stacks::OrgLimit)),
    security(("token" = ["admin"])),
    extensions(("x-tarmac-extension" = json!(true))),
)]
pub(super) async fn put_limits(
    State(state): State<AppState>,
    ctx: OrgCtx,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>> {
    ctx.require_admin()?;
    if !body.is_object() {
        return Err(Error::invalid("the request body must be a JSON object"));
    }
    // The key is required (null removes the limit): a misspelt one must not lift it.
    let given = body
        .as_object()
        .and_then(|o| {
            o.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("maxConcurrent"))
        })
        .map(|(_, v)| v)
        .ok_or_else(|| {
            Error::invalid("maxConcurrent is required: a number, or null for no limit")
        })?;
    let max = match given {
        Value::Null => None,
        v => match v.as_i64() {
            Some(n) if (1..=crate::domain::MAX_ORG_CONCURRENCY).contains(&n) => Some(n as u32),
            _ => {
                return Err(Error::invalid(format!(
                    "maxConcurrent must be a whole number from 1 to {}, or null for no limit; not {v}",
                    crate::domain::MAX_ORG_CONCURRENCY
                )));
            }
        },
    };
    // Deployments held by the limit are tried again as runs end (embedded) or within seconds
    // (AWS: their messages come back), so nothing is re-sent here.
    state.deps.orgs.set_org_limit(&ctx.org, max).await?;
    Ok(Json(limit_body(
        &state.deps.orgs.org_limit(&ctx.org).await?,
    )))
}

#[utoipa::path(
    get,
    path = "/api/orgs/{org}/deployments/metadata",
    tag = "pause",
    responses((status = 200, description = "Pause flags and deployment counts", body = super::schema::stacks::OrgMetadata)),
    security(("token" = ["read"])),
    extensions(("x-tarmac-extension" = json!(true))),
)]
pub(super) async fn org_metadata(
    State(state): State<AppState>,
    ctx: OrgCtx,
) -> Result<Json<Value>> {
    let s = state.deps.orgs.org_state(&ctx.org).await?;
    let n = |status: JobStatus| s.counts.0.get(&status).copied().unwrap_or(0);
    let total: u64 = s.counts.0.values().sum();
    Ok(Json(json!({
        "paused": s.paused,
        "pausedStacks": s.paused_stacks,
        "concurrency": state.deps.concurrency,
        "deploymentCounts": {
            "notStarted": n(JobStatus::NotStarted),
            "accepted": n(JobStatus::Accepted),
            "running": n(JobStatus::Running),
            "failed": n(JobStatus::Failed),
            "succeeded": n(JobStatus::Succeeded),
            "skipped": n(JobStatus::Skipped),
            "total": total,
        },
    })))
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub(super) struct OrgStacksQuery {
    query: Option<String>,
    page: Option<i64>,
    page_size: Option<i64>,
}

/// `GET /api/orgs/{org}/stacks` (Tarmac extension, for the console's overview): the org's
/// stacks, by project and name, each with its last deployment, drift status, pause flag and
/// whether it has schedules. `query` keeps stacks whose `project/stack` or a tag value contains
/// it (case-insensitive).
#[utoipa::path(
    get,
    path = "/api/orgs/{org}/stacks",
    tag = "stacks",
    params(OrgStacksQuery),
    responses((status = 200, description = "A page of the organization's stacks", body = super::schema::stacks::OrgStacks)),
    security(("token" = ["read"])),
    extensions(("x-tarmac-extension" = json!(true))),
)]
pub(super) async fn org_stacks(
    State(state): State<AppState>,
    ctx: OrgCtx,
    super::extract::Query(q): super::extract::Query<OrgStacksQuery>,
) -> Result<Json<Value>> {
    let page = super::deployments::page_request(q.page, q.page_size)?;
    let needle = q.query.unwrap_or_default().to_lowercase();
    let matching: Vec<StackInfo> = state
        .deps
        .stacks
        .list_stacks(&ctx.org)
        .await?
        .into_iter()
        .filter(|s| {
            needle.is_empty()
                || format!("{}/{}", s.stack.project, s.stack.stack)
                    .to_lowercase()
                    .contains(&needle)
                || s.tags.values().any(|v| v.to_lowercase().contains(&needle))
        })
        .collect();
    let start = (page.page as usize - 1) * page.page_size as usize;
    let mut stacks = Vec::new();
    for info in matching.iter().skip(start).take(page.page_size as usize) {
        let last = state
            .deps
            .deployments
            .list_stack_deployments(
                &info.stack,
                crate::domain::PageRequest {
                    page: 1,
                    page_size: 1,
                    ascending: false,
                },
            )
            .await?;
        stacks.push(json!({
            "orgName": info.stack.org,
            "projectName": info.stack.project,
            "stackName": info.stack.stack,
            "tags": info.tags,
            "paused": info.paused,
            "hasSchedules": super::schedules::has_schedules(&state, &info.stack).await?,
            "drift": super::schedules::drift_status_of(&state, &info.stack).await?,
            "lastDeployment": last.items.first().map(wire::snapshot),
        }));
    }
    Ok(Json(json!({
        "stacks": stacks,
        "total": matching.len(),
        "itemsPerPage": page.page_size,
    })))
}
