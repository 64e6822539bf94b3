//! The HTTP API: one axum router, served by `tarmac serve`, by Lambda, and by tests.
//!
//! Paths, JSON keys, status values and codes follow Pulumi's Deployments API (reference §5).
//! `S` below is `/api/stacks/{org}/{project}/{stack}`.

mod agent;
mod audit;
mod bootstrap;
mod bulk;
mod console;
mod deployments;
pub mod extract;
mod github;
mod hooks;
mod idempotency;
mod legacy;
pub mod limits;
mod oidc;
mod pools;
mod schedules;
mod settings;
mod stacks;
mod stream;
mod tags;
mod tokens;
mod trace;
mod updates;
pub mod wire;

pub use pools::POOL_TOKEN_PREFIX;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{Method, StatusCode, Uri};
use axum::response::Response;
use axum::routing::{get, post};

use crate::deps::Deps;
use crate::error::error_body;

/// Request bodies above this are refused with 413.
pub const BODY_LIMIT: usize = 1024 * 1024;
/// GitHub's own limit on webhook payloads.
pub const GITHUB_BODY_LIMIT: usize = 25 * 1024 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub deps: Arc<Deps>,
}

pub fn router(deps: Arc<Deps>) -> Router {
    const S: &str = "/api/stacks/{org}/{project}/{stack}";
    let stack_routes = Router::new()
        .route("/export", get(stacks::export))
        .route(
            "/deployments",
            get(deployments::list_stack).post(deployments::create),
        )
        .route(
            "/deployments/settings",
            get(settings::get)
                .post(settings::patch)
                .put(settings::replace)
                .delete(settings::delete),
        )
        .route("/deployments/settings/encrypt", post(settings::encrypt))
        .route("/deployments/pause", post(stacks::pause_stack))
        .route("/deployments/resume", post(stacks::resume_stack))
        .route("/deployments/metadata", get(stacks::stack_metadata))
        .route("/deployments/sync", get(stacks::git_sync))
        .route(
            "/deployments/cache",
            axum::routing::delete(stacks::clear_cache),
        )
        .route(
            "/deployments/schedules",
            get(schedules::list).post(schedules::create_custom),
        )
        .route(
            "/deployments/schedules/{id}",
            get(schedules::read)
                .post(schedules::update_custom)
                .delete(schedules::delete),
        )
        .route("/deployments/schedules/{id}/pause", post(schedules::pause))
        .route(
            "/deployments/schedules/{id}/resume",
            post(schedules::resume),
        )
        .route(
            "/deployments/schedules/{id}/history",
            get(schedules::history),
        )
        .route(
            "/deployments/drift/schedules",
            post(schedules::create_drift),
        )
        .route(
            "/deployments/drift/schedules/{id}",
            post(schedules::update_drift),
        )
        .route("/deployments/ttl/schedules", post(schedules::create_ttl))
        .route(
            "/deployments/ttl/schedules/{id}",
            post(schedules::update_ttl),
        )
        .route("/drift/runs", get(schedules::drift_runs))
        .route("/drift/runs/{id}", get(schedules::drift_run))
        .route("/drift/status", get(schedules::drift_status))
        .route(
            "/deployments/version/{version}",
            get(deployments::get_by_version),
        )
        .route("/deployments/{id}", get(deployments::get_by_id))
        .route("/deployments/{id}/logs", get(deployments::logs))
        .route("/deployments/{id}/stream", get(stream::stream))
        .route("/deployments/{id}/updates", get(updates::of_deployment))
        .route("/deployments/{id}/cancel", post(deployments::cancel))
        .route("/deployments/{id}/approve", post(deployments::approve))
        .route("/deployments/{id}/reject", post(deployments::reject))
        .route("/update/{id}/events", get(updates::events))
        .route("/update/{id}/cancel", post(updates::cancel))
        .route("/updates", get(updates::history))
        .route("/updates/latest", get(updates::latest))
        .route("/updates/{version}", get(updates::at_version))
        .route("/tags", post(tags::add).patch(tags::replace))
        .route(
            "/tags/{name}",
            axum::routing::patch(tags::update).delete(tags::delete),
        )
        .nest("/hooks", hook_routes());
    // Pulumi's first Deployments API, still called by the REST drivers in its docs.
    let legacy_routes = Router::new()
        .route(
            "/deployment/settings",
            get(settings::get).post(settings::patch),
        )
        .route("/deployments", get(legacy::list).post(legacy::create))
        .route("/deployments/{id}", get(deployments::get_by_id))
        .route("/deployments/{id}/logs", get(deployments::logs))
        .route("/deployments/{id}/updates", get(updates::of_deployment))
        .route("/deployments/{id}/cancel", post(deployments::cancel));
    Router::new()
        .route(
            "/oidc/.well-known/openid-configuration",
            get(oidc::discovery),
        )
        .route("/oidc/.well-known/jwks.json", get(oidc::jwks))
        .route("/api/user", get(stacks::current_user))
        .route("/api/user/organizations/default", get(stacks::default_org))
        .route("/api/user/stacks", get(stacks::user_stacks))
        .route("/api/capabilities", get(stacks::capabilities))
        .route("/api/bootstrap", post(bootstrap::redeem))
        .route(
            "/api/stacks/{org}/{project}",
            post(stacks::create_stack).head(stacks::head_project),
        )
        .route(S, get(stacks::get_stack).delete(stacks::delete_stack))
        .nest(S, stack_routes)
        .nest("/api/preview/{org}/{project}/{stack}", legacy_routes)
        .route("/api/orgs/{org}/deployments", get(deployments::list_org))
        .route("/api/orgs/{org}/stacks", get(stacks::org_stacks))
        .route(
            "/api/orgs/{org}/tokens",
            get(tokens::list).post(tokens::create),
        )
        .route(
            "/api/orgs/{org}/tokens/{id}",
            axum::routing::delete(tokens::revoke),
        )
        .route("/api/orgs/{org}/deployments/pause", post(stacks::pause_org))
        .route(
            "/api/orgs/{org}/deployments/resume",
            post(stacks::resume_org),
        )
        .route(
            "/api/orgs/{org}/deployments/metadata",
            get(stacks::org_metadata),
        )
        .route(
            "/api/orgs/{org}/deployments/limits",
            get(stacks::get_limits).put(stacks::put_limits),
        )
        .route("/api/orgs/{org}/deployments/bulk", post(bulk::create))
        .route("/api/orgs/{org}/deployments/bulk/{id}", get(bulk::get))
        .route(
            "/api/orgs/{org}/deployments/bulk/{id}/cancel",
            post(bulk::cancel),
        )
        .route(
            "/api/orgs/{org}/agent-pools",
            get(pools::list).post(pools::create),
        )
        .route(
            "/api/orgs/{org}/agent-pools/{poolId}",
            get(pools::get).patch(pools::patch).delete(pools::delete),
        )
        .route("/api/agent/claim", post(agent::claim))
        .nest(
            "/api/agent/stacks/{org}/{project}/{stack}/deployments/{id}",
            agent_run_routes(),
        )
        .nest("/api/orgs/{org}/hooks", hook_routes())
        .route(
            "/api/orgs/{org}/integrations/github",
            get(github::get).put(github::put).delete(github::delete),
        )
        .route(
            "/api/orgs/{org}/integrations/github/webhook",
            // GitHub sends payloads of up to 25 MB (a push of many commits).
            post(github::webhook).layer(DefaultBodyLimit::max(GITHUB_BODY_LIMIT)),
        )
        .route("/api/orgs/{org}/auditlogs", get(audit::list))
        .route_layer(axum::middleware::from_fn_with_state(
            AppState {
                deps: Arc::clone(&deps),
            },
            audit::record,
        ))
        .route_layer(axum::middleware::from_fn(trace::trace_request))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(
            AppState {
                deps: Arc::clone(&deps),
            },
            idempotency::idempotent,
        ))
        .layer(axum::middleware::from_fn_with_state(
            AppState {
                deps: Arc::clone(&deps),
            },
            extract::identify,
        ))
        .layer(axum::middleware::from_fn(limits::check))
        .layer(axum::middleware::from_fn(console::security_headers))
        .with_state(AppState { deps })
}

