//! The Lambda handlers behind the thin binaries in `functions/`: the API (`http::router`
//! through `lambda_http`), the SQS worker, the EventBridge scheduler and the `oidc` function.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use lambda_runtime::LambdaEvent;
use time::OffsetDateTime;

use serde_json::Value;

use crate::app::{App, Config};
use crate::aws::oidc::Reply;
use crate::aws::{AwsConfig, SqsQueue};
use crate::deps::Deps;
use crate::domain::Lease;
use crate::error::{Error, Result};
use crate::oidc::{CredentialBroker, ExchangeRequest, Exchanger};
use crate::ports::{ClaimOutcome, QueueMessage};
use crate::runner::Runner;
use crate::runner::StopSignal;
use crate::scheduler::{TickReport, tick};

/// Everything the api, worker and scheduler functions share, built once per cold start.
pub struct AwsApp {
    pub cfg: AwsConfig,
    pub deps: std::sync::Arc<Deps>,
    pub runner: std::sync::Arc<Runner>,
    pub queue: std::sync::Arc<SqsQueue>,
}

impl AwsApp {
    pub async fn build(cfg: AwsConfig, sdk: &aws_config::SdkConfig) -> Result<Self> {
        let app = App::build(Config::Aws(Box::new((cfg.clone(), sdk.clone())))).await?;
        let queue = app
            .sqs
            .ok_or_else(|| Error::internal("an AWS app has a queue"))?;
        Ok(Self {
            cfg,
            deps: app.deps,
            runner: app.runner,
            queue,
        })
    }
}

/// The `api` function's service: the router, behind a layer that removes API Gateway's stage
/// from the path (`/prod/api/...` becomes `/api/...`), so REST API (v1) stages and HTTP API
/// named stages route like `$default`.
pub fn api_service(
    deps: std::sync::Arc<crate::deps::Deps>,
) -> impl tower::Service<
    lambda_http::Request,
    Response = axum::response::Response,
    Error = std::convert::Infallible,
    Future = impl Send,
> + Clone {
    tower::ServiceBuilder::new()
        .map_request(strip_stage)
        .service(crate::http::router(deps))
}

fn strip_stage(mut req: lambda_http::Request) -> lambda_http::Request {
    use lambda_http::RequestExt;
    use lambda_http::request::RequestContext;
    let stage = match req.request_context_ref() {
        Some(RequestContext::ApiGatewayV1(c)) => c.stage.clone(),
        Some(RequestContext::ApiGatewayV2(c)) => c.stage.clone(),
        _ => None,
    };
    let Some(stage) = stage.filter(|s| s != "$default") else {
        return req;
    };
    let prefix = format!("/{stage}");
    let path = req.uri().path();
    if let Some(rest) = path.strip_prefix(&prefix).filter(|r| r.starts_with('/')) {
        let pq = match req.uri().query() {
            Some(q) => format!("{rest}?{q}"),
            None => rest.to_string(),
        };
        if let Ok(uri) = pq.parse() {
            *req.uri_mut() = uri;
        }
    }
    req
}

/// Written in a run's log when the invocation is about to end under it.
pub const INVOCATION_ENDING: &str = "The worker's Lambda invocation was about to end, so the deployment was stopped and failed; \
     it is not retried, because an interrupted engine run is not safe to repeat blindly. \
     Give the deployment a timeout under the worker's Lambda limit (its timeout, 15 minutes at most, less a safety margin), \
     or route the stack to an agent pool (its agentPoolID setting) to run it for longer.";

