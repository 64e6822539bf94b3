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
mod openapi;
mod pools;
mod schedules;
mod schema;
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
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter};
use utoipa_axum::routes;

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

/// The API with its middleware, fallback and state: what `tarmac serve` and Lambda serve.
pub fn router(deps: Arc<Deps>) -> Router {
    let (api, _) = api().split_for_parts();
    api.route_layer(axum::middleware::from_fn_with_state(
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

/// The OpenAPI document (see [`openapi`]).
pub fn openapi_document() -> &'static serde_json::Value {
    openapi::document()
}

/// Every API route, each registered with its OpenAPI entry: only through `routes!`, never
/// `.route`, so the document describes exactly what is served (a test probes both ways).
fn api() -> OpenApiRouter<AppState> {
    const S: &str = "/api/stacks/{org}/{project}/{stack}";
    let stack_routes = OpenApiRouter::new()
        .routes(routes!(stacks::export))
        .routes(routes!(deployments::list_stack, deployments::create))
        .routes(routes!(
            settings::get,
            settings::patch,
            settings::replace,
            settings::delete
        ))
        .routes(routes!(settings::encrypt))
        .routes(routes!(stacks::pause_stack))
        .routes(routes!(stacks::resume_stack))
        .routes(routes!(stacks::stack_metadata))
        .routes(routes!(stacks::git_sync))
        .routes(routes!(stacks::clear_cache))
        .routes(routes!(schedules::list, schedules::create_custom))
        .routes(routes!(
            schedules::read,
            schedules::update_custom,
            schedules::delete
        ))
        .routes(routes!(schedules::pause))
        .routes(routes!(schedules::resume))
        .routes(routes!(schedules::history))
        .routes(routes!(schedules::create_drift))
        .routes(routes!(schedules::update_drift))
        .routes(routes!(schedules::create_ttl))
        .routes(routes!(schedules::update_ttl))
        .routes(routes!(schedules::drift_runs))
        .routes(routes!(schedules::drift_run))
        .routes(routes!(schedules::drift_status))
        .routes(routes!(deployments::get_by_version))
        .routes(routes!(deployments::get_by_id))
        .routes(routes!(deployments::logs))
        .routes(routes!(stream::stream))
        .routes(routes!(updates::of_deployment))
        .routes(routes!(deployments::cancel))
        .routes(routes!(deployments::approve))
        .routes(routes!(deployments::reject))
        .routes(routes!(updates::events))
        .routes(routes!(updates::cancel))
        .routes(routes!(updates::history))
        .routes(routes!(updates::latest))
        .routes(routes!(updates::at_version))
        .routes(routes!(tags::add, tags::replace))
        .routes(routes!(tags::update, tags::delete))
        .nest("/hooks", hook_routes());
    // Pulumi's first Deployments API, still called by the REST drivers in its docs.
    let legacy_routes = OpenApiRouter::new()
        .routes(routes!(legacy::settings_get, legacy::settings_patch))
        .routes(routes!(legacy::list, legacy::create))
        .routes(routes!(deployments::get_by_id))
        .routes(routes!(deployments::logs))
        .routes(routes!(updates::of_deployment))
        .routes(routes!(deployments::cancel));
    OpenApiRouter::new()
        .routes(routes!(openapi::serve))
        .routes(routes!(oidc::discovery))
        .routes(routes!(oidc::jwks))
        .routes(routes!(stacks::current_user))
        .routes(routes!(stacks::default_org))
        .routes(routes!(stacks::user_stacks))
        .routes(routes!(stacks::capabilities))
        .routes(routes!(bootstrap::redeem))
        .routes(routes!(stacks::create_stack, stacks::head_project))
        .routes(routes!(stacks::get_stack, stacks::delete_stack))
        .nest(S, stack_routes)
        .nest("/api/preview/{org}/{project}/{stack}", legacy_routes)
        .routes(routes!(deployments::list_org))
        .routes(routes!(stacks::org_stacks))
        .routes(routes!(tokens::list, tokens::create))
        .routes(routes!(tokens::revoke))
        .routes(routes!(stacks::pause_org))
        .routes(routes!(stacks::resume_org))
        .routes(routes!(stacks::org_metadata))
        .routes(routes!(stacks::get_limits, stacks::put_limits))
        .routes(routes!(bulk::create))
        .routes(routes!(bulk::get))
        .routes(routes!(bulk::cancel))
        .routes(routes!(pools::list, pools::create))
        .routes(routes!(pools::get, pools::patch, pools::delete))
        .routes(routes!(agent::claim))
        .nest(
            "/api/agent/stacks/{org}/{project}/{stack}/deployments/{id}",
            agent_run_routes(),
        )
        .nest("/api/orgs/{org}/hooks", hook_routes())
        .routes(routes!(github::get, github::put, github::delete))
        // GitHub sends payloads of up to 25 MB (a push of many commits).
        .routes(with_layer(
            routes!(github::webhook),
            DefaultBodyLimit::max(GITHUB_BODY_LIMIT),
        ))
        .routes(routes!(audit::list))
}

/// `routes` with a layer on their method router (a body limit of their own).
fn with_layer(
    (schemas, paths, methods): UtoipaMethodRouter<AppState>,
    layer: DefaultBodyLimit,
) -> UtoipaMethodRouter<AppState> {
    (schemas, paths, methods.layer(layer))
}

/// An agent's calls about the run it holds (see `crate::agent::protocol`).
fn agent_run_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(agent::heartbeat))
        .routes(routes!(agent::step_start))
        .routes(routes!(agent::step_end))
        .routes(routes!(agent::logs))
        .routes(routes!(agent::update_start))
        .routes(routes!(agent::update_finish))
        .routes(routes!(agent::outputs))
        .routes(with_layer(
            routes!(agent::state_get, agent::state_save),
            DefaultBodyLimit::max(agent::STATE_BODY_LIMIT),
        ))
        .routes(routes!(agent::credentials))
        .routes(routes!(agent::complete))
}

/// The webhook routes, the same under an org and under a stack.
fn hook_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(hooks::list, hooks::create))
        .routes(routes!(hooks::read, hooks::update, hooks::delete))
        .routes(routes!(hooks::ping))
        .routes(routes!(hooks::deliveries))
        .routes(routes!(hooks::redeliver))
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

    /// A route reaches the router only with its OpenAPI entry (`routes!`): a bare `.route`
    /// would serve what the document does not describe. The black-box test
    /// `openapi::the_document_..._describes_exactly_the_routes_served` probes every documented
    /// path with every method, both ways.
    #[test]
    fn every_route_is_registered_with_its_openapi_entry() {
        let source = include_str!("mod.rs");
        let start = source.find("fn api()").unwrap();
        let end = source.find("/// What no API route matched").unwrap();
        let api = &source[start..end];
        for bare in [".route(", ".route_service(", ".nest_service(", ".merge("] {
            assert!(!api.contains(bare), "fn api() calls {bare}");
        }
        let doc = openapi_document();
        assert_eq!(doc["openapi"], "3.1.0");
        assert!(doc["paths"].as_object().unwrap().len() > 60);
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
