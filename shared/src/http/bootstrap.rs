//! `POST /api/bootstrap`: a one-time secret, set when Tarmac was deployed, exchanged for an
//! org's first admin token. It is how a new AWS deployment gets its first token without anyone
//! reading the table or the functions' configuration.
//!
//! The server holds only the secret's SHA-256 (`TARMAC_BOOTSTRAP_SHA256`); each secret is
//! redeemed at most once (the redemption and the token are one write), so a secret that leaks
//! after use is worthless, and a lost one is replaced by deploying again with a new secret.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::AppState;
use super::extract::JsonBody;
use crate::crypto::{new_token, sha256_hex, token_hash};
use crate::domain::{Role, validate_name};
use crate::error::{Error, Result};
use crate::json::member;

/// `{"secret", "organization", "tokenName"?}` → 201 `{"token", "organization", "role", "name"}`.
#[utoipa::path(
    post,
    path = "/api/bootstrap",
    tag = "bootstrap",
    request_body = super::schema::meta::BootstrapRequest,
    responses(
        (status = 201, description = "The org's first admin token, shown this once", body = super::schema::meta::BootstrapToken),
        (status = 401, description = "Wrong bootstrap secret", body = super::openapi::ErrorBody),
        (status = 409, description = "This bootstrap secret has been used already", body = super::openapi::ErrorBody),
    ),
    extensions(("x-tarmac-extension" = json!(true))),
)]
pub(super) async fn redeem(
    State(state): State<AppState>,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<Value>)> {
    let Some(expected) = state.deps.bootstrap_sha256.as_deref() else {
        return Err(Error::not_found(
            "bootstrap is not enabled on this server: it takes the secret set at deployment",
        ));
    };
    let field = |name: &str| member(&body, name).and_then(Value::as_str);
    let secret = field("secret").ok_or_else(|| Error::invalid("secret is required"))?;
    let org = field("organization").ok_or_else(|| Error::invalid("organization is required"))?;
    let name = field("tokenName").unwrap_or("bootstrap-admin");
    validate_name("organization", org)?;
    if name.is_empty() || name.len() > 100 {
        return Err(Error::invalid("tokenName must be 1 to 100 characters"));
    }
    let given = sha256_hex(secret.as_bytes());
    if aws_lc_rs::constant_time::verify_slices_are_equal(given.as_bytes(), expected.as_bytes())
        .is_err()
    {
        tracing::warn!(org, "a bootstrap request with a wrong secret was refused");
        return Err(Error::Unauthorized("wrong bootstrap secret".into()));
    }
    let token = new_token();
    state
        .deps
        .tokens
        .redeem_bootstrap(&given, &token_hash(&token), org, name)
        .await?;
    tracing::info!(
        org,
        name,
        "the bootstrap secret was exchanged for an admin token"
    );
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "token": token,
            "organization": org,
            "role": Role::Admin.as_str(),
            "name": name,
        })),
    ))
}
