//! `GET S/deployments/{id}/stream` (Tarmac extension): a deployment's status and log lines as
//! server-sent events, for the console and the CLI to follow a run without polling. Events:
//! `deployment` (the deployment, first and on every change of status or steps), `log` (one per
//! log entry, in order; its SSE `id` is the entry's sequence number, and `?after=<seq>` or a
//! reconnecting `EventSource`'s `Last-Event-ID` resumes after it) and `end` (the deployment ended and every line was sent). Only where the
//! server sees runs change as they happen (`tarmac serve`): elsewhere (behind API Gateway,
//! which cannot stream) it answers 404 and clients poll `logs?continuationToken=`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream::{self, Stream};
use serde_json::{Value, json};
use tokio::sync::Notify;

use super::AppState;
use super::deployments::{find, parse_id};
use super::extract::{Params, Query, StackCtx, param};
use super::wire;
use crate::domain::StackRef;
use crate::error::{Error, Result};
use crate::ports::LogQuery;

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct StreamQuery {
    /// Resume after this log entry's sequence number.
    after: Option<i64>,
}

/// Log entries read per round.
const BATCH: usize = 500;
/// The longest a stream waits without a change signal before it looks again (a change made by
/// another process, say).
const IDLE: Duration = Duration::from_secs(1);

/// What one stream knows between rounds.
struct Cursor {
    state: AppState,
    signal: Arc<Notify>,
    stack: StackRef,
    id: uuid::Uuid,
    after: i64,
    /// The last deployment sent, to send it again only when it changed.
    sent: Option<Value>,
    /// Events ready to go out.
    ready: std::collections::VecDeque<Event>,
    done: bool,
}

#[utoipa::path(
    get,
    path = "/deployments/{id}/stream",
    tag = "deployments",
    params(("id" = uuid::Uuid, Path, description = "The deployment's id"), StreamQuery, ("Last-Event-ID" = Option<i64>, Header, description = "Resume after this log entry")),
    responses((status = 200, description = "Server-sent events: `deployment`, `log` (its id is the entry's sequence) and `end`", content_type = "text/event-stream", body = String)),
    security(("token" = ["read"])),
    extensions(("x-tarmac-extension" = json!(true))),
)]
pub(super) async fn stream(
    State(state): State<AppState>,
    ctx: StackCtx,
    Params(p): Params,
    Query(q): Query<StreamQuery>,
    headers: axum::http::HeaderMap,
) -> Result<Sse<impl Stream<Item = std::result::Result<Event, Infallible>>>> {
    let signal = state.deps.run_changes.clone().ok_or_else(|| {
        Error::not_found("live streams are not available here; poll logs?continuationToken=")
    })?;
    let id = parse_id(&param(&p, "id"))?;
    // Refused before the stream opens: another stack's deployment, or none.
    find(&state, &ctx.stack, id).await?;
    let cursor = Cursor {
        state,
        signal,
        stack: ctx.stack,
        id,
        after: q
            .after
            .or_else(|| last_event_id(&headers))
            .unwrap_or(0)
            .max(0),
        sent: None,
        ready: Default::default(),
        done: false,
    };
    let events = stream::unfold(cursor, |mut c| async move {
        loop {
            if let Some(e) = c.ready.pop_front() {
                return Some((Ok(e), c));
            }
            if c.done {
                return None;
            }
            // Registered before reading, so a change between the read and the wait is kept.
            let changed = c.signal.clone();
            let changed = changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            match round(&mut c).await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e.chain(), "a live stream stopped");
                    return None;
                }
            }
            tokio::select! {
                _ = changed => {}
                _ = tokio::time::sleep(IDLE) => {}
            }
        }
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

/// The sequence number a reconnecting `EventSource` saw last.
fn last_event_id(headers: &axum::http::HeaderMap) -> Option<i64> {
    headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// Reads what changed since the last round into `ready`. Returns whether there is more to
/// send before waiting.
async fn round(c: &mut Cursor) -> Result<bool> {
    // The deployment before its logs: a terminal status seen here means every line is stored.
    let d = find(&c.state, &c.stack, c.id).await?;
    let shown = wire::deployment(&d);
    let mut progressed = false;
    if c.sent.as_ref() != Some(&shown) {
        c.ready
            .push_back(Event::default().event("deployment").data(shown.to_string()));
        c.sent = Some(shown);
        progressed = true;
    }
    let entries = c
        .state
        .deps
        .logs
        .read_logs(
            c.id,
            LogQuery::Stream {
                after: c.after,
                limit: BATCH,
            },
        )
        .await?;
    let complete = entries.len() < BATCH;
    for e in entries {
        c.after = e.seq;
        if e.event.is_some() {
            continue;
        }
        let mut line = wire::stream_line(&e);
        line["seq"] = json!(e.seq);
        line["step"] = json!(e.step);
        c.ready.push_back(
            Event::default()
                .event("log")
                .id(e.seq.to_string())
                .data(line.to_string()),
        );
        progressed = true;
    }
    if d.status.is_terminal() && complete {
        c.ready.push_back(Event::default().event("end").data("{}"));
        c.done = true;
        return Ok(true);
    }
    Ok(progressed || !complete)
}
