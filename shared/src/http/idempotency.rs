//! `Idempotency-Key` on POSTs: a client that retries a request (after a timeout, say) with the
//! same key gets the first response again, status and body, instead of a second deployment,
//! stack or hook. Keys are per org (the token's) and kept for 24 hours. The same key with a
//! different request (method, path or body) is 422; while the first request still runs, a
//! second one is 409. A first request that fails on the server's side (5xx) keeps nothing, so
//! its retry runs again.
//!
//! A kept body is sealed with the org's key before it is stored: some responses carry a secret
//! shown once (a new token's `tokenValue`), which must never rest in plaintext.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use time::OffsetDateTime;

use super::AppState;
use crate::crypto::sha256_hex;
use crate::error::Error;
use crate::ports::{IdempotentStart, KeptResponse};

pub(super) const KEY_HEADER: &str = "idempotency-key";
/// Set on a response that is a kept one, answered again.
pub(super) const REPLAYED_HEADER: &str = "idempotent-replayed";
/// How long a key is remembered.
const KEEP: Duration = Duration::from_secs(24 * 3600);
/// How long a running request holds its key: a server that dies mid-request frees it then.
const HOLD: Duration = Duration::from_secs(60);
/// Larger responses are not kept (creating requests answer a few hundred bytes); sealed and
/// encoded, a kept body grows by about 1.8 times, and a DynamoDB item holds 400 KB.
const MAX_KEPT: usize = 160 * 1024;
pub(super) const MAX_KEY: usize = 255;

/// The key, if the request carries a valid one.
fn key(headers: &HeaderMap) -> Result<Option<String>, Error> {
    let Some(v) = headers.get(KEY_HEADER) else {
        return Ok(None);
    };
    let invalid = || {
        Error::invalid(format!(
            "Idempotency-Key must be 1 to {MAX_KEY} visible ASCII characters"
        ))
    };
    let k = v.to_str().map_err(|_| invalid())?;
    if k.is_empty() || k.len() > MAX_KEY || !k.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid());
    }
    Ok(Some(k.to_string()))
}

/// The middleware. Requests without the header, other methods, and requests without a valid
/// org token (refused by their handler as usual) pass through untouched.
pub(super) async fn idempotent(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    if req.method() != Method::POST {
        return next.run(req).await;
    }
    let key = match key(req.headers()) {
        Ok(Some(k)) => k,
        Ok(None) => return next.run(req).await,
        Err(e) => return e.into_response(),
    };
    // Keys are the token's own: another token of the org (a read-only one, say) never gets
    // a response kept for this one, such as a token minted under the key.
    let (org, key) = match req.extensions().get::<super::extract::Identified>() {
        Some(super::extract::Identified(Some(p), token_id)) => {
            (p.org.clone(), format!("{token_id}/{key}"))
        }
        _ => return next.run(req).await,
    };
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, super::BODY_LIMIT).await {
        Ok(b) => b,
        Err(_) => return Error::PayloadTooLarge(super::BODY_LIMIT).into_response(),
    };
    let target = parts.uri.path_and_query().map_or("", |p| p.as_str());
    let mut request = format!("{} {target}\n", parts.method).into_bytes();
    request.extend_from_slice(&bytes);
    let fingerprint = sha256_hex(&request);
    let store = &state.deps.idempotency;
    let now = OffsetDateTime::now_utc();
    let cipher = state.deps.cipher.for_org(&org);
    match store.start(&org, &key, &fingerprint, now, HOLD).await {
        Err(e) => return e.into_response(),
        Ok(IdempotentStart::Replay(kept)) => {
            return match open(&cipher, kept) {
                Some(kept) => replay(kept),
                None => Error::internal("a kept response cannot be opened with this server's key")
                    .into_response(),
            };
        }
        Ok(IdempotentStart::Mismatch) => {
            return Error::Unprocessable(
                "this Idempotency-Key was used for a different request (method, path or body) in the last 24 hours".into(),
            )
            .into_response();
        }
        Ok(IdempotentStart::InProgress) => {
            return Error::conflict(
                "a request with this Idempotency-Key is still in progress; retry it later",
            )
            .into_response();
        }
        Ok(IdempotentStart::Run) => {}
    }
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    let (parts, body) = response.into_parts();
    let bytes: Bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => {
            let _ = store.release(&org, &key, &fingerprint).await;
            tracing::error!(error = %e, "could not read a response to keep it");
            return Error::internal("the response could not be read").into_response();
        }
    };
    let outcome = if parts.status.is_server_error() || bytes.len() > MAX_KEPT {
        store.release(&org, &key, &fingerprint).await
    } else {
        let kept = KeptResponse {
            status: parts.status.as_u16(),
            content_type: parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            body: cipher.seal(&STANDARD.encode(&bytes)).into_bytes(),
        };
        store
            .keep(
                &org,
                &key,
                &fingerprint,
                &kept,
                OffsetDateTime::now_utc() + KEEP,
            )
            .await
    };
    if let Err(e) = outcome {
        // The request's effect stands; only its retry would run again.
        tracing::error!(error = %e.chain(), "could not record an idempotent request's outcome");
    }
    Response::from_parts(parts, Body::from(bytes))
}

/// A kept response with its body opened.
fn open(cipher: &crate::crypto::OrgCipher<'_>, kept: KeptResponse) -> Option<KeptResponse> {
    let sealed = String::from_utf8(kept.body).ok()?;
    let body = STANDARD.decode(cipher.open(&sealed)?).ok()?;
    Some(KeptResponse { body, ..kept })
}

fn replay(kept: KeptResponse) -> Response {
    let status = StatusCode::from_u16(kept.status).unwrap_or(StatusCode::OK);
    let mut response = (status, kept.body).into_response();
    let headers = response.headers_mut();
    if let Some(ct) = kept
        .content_type
        .and_then(|c| HeaderValue::from_str(&c).ok())
    {
        headers.insert(header::CONTENT_TYPE, ct);
    }
    headers.insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    response
}