/// An agent's calls about the run it holds (see `crate::agent::protocol`).
fn agent_run_routes() -> Router<AppState> {
    Router::new()
        .route("/heartbeat", post(agent::heartbeat))
        .route("/steps", post(agent::step_start))
        .route("/steps/{step}", post(agent::step_end))
        .route("/logs", post(agent::logs))
        .route("/update", post(agent::update_start))
        .route("/update/finish", post(agent::update_finish))
        .route("/outputs", post(agent::outputs))
        .route(
            "/state",
            get(agent::state_get)
                .post(agent::state_save)
                .layer(DefaultBodyLimit::max(agent::STATE_BODY_LIMIT)),
        )
        .route("/credentials", post(agent::credentials))
        .route("/complete", post(agent::complete))
}

/// The webhook routes, the same under an org and under a stack.
fn hook_routes() -> Router<AppState> {
    Router::new()
        .route("/", get(hooks::list).post(hooks::create))
        .route(
            "/{name}",
            get(hooks::read).patch(hooks::update).delete(hooks::delete),
        )
        .route("/{name}/ping", post(hooks::ping))
        .route("/{name}/deliveries", get(hooks::deliveries))
        .route(
            "/{name}/deliveries/{event}/redeliver",
            post(hooks::redeliver),
        )
}

