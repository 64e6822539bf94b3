//! The audit log: every change made through the API with an org token (every method but GET
//! and HEAD, whatever its outcome) is appended to its org's log with who (the token's id and
//! name, never the token), what (method, route, path), when, from where (address, user agent)
//! and the status it got. No body is kept, so no secret is. `GET /api/orgs/{org}/auditlogs`
//! (admin) reads it in Pulumi's shape.

use std::net::SocketAddr;

use axum::Json;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::Response;
use serde_json::{Value, json};
use time::OffsetDateTime;

use super::AppState;
use super::extract::{Identified, OrgCtx, Query};
use crate::error::{Error, Result};
use crate::ports::AuditEvent;

/// Where a request came from: the peer (embedded), else the address the nearest proxy (API
/// Gateway, a load balancer) appended to `X-Forwarded-For`.
fn source_ip(req: &Request) -> String {
    if let Some(ConnectInfo(addr)) = req.extensions().get::<ConnectInfo<SocketAddr>>() {
        return addr.ip().to_string();
    }
    forwarded(req.headers()).unwrap_or_default()
}

fn forwarded(headers: &HeaderMap) -> Option<String> {
    let v = headers.get("x-forwarded-for")?.to_str().ok()?;
    v.rsplit(',').next().map(|s| s.trim().to_string())
}

fn text(headers: &HeaderMap, name: header::HeaderName, max: usize) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(max).collect())
        .unwrap_or_default()
}

/// The middleware (a route layer, so the route is known).
pub(super) async fn record(
    State(state): State<AppState>,
    matched: Option<MatchedPath>,
    req: Request,
    next: Next,
) -> Response {
    if matches!(*req.method(), Method::GET | Method::HEAD) {
        return next.run(req).await;
    }
    let Some(Identified(Some(who), token_id)) = req.extensions().get::<Identified>().cloned()
    else {
        return next.run(req).await;
    };
    let method = req.method().to_string();
    let path: String = req.uri().path().chars().take(1024).collect();
    let route = matched.map_or_else(|| path.clone(), |m| m.as_str().to_string());
    let source_ip = source_ip(&req);
    let user_agent = text(req.headers(), header::USER_AGENT, 512);
    let response = next.run(req).await;
    let event = AuditEvent {
        id: uuid::Uuid::new_v4(),
        org: who.org.clone(),
        timestamp: OffsetDateTime::now_utc(),
        token_id,
        token_name: who.token_name.clone(),
        admin: who.role == crate::domain::Role::Admin,
        method,
        route,
        path,
        status: response.status().as_u16(),
        source_ip,
        user_agent,
    };
    if let Err(e) = state.deps.audit.append(&event).await {
        // The change stands; its record is what was lost, and the server's log says so.
        tracing::error!(error = %e.chain(), org = %event.org, method = %event.method,
            path = %event.path, "could not append to the audit log");
    }
    response
}

#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    /// The oldest time, unix seconds or RFC 3339 (default: 7 days ago).
    start_time: Option<String>,
    /// The newest time, unix seconds or RFC 3339 (default: now).
    end_time: Option<String>,
    /// `startTime`'s other name (`startTime` wins).
    since: Option<String>,
    /// `endTime`'s other name (`endTime` wins).
    until: Option<String>,
    /// The previous page's `continuationToken`.
    continuation_token: Option<String>,
}

/// A time as the query gives it: unix seconds (Pulumi's `startTime`/`endTime`) or RFC 3339.
fn instant(name: &str, v: &str) -> Result<OffsetDateTime> {
    if let Ok(secs) = v.parse::<i64>() {
        return OffsetDateTime::from_unix_timestamp(secs)
            .map_err(|_| Error::invalid(format!("{name} is out of range")));
    }
    crate::domain::time_fmt::parse_rfc3339(v).ok_or_else(|| {
        Error::invalid(format!(
            "{name} must be unix seconds or an RFC 3339 time, not '{v}'"
        ))
    })
}

/// `GET /api/orgs/{org}/auditlogs?startTime=&endTime=&continuationToken=` (also `since` and
/// `until`): admin only; newest first, 100 a page; the last 7 days by default.
/// `{auditLogEvents: [{timestamp, sourceIP, event, description, user, tokenID, tokenName,
/// reqOrgAdmin, reqStackAdmin, authFailure}], continuationToken}`; Tarmac adds `method`,
/// `path`, `status` and `userAgent` to each.
#[utoipa::path(
    get,
    path = "/api/orgs/{org}/auditlogs",
    tag = "audit",
    params(ListQuery),
    responses((status = 200, description = "A page of the org's audit log, newest first, 100 a page", body = super::schema::orgs::AuditLogPage)),
    security(("token" = ["admin"])),
    extensions(("x-tarmac-extension" = json!(true))),
)]
pub(super) async fn list(
    State(state): State<AppState>,
    ctx: OrgCtx,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>> {
    ctx.require_admin()?;
    let now = OffsetDateTime::now_utc();
    let since = match q.start_time.as_deref().or(q.since.as_deref()) {
        Some(v) => instant("startTime", v)?,
        None => now - time::Duration::days(7),
    };
    let until = match q.end_time.as_deref().or(q.until.as_deref()) {
        Some(v) => instant("endTime", v)?,
        None => now + time::Duration::seconds(1),
    };
    let (events, next) = state
        .deps
        .audit
        .events(&ctx.org, since, until, q.continuation_token.as_deref(), 100)
        .await?;
    let events: Vec<Value> = events
        .into_iter()
        .map(|e| {
            json!({
                "timestamp": e.timestamp.unix_timestamp(),
                "sourceIP": e.source_ip,
                "event": format!("{} {}", e.method, e.route),
                "description": format!("{} {} answered {}", e.method, e.path, e.status),
                "user": {"name": e.token_name, "githubLogin": "", "avatarUrl": ""},
                "tokenID": e.token_id,
                "tokenName": e.token_name,
                "reqOrgAdmin": e.admin,
                "reqStackAdmin": false,
                "authFailure": false,
                "method": e.method,
                "path": e.path,
                "status": e.status,
                "userAgent": e.user_agent,
            })
        })
        .collect();
    Ok(Json(
        json!({ "auditLogEvents": events, "continuationToken": next }),
    ))
}