/// Handles a batch from the SQS FIFO queue. Each message is one deployment: claimed under a
/// lease (a redelivered message finds it claimed and does nothing) and run to its end. Messages
/// that should come back later are reported as failures, and so is every later message of the
/// same group, so a stack's order holds.
pub async fn worker(
    app: &AwsApp,
    event: LambdaEvent<SqsEvent>,
) -> Result<SqsBatchResponse, lambda_runtime::Error> {
    let deadline = event.context.deadline();
    let request_id = event.context.request_id.clone();
    let mut response = SqsBatchResponse::default();
    let mut held_back: HashSet<String> = HashSet::new();
    for record in event.payload.records {
        let message_id = record.message_id.clone().unwrap_or_default();
        let group = record.attributes.get("MessageGroupId").cloned();
        let remaining = deadline
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        let outcome = if group.as_ref().is_some_and(|g| held_back.contains(g)) {
            Outcome::NotNow
        } else if remaining <= app.cfg.safety_margin {
            tracing::info!(%message_id, "too little time left in this invocation; handing the message back");
            Outcome::NotNow
        } else {
            handle(app, &record, &request_id, deadline).await
        };
        if outcome == Outcome::Done {
            continue;
        }
        response.add_failure(message_id);
        if let Some(g) = group {
            held_back.insert(g);
        }
        // A message not even tried comes back at once; a waiting stack is asked again shortly;
        // a failure keeps the queue's visibility timeout, on its way to the dead-letter queue.
        let visible_in = match outcome {
            Outcome::NotNow => Some(0),
            Outcome::Busy | Outcome::Retry => Some(10),
            _ => None,
        };
        if let (Some(secs), Some(receipt)) = (visible_in, record.receipt_handle.as_deref())
            && let Err(e) = app.queue.extend_visibility(receipt, secs).await
        {
            tracing::warn!(error = %e.chain(), "could not hand a message back");
        }
    }
    // Nothing runs between invocations: the runs' notifications go out now, within what is
    // left of this one (the scheduler's tick sends whatever is left, and the retries).
    let left = deadline
        .duration_since(SystemTime::now())
        .unwrap_or_default()
        .saturating_sub(app.cfg.safety_margin / 2);
    crate::delivery::drain(&app.deps, left.min(NOTIFY_BUDGET)).await;
    Ok(response)
}

/// What became of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Handled: delete it.
    Done,
    /// Not tried (too little time, or its group is held back): redeliver now.
    NotNow,
    /// Its stack is busy with another deployment: redeliver soon.
    Busy,
    /// The claim met a passing fault (throttling, a timeout): redeliver soon.
    Retry,
    /// Unreadable, or the claim failed for good: redeliver after the visibility timeout, on
    /// its way to the dead-letter queue.
    Failed,
}

/// Handles one message.
async fn handle(
    app: &AwsApp,
    record: &SqsMessage,
    request_id: &str,
    deadline: SystemTime,
) -> Outcome {
    let parsed = record
        .body
        .as_deref()
        .map(serde_json::from_str::<QueueMessage>);
    let Some(Ok(message)) = parsed else {
        // Redelivered until the queue's redrive policy moves it to the dead-letter queue.
        tracing::error!(message_id = ?record.message_id, "unreadable queue message");
        return Outcome::Failed;
    };
    let Ok(stack) = message.stack_ref() else {
        tracing::error!(?message, "queue message names an invalid stack");
        return Outcome::Failed;
    };
    let id = message.deployment_id;
    let lease = Lease {
        owner: format!("lambda-{request_id}-{id}"),
        ttl: app.cfg.lease_ttl,
    };
    match app.deps.runs.claim(&stack, id, &lease).await {
        Ok(ClaimOutcome::Claimed(claimed)) => {
            let stop = StopSignal::new(INVOCATION_ENDING);
            // Stop the run early enough for its processes to end and its status to be written:
            // the stop grace, plus half the safety margin for the writes.
            let stop_at = deadline
                .checked_sub(app.cfg.stop_grace + app.cfg.safety_margin / 2)
                .unwrap_or(deadline);
            let until = stop_at
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            let timer = {
                let token = stop.token.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(until).await;
                    token.cancel();
                })
            };
            let heartbeat = record.receipt_handle.clone().map(|receipt| {
                let (queue, visibility) = (app.queue.clone(), app.cfg.visibility);
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(visibility / 2).await;
                        if let Err(e) = queue.extend_visibility(&receipt, visibility.as_secs() as i32).await {
                            tracing::warn!(error = %e.chain(), "could not extend the message's visibility");
                        }
                    }
                })
            });
            app.runner.run(*claimed, &lease, &stop).await;
            timer.abort();
            if let Some(h) = heartbeat {
                h.abort();
            }
            Outcome::Done
        }
        Ok(
            ClaimOutcome::Gone
            | ClaimOutcome::Skipped
            | ClaimOutcome::Paused
            | ClaimOutcome::AwaitingApproval,
        ) => Outcome::Done,
        Ok(ClaimOutcome::Busy) => Outcome::Busy,
        Err(e) if e.is_retryable() => {
            tracing::warn!(deployment_id = %id, error = %e.chain(), "claim failed; retrying soon");
            Outcome::Retry
        }
        Err(e) => {
            tracing::error!(deployment_id = %id, error = %e.chain(), "claim failed");
            Outcome::Failed
        }
    }
}

