//! An org's GitHub connection (`/api/orgs/{org}/integrations/github`, admin) and the webhook
//! GitHub posts to (`.../github/webhook`, authenticated by its signature, not a token).

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::AppState;
use super::extract::{JsonBody, OrgCtx, Params};
use crate::domain::spec::GitHubTrigger;
use crate::domain::{StackRef, validate_name};
use crate::error::{Error, Result};
use crate::github::client::GitHub;
use crate::github::triggers::{Event, Trigger, triggers};
use crate::github::{Integration, signature_valid};

const KIND: &str = "github";

async fn stored(state: &AppState, org: &str) -> Result<Option<Integration>> {
    match state.deps.orgs.get_integration(org, KIND).await? {
        Some(v) => Ok(Some(serde_json::from_value(v)?)),
        None => Ok(None),
    }
}

/// The org's GitHub integration, without its secrets; 404 if it has none.
#[utoipa::path(
    get,
    path = "/api/orgs/{org}/integrations/github",
    tag = "github",
    responses((status = 200, description = "The integration, without its secrets", body = super::schema::orgs::GitHubIntegration)),
    security(("token" = ["read"])),
    extensions(("x-tarmac-extension" = json!(true))),
)]
pub(super) async fn get(State(state): State<AppState>, ctx: OrgCtx) -> Result<Json<Value>> {
    let i = stored(&state, &ctx.org)
        .await?
        .ok_or_else(|| Error::not_found("this organization has no GitHub integration"))?;
    Ok(Json(i.render()))
}

/// Sets the org's GitHub integration, replacing any: its secrets are sealed with the org's key.
#[utoipa::path(
    put,
    path = "/api/orgs/{org}/integrations/github",
    tag = "github",
    request_body = super::schema::orgs::GitHubIntegrationRequest,
    responses((status = 200, description = "The integration, without its secrets", body = super::schema::orgs::GitHubIntegration)),
    security(("token" = ["admin"])),
    extensions(("x-tarmac-extension" = json!(true))),
)]
pub(super) async fn put(
    State(state): State<AppState>,
    ctx: OrgCtx,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>> {
    ctx.require_admin()?;
    let i = Integration::from_request(&body, &state.deps.cipher.for_org(&ctx.org))?;
    state
        .deps
        .orgs
        .put_integration(&ctx.org, KIND, Some(&serde_json::to_value(&i)?))
        .await?;
    Ok(Json(i.render()))
}

/// Removes the org's GitHub integration (204 whether or not it had one).
#[utoipa::path(
    delete,
    path = "/api/orgs/{org}/integrations/github",
    tag = "github",
    responses((status = 204, description = "Removed")),
    security(("token" = ["admin"])),
    extensions(("x-tarmac-extension" = json!(true))),
)]
pub(super) async fn delete(State(state): State<AppState>, ctx: OrgCtx) -> Result<StatusCode> {
    ctx.require_admin()?;
    state
        .deps
        .orgs
        .put_integration(&ctx.org, KIND, None)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The id of the deployment an event makes for a stack, from the signed body (not the delivery
/// id, which the signature does not cover): a redelivery, or a replay of an old signed body under
/// a new delivery id, finds its deployment made and makes none.
fn deployment_id(body: &[u8], stack: &StackRef) -> uuid::Uuid {
    crate::crypto::derived_uuid(&[
        b"github:",
        &Sha256::digest(body),
        stack.to_string().as_bytes(),
    ])
}

/// `POST /api/orgs/{org}/integrations/github/webhook`.
#[utoipa::path(
    post,
    path = "/api/orgs/{org}/integrations/github/webhook",
    tag = "github",
    params(
        ("X-Hub-Signature-256" = String, Header, description = "`sha256=<hex HMAC-SHA256 of the raw body>` with the integration's webhook secret"),
        ("X-GitHub-Event" = String, Header, description = "The event: `push` and `pull_request` (opened, synchronize, reopened) make deployments, `ping` is answered, others are ignored"),
        ("X-GitHub-Delivery" = String, Header, max_length = 100, description = "The delivery's id; required for every event but `ping`"),
    ),
    request_body(content = Object, description = "The event's payload, as GitHub sends it (up to 25 MB)", content_type = "application/json"),
    responses(
        (status = 200, description = "`ping`: pong", body = super::schema::orgs::GitHubPong),
        (status = 202, description = "The deployments the event's triggers made (none made twice for one event), or why it was ignored", body = super::schema::orgs::GitHubWebhookResult),
        (status = 401, description = "The signature does not match, or the org has no GitHub integration", body = super::openapi::ErrorBody),
        (status = 409, description = "A conflict creating a deployment (a burst of creates on the stack): GitHub's log shows the delivery failed", body = super::openapi::ErrorBody),
    ),
    extensions(("x-tarmac-extension" = json!(true))),
)]
pub(super) async fn webhook(
    State(state): State<AppState>,
    Params(params): Params,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let org = params.get("org").cloned().unwrap_or_default();
    validate_name("organization", &org)?;
    // An org without an integration and a bad signature look the same: nothing to learn here.
    let refused = || Error::Unauthorized("the X-Hub-Signature-256 signature does not match".into());
    let integration = stored(&state, &org).await?.ok_or_else(refused)?;
    let cipher = state.deps.cipher.for_org(&org);
    let secret = cipher.open(&integration.webhook_secret).ok_or_else(|| {
        Error::internal("the webhook secret cannot be opened with this server's key")
    })?;
    if !signature_valid(&secret, &body, header(&headers, "x-hub-signature-256")) {
        return Err(refused());
    }
    let kind = header(&headers, "x-github-event")
        .unwrap_or_default()
        .to_string();
    if kind == "ping" {
        return Ok(Json(json!({"message": "pong"})).into_response());
    }
    let delivery = header(&headers, "x-github-delivery")
        .filter(|d| !d.is_empty() && d.len() <= 100)
        .ok_or_else(|| Error::invalid("X-GitHub-Delivery is required"))?
        .to_string();
    let Some(event) = Event::parse(&kind, &body)? else {
        return Ok((
            StatusCode::ACCEPTED,
            Json(json!({"delivery": delivery, "ignored": format!("event '{kind}' is not one Tarmac acts on"), "deployments": []})),
        )
            .into_response());
    };
    let stacks = state.deps.stacks.list_stack_settings(&org).await?;
    let wanted = triggers(&event, &stacks);
    let repo = event.repository();
    // The clone token is fetched only for stacks that clone from GitHub itself.
    let needs_token = wanted.iter().any(|t| {
        stacks
            .iter()
            .find(|(s, _)| *s == t.stack)
            .is_some_and(|(_, settings)| {
                settings["sourceContext"]["git"]["repoUrl"]
                    .as_str()
                    .is_none_or(|u| u.trim().is_empty())
            })
    });
    let token = if needs_token {
        GitHub::new(&integration, |s| cipher.open(s))?
            .token(event.installation())
            .await?
    } else {
        None
    };
    let clone_url = repo
        .clone_url
        .clone()
        .unwrap_or_else(|| format!("https://github.com/{}.git", repo.full_name));
    let mut made = Vec::new();
    let mut duplicates = 0;
    for t in &wanted {
        match create(&state, &body, &delivery, &kind, &event, t, &stacks, &clone_url, token.as_deref()).await? {
            Some(d) => made.push(json!({"stack": d.stack.to_string(), "id": d.id, "version": d.version, "operation": d.operation.as_str()})),
            None => duplicates += 1,
        }
    }
    tracing::info!(%org, %delivery, event = %kind, deployments = made.len(), duplicates, "GitHub webhook");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"delivery": delivery, "deployments": made, "duplicates": duplicates})),
    )
        .into_response())
}

