//! Request extractors whose every rejection is a Pulumi-shaped error.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::AppState;
use crate::crypto::token_hash;
use crate::domain::{Principal, Role, StackRef};
use crate::error::Error;

/// The JSON body: malformed JSON is a 400 with the parser's message, an oversized body a 413.
/// An empty body reads as `{}`, since several endpoints (cancel, pause) are sent with none.
pub struct JsonBody(pub Value);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Error> {
        // A body trickled in byte by byte must not hold a connection and a task for ever.
        let timeout = super::limits::request_timeout(&req);
        let bytes = tokio::time::timeout(timeout, Bytes::from_request(req, state))
            .await
            .map_err(|_| {
                Error::Limit(
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "the request body did not arrive within {} s",
                        timeout.as_secs()
                    ),
                )
            })?
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    Error::PayloadTooLarge(super::BODY_LIMIT)
                } else {
                    Error::invalid(format!("could not read the request body: {rejection}"))
                }
            })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(Value::Object(Default::default())));
        }
        serde_json::from_slice(&bytes)
            .map(Self)
            .map_err(|e| Error::invalid(format!("malformed JSON in the request body: {e}")))
    }
}

/// Query parameters; a value of the wrong type is a 400 naming it.
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Self(q.0))
            .map_err(|e| Error::invalid(format!("invalid query parameters: {}", e.body_text())))
    }
}

/// The path parameters by name, percent-decoded.
async fn path_params<S: Send + Sync>(
    parts: &mut Parts,
    state: &S,
) -> Result<HashMap<String, String>, Error> {
    axum::extract::Path::<HashMap<String, String>>::from_request_parts(parts, state)
        .await
        .map(|p| p.0)
        .map_err(|e| Error::invalid(format!("invalid path: {}", e.body_text())))
}

/// Who a request's org token belongs to, looked up once per request by [`identify`]: `None`
/// for no token, a malformed header or an unknown token (which the handlers refuse); and the
/// token's public id (empty without one).
#[derive(Debug, Clone)]
pub(super) struct Identified(pub Option<Principal>, pub String);

/// Looks the request's token up once, for the middleware that need the caller (idempotency,
/// the audit log) and the handlers' `Auth`. A store error leaves it to `Auth` to report.
pub(super) async fn identify(
    axum::extract::State(state): axum::extract::State<AppState>,
    mut req: Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let token = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("token ")
                .or_else(|| v.strip_prefix("Bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
        // A pool token is no org token: the agent API checks it itself, so each agent call
        // (heartbeats, log batches) costs one token lookup, not two.
        .filter(|t| !t.starts_with(super::POOL_TOKEN_PREFIX))
        .map(token_hash);
    let found = match &token {
        Some(hash) => state.deps.tokens.find_token(hash).await.ok(),
        None => Some(None),
    };
    if let Some(p) = found {
        let id = token
            .as_deref()
            .map(crate::domain::token_id)
            .unwrap_or_default();
        req.extensions_mut().insert(Identified(p, id));
    }
    next.run(req).await
}

/// The caller, from `Authorization: token <t>`.
pub struct Auth(pub Principal);

impl FromRequestParts<AppState> for Auth {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| {
                Error::Unauthorized(
                    "missing Authorization header; send 'Authorization: token <token>'".into(),
                )
            })?;
        let value = header
            .to_str()
            .map_err(|_| Error::Unauthorized("invalid Authorization header".into()))?;
        let token = value
            .strip_prefix("token ")
            .or_else(|| value.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                Error::Unauthorized(
                    "invalid Authorization header; send 'Authorization: token <token>'".into(),
                )
            })?;
        let principal = match parts.extensions.get::<Identified>() {
            Some(Identified(p, _)) => p.clone(),
            None => state.deps.tokens.find_token(&token_hash(token)).await?,
        };
        principal
            .map(Self)
            .ok_or_else(|| Error::Unauthorized("invalid or revoked token".into()))
    }
}

/// The role a request needs by default: reads need `read`, everything else `write`.
fn needed_role(method: &Method) -> Role {
    if method == Method::GET || method == Method::HEAD {
        Role::Read
    } else {
        Role::Write
    }
}

/// Checks that `p` may act in `org` with `need`. Another org's resources answer 404, so their
/// existence does not leak.
pub fn authorize(
    p: &Principal,
    org: &str,
    need: Role,
    not_found: impl FnOnce() -> Error,
) -> Result<(), Error> {
    if p.org != org {
        return Err(not_found());
    }
    if p.role < need {
        return Err(Error::Forbidden(format!(
            "this action needs a token with the '{}' role; this token has '{}'",
            need.as_str(),
            p.role.as_str()
        )));
    }
    Ok(())
}

/// An authorised request on one stack (`/api/stacks/{org}/{project}/{stack}/...`).
pub struct StackCtx {
    pub principal: Principal,
    pub stack: StackRef,
}

impl FromRequestParts<AppState> for StackCtx {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        let Auth(principal) = Auth::from_request_parts(parts, state).await?;
        let params = path_params(parts, state).await?;
        let get = |k: &str| params.get(k).map(String::as_str).unwrap_or_default();
        let stack = StackRef::new(get("org"), get("project"), get("stack"))?;
        let name = stack.to_string();
        authorize(&principal, &stack.org, needed_role(&parts.method), || {
            Error::not_found(format!("stack '{name}' not found"))
        })?;
        Ok(Self { principal, stack })
    }
}

/// An authorised request on an org (`/api/orgs/{org}/...`).
pub struct OrgCtx {
    pub principal: Principal,
    pub org: String,
}

impl FromRequestParts<AppState> for OrgCtx {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        let Auth(principal) = Auth::from_request_parts(parts, state).await?;
        let params = path_params(parts, state).await?;
        let org = params.get("org").cloned().unwrap_or_default();
        crate::domain::validate_name("organization", &org)?;
        authorize(&principal, &org, needed_role(&parts.method), || {
            Error::not_found(format!("organization '{org}' not found"))
        })?;
        Ok(Self { principal, org })
    }
}

impl OrgCtx {
    /// Org-wide changes (pause, integrations, org webhooks) need an admin token.
    pub fn require_admin(&self) -> Result<(), Error> {
        authorize(&self.principal, &self.org, Role::Admin, || {
            Error::not_found("organization not found")
        })
    }
}

/// A named path parameter beyond the org/project/stack ones.
pub fn param(parts: &HashMap<String, String>, name: &str) -> String {
    parts.get(name).cloned().unwrap_or_default()
}

/// Extra path parameters (deployment id, version), raw.
pub struct Params(pub HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        path_params(parts, state).await.map(Self)
    }
}