/// How long the worker spends sending its runs' notifications before it returns.
const NOTIFY_BUDGET: Duration = Duration::from_secs(15);

/// The scheduler's tick, on EventBridge's `rate(1 minute)`: also sends every notification that
/// is due (retries included).
pub async fn scheduler(
    app: &AwsApp,
    event: LambdaEvent<EventBridgeEvent>,
) -> Result<TickReport, lambda_runtime::Error> {
    let now = event
        .payload
        .time
        .and_then(|t| {
            OffsetDateTime::from_unix_timestamp_nanos(t.timestamp_nanos_opt()? as i128).ok()
        })
        .unwrap_or_else(OffsetDateTime::now_utc)
        // An event delivered late must not reap leases early.
        .min(OffsetDateTime::now_utc());
    let report = match tick(&app.deps, now, app.cfg.queue_max_age).await {
        Ok(report) => report,
        // EventBridge invokes again on an error: worth it only for a passing fault. Anything
        // else is logged (by the tick) and waits for the next minute's tick.
        Err(e) if e.is_retryable() => return Err(e.into()),
        Err(_) => TickReport::default(),
    };
    crate::delivery::drain(&app.deps, NOTIFY_BUDGET * 2).await;
    Ok(report)
}

/// The `oidc` function's state, built once per cold start.
pub struct OidcFunction {
    exchanger: Exchanger,
}

impl OidcFunction {
    pub async fn build(
        get: impl Fn(&str) -> Option<String>,
        sdk: &aws_config::SdkConfig,
    ) -> Result<Self> {
        let table = get("TARMAC_TABLE")
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Error::invalid("TARMAC_TABLE must be set"))?;
        let key_id = get("TARMAC_OIDC_KMS_KEY_ID").filter(|k| !k.is_empty());
        let exchanger = crate::app::aws_oidc_exchanger(
            &table,
            &crate::aws::oidc::issuer_url(&get)?,
            key_id.as_deref(),
            sdk,
        )
        .await?;
        Ok(Self { exchanger })
    }

    /// One invocation: an `ExchangeRequest` in, a `Reply` out. Refusals are replies, not
    /// function errors, so the worker can tell them apart from a broken function.
    pub async fn handle(&self, event: Value) -> Value {
        let reply = match serde_json::from_value::<ExchangeRequest>(event) {
            Err(e) => Reply::Error {
                code: 400,
                message: format!("not an exchange request: {e}"),
            },
            Ok(request) => match self.exchanger.exchange(&request).await {
                Ok(creds) => Reply::Credentials(Box::new(creds)),
                Err(e) => {
                    let status = e.status();
                    let message = if e.is_internal() {
                        tracing::error!(error = %e.chain(), "credential exchange failed");
                        "internal error".to_string()
                    } else {
                        tracing::warn!(deployment_id = %request.deployment_id, status = status.as_u16(), error = %e, "credential exchange refused");
                        e.to_string()
                    };
                    Reply::Error {
                        code: status.as_u16(),
                        message,
                    }
                }
            },
        };
        serde_json::to_value(reply).unwrap_or(Value::Null)
    }
}
