//! The OIDC issuer's public documents, answered without auth: `/oidc/.well-known/*`.

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::error::{Error, Result};
use crate::oidc::Issuer;

fn issuer(state: &AppState) -> Result<&Issuer> {
    state
        .deps
        .issuer
        .as_deref()
        .ok_or_else(|| Error::not_found("this server is not an OIDC issuer"))
}

/// Verifiers cache the documents briefly; a rotated-in key is served at once, and verifiers
/// refetch when they meet an unknown `kid`.
const CACHE: (header::HeaderName, &str) = (header::CACHE_CONTROL, "public, max-age=300");

#[utoipa::path(
    get,
    path = "/oidc/.well-known/openid-configuration",
    tag = "oidc",
    responses((status = 200, description = "The issuer's OpenID Provider configuration (404 if this server is not an OIDC issuer)", body = super::schema::meta::OidcDiscovery, headers(("Cache-Control" = String, description = "`public, max-age=300`")))),
)]
pub(super) async fn discovery(State(state): State<AppState>) -> Result<Response> {
    Ok(([CACHE], Json(issuer(&state)?.discovery())).into_response())
}

#[utoipa::path(
    get,
    path = "/oidc/.well-known/jwks.json",
    tag = "oidc",
    responses((status = 200, description = "The issuer's published signing keys (404 if this server is not an OIDC issuer)", body = super::schema::meta::OidcJwks, headers(("Cache-Control" = String, description = "`public, max-age=300`")))),
)]
pub(super) async fn jwks(State(state): State<AppState>) -> Result<Response> {
    Ok(([CACHE], Json(issuer(&state)?.jwks().await?)).into_response())
}