/// What no API route matched: the console's files and pages, else a Pulumi-shaped 404.
async fn not_found(method: Method, uri: Uri) -> Response {
    let path = uri.path();
    if let Some(asset) = path.strip_prefix(console::ASSETS)
        && method == Method::GET
        && let Some(resp) = console::asset(asset)
    {
        return resp;
    }
    if console::is_page(&method, path) && !path.starts_with(console::ASSETS) {
        return console::index(path);
    }
    error_body(
        StatusCode::NOT_FOUND,
        &format!("no route for {method} {}", uri.path()),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    error_body(
        StatusCode::METHOD_NOT_ALLOWED,
        &format!("{method} is not allowed on {}", uri.path()),
    )
}

#[cfg(test)]
mod tests {
    //! The router in-process, through `tower::ServiceExt::oneshot`, as the Lambda adapter runs it.

    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;
    use crate::app::{App, Config, EmbeddedConfig};
    use crate::crypto::{new_token, token_hash};
    use crate::domain::Role;

    async fn app() -> (Router, String, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let app = App::build(Config::Embedded(EmbeddedConfig::new(dir.path())))
            .await
            .unwrap();
        let token = new_token();
        app.deps
            .tokens
            .create_token(&token_hash(&token), "acme", Role::Write, "t")
            .await
            .unwrap();
        (router(app.deps), token, dir)
    }

    async fn call(app: &Router, req: Request<Body>) -> (StatusCode, serde_json::Value) {
        let resp = app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        )
    }

    #[tokio::test]
    async fn every_error_is_pulumi_shaped() {
        let (app, token, _dir) = app().await;
        let auth = format!("token {token}");
        let cases = [
            (
                Request::post("/api/stacks/acme/p/s/deployments")
                    .header("Authorization", &auth)
                    .body(Body::from("{"))
                    .unwrap(),
                400,
            ),
            (
                Request::get("/api/stacks/acme/p/s/deployments/settings")
                    .body(Body::empty())
                    .unwrap(),
                401,
            ),
            (
                Request::get("/api/nowhere").body(Body::empty()).unwrap(),
                404,
            ),
            (
                Request::delete("/api/orgs/acme/deployments")
                    .header("Authorization", &auth)
                    .body(Body::empty())
                    .unwrap(),
                405,
            ),
        ];
        for (req, want) in cases {
            let (status, body) = call(&app, req).await;
            assert_eq!(status.as_u16(), want, "{body}");
            assert_eq!(body["code"], want);
            assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
        }
    }

    #[tokio::test]
    async fn every_accept_header_pulumi_clients_send_is_served_json() {
        let (app, token, _dir) = app().await;
        for accept in [
            Some("application/vnd.pulumi+8"),
            Some("application/vnd.pulumi+json"),
            Some("application/json"),
            None,
        ] {
            let mut req = Request::get("/api/orgs/acme/deployments/metadata")
                .header("Authorization", format!("token {token}"))
                // The Python SDK sends a Content-Type even on GETs.
                .header("Content-Type", "application/json");
            if let Some(a) = accept {
                req = req.header("Accept", a);
            }
            let resp = app
                .clone()
                .oneshot(req.body(Body::empty()).unwrap())
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::OK, "{accept:?}");
            assert_eq!(resp.headers()["content-type"], "application/json");
        }
    }
}
