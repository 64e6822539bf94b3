//! The HTTP API: one axum router, served by `tarmac serve`, by Lambda, and by tests.
//!
//! Paths, JSON keys, status values and codes follow Pulumi's Deployments API (reference §5).
//! `S` below is `/api/stacks/{org}/{project}/{stack}`.

mod deployments;
pub mod extract;
mod settings;
mod stacks;
pub mod wire;

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
        .route(
            "/deployments/cache",
            axum::routing::delete(stacks::clear_cache),
        )
        .route(
            "/deployments/version/{version}",
            get(deployments::get_by_version),
        )
        .route("/deployments/{id}", get(deployments::get_by_id))
        .route("/deployments/{id}/logs", get(deployments::logs))
        .route("/deployments/{id}/updates", get(deployments::updates))
        .route("/deployments/{id}/cancel", post(deployments::cancel));
    Router::new()
        .route("/api/user", get(stacks::current_user))
        .route("/api/stacks/{org}/{project}", post(stacks::create_stack))
        .route(S, axum::routing::delete(stacks::delete_stack))
        .nest(S, stack_routes)
        .route("/api/orgs/{org}/deployments", get(deployments::list_org))
        .route("/api/orgs/{org}/deployments/pause", post(stacks::pause_org))
        .route(
            "/api/orgs/{org}/deployments/resume",
            post(stacks::resume_org),
        )
        .route(
            "/api/orgs/{org}/deployments/metadata",
            get(stacks::org_metadata),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(AppState { deps })
}

async fn not_found(method: Method, uri: Uri) -> Response {
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