/// Creates one trigger's deployment; `None` if this delivery already made it.
#[allow(clippy::too_many_arguments)]
async fn create(
    state: &AppState,
    body: &[u8],
    delivery: &str,
    kind: &str,
    event: &Event,
    t: &Trigger,
    stacks: &[(StackRef, Value)],
    clone_url: &str,
    token: Option<&str>,
) -> Result<Option<crate::domain::Deployment>> {
    let settings = stacks
        .iter()
        .find(|(s, _)| *s == t.stack)
        .map(|(_, v)| v.clone())
        .unwrap_or(Value::Null);
    let request = t.request(&settings, Some((clone_url, token)));
    let id = deployment_id(body, &t.stack);
    let create = crate::service::CreateRequest {
        id: Some(id),
        trigger: Some(GitHubTrigger {
            provider: "github".into(),
            event: kind.to_string(),
            delivery: delivery.to_string(),
            repository: event.repository().full_name.clone(),
            commit: t.commit.clone(),
            pull_request: t.pull_request,
            installation: event.installation(),
        }),
        ..crate::service::CreateRequest::new(&t.stack, &request, "github", "github")
    };
    let new = crate::service::prepare(&state.deps, &create, Some(&settings)).await?;
    let created = async {
        let d = state.deps.deployments.create_deployment(new).await?;
        crate::service::queued(&state.deps, &d).await;
        Ok::<_, Error>(d)
    };
    match created.await {
        Ok(d) => Ok(Some(d)),
        // Made already, by an earlier delivery of this event; any other conflict (a burst
        // of creates on the stack) is passed on, so GitHub's log shows the delivery failed.
        Err(Error::Conflict(_))
            if state
                .deps
                .deployments
                .get_deployment(&t.stack, id)
                .await?
                .is_some() =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}
