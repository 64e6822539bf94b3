//! One span per request, named by its route and carrying what it is about (org, project, stack,
//! deployment), so every log line a handler or adapter writes under it says which request it
//! belongs to. Its end is logged at debug level with the status and the time taken.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

/// The org, project, stack and deployment id named by a path, where it names them.
fn subjects(path: &str) -> [Option<&str>; 4] {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        ["api", "stacks", org, project, stack, "deployments", id, ..]
            if uuid::Uuid::parse_str(id).is_ok() =>
        {
            [Some(org), Some(project), Some(stack), Some(id)]
        }
        ["api", "stacks", org, project, stack, ..] => [Some(org), Some(project), Some(stack), None],
        ["api", "stacks" | "orgs", org, ..] => [Some(org), None, None, None],
        _ => [None; 4],
    }
}

pub(super) async fn trace_request(
    matched: Option<MatchedPath>,
    req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path().to_string();
    let route = matched.as_ref().map_or(path.as_str(), MatchedPath::as_str);
    let [org, project, stack, deployment_id] = subjects(&path);
    let span = tracing::info_span!(
        "request",
        method = %req.method(),
        route,
        org,
        project,
        stack,
        deployment_id,
    );
    let started = Instant::now();
    let response = next.run(req).instrument(span.clone()).await;
    span.in_scope(|| {
        tracing::debug!(
            status = response.status().as_u16(),
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            "request done"
        );
    });
    response
}

#[cfg(test)]
mod tests {
    use super::subjects;

    #[test]
    fn paths_name_their_subjects() {
        let id = "6f1d0a52-3b1c-4d59-9d7e-2f4b8f7a9c10";
        assert_eq!(
            subjects(&format!("/api/stacks/acme/web/prod/deployments/{id}/logs")),
            [Some("acme"), Some("web"), Some("prod"), Some(id)]
        );
        assert_eq!(
            subjects("/api/stacks/acme/web/prod/deployments/settings"),
            [Some("acme"), Some("web"), Some("prod"), None]
        );
        assert_eq!(
            subjects("/api/orgs/acme/hooks"),
            [Some("acme"), None, None, None]
        );
        assert_eq!(subjects("/oidc/.well-known/jwks.json"), [None; 4]);
    }
}
