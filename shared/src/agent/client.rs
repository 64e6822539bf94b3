//! The agent's side of the protocol: the API client, and the run's ports (`RunStore`,
//! `StateStore`, `CredentialBroker`, `Platform`) as calls to it under the run's lease.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

use super::protocol::*;
use crate::domain::pools::ClaimQueue;
use crate::domain::updates::{UpdateKind, UpdateOutcome};
use crate::domain::{JobStatus, Lease, LogLine, StackRef, StepStatus};
use crate::error::{Error, Result};
use crate::oidc::{CredentialBroker, ExchangeRequest, RunCredentials};
use crate::ports::*;
use crate::runner::{Output, Platform};

/// The API as the agent calls it.
#[derive(Debug, Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

/// The API's error body.
#[derive(serde::Deserialize)]
struct ErrorBody {
    message: String,
}

impl Api {
    pub fn new(base: &str, token: &str) -> Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("tarmac-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::internal(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
        })
    }

    /// One call; `None` for an answer without a body (204). The API's own errors keep their
    /// meaning: 401 `Unauthorized`, 409 `Conflict` (a lost lease), other 4xx `Invalid`; a
    /// network error or 5xx is `Upstream`, which callers retry.
    pub(crate) async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        lease: Option<&str>,
        body: Option<&(impl Serialize + ?Sized)>,
        timeout: Duration,
    ) -> Result<Option<T>> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("Authorization", format!("token {}", self.token))
            .header("Accept", "application/json")
            .timeout(timeout);
        if let Some(lease) = lease {
            req = req.header(LEASE_HEADER, lease);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| Error::Upstream(format!("cannot reach {}: {e}", self.base)))?;
        let status = resp.status();
        if status == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| Error::Upstream(format!("reading the answer of {path}: {e}")))?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                Error::Upstream(format!(
                    "the server's answer to {path} is not understood: {e}"
                ))
            });
        }
        let message = serde_json::from_slice::<ErrorBody>(&bytes)
            .map(|b| b.message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).chars().take(300).collect());
        Err(match status {
            StatusCode::UNAUTHORIZED => Error::Unauthorized(message),
            StatusCode::FORBIDDEN => Error::Forbidden(message),
            StatusCode::NOT_FOUND => Error::NotFound(message),
            StatusCode::CONFLICT => Error::Conflict(message),
            s if s.is_client_error() => Error::Invalid(format!("{status}: {message}")),
            _ => Error::Upstream(format!("{status}: {message}")),
        })
    }

    /// Waits up to `wait` for a deployment of the pool.
    pub async fn claim(&self, hello: &AgentHello, wait: Duration) -> Result<Option<Job>> {
        let req = ClaimRequest {
            agent: hello.clone(),
            wait_seconds: wait.as_secs(),
        };
        self.call(
            Method::POST,
            "/api/agent/claim",
            None,
            Some(&req),
            wait + Duration::from_secs(30),
        )
        .await
    }
}

/// The ports of one run on an agent: every call about it, under its lease.
pub(super) struct RemoteRun {
    api: Api,
    /// `/api/agent/stacks/{org}/{project}/{stack}/deployments/{id}`.
    path: String,
    lease: String,
}

const CALL_TIMEOUT: Duration = Duration::from_secs(60);

impl RemoteRun {
    pub(super) fn new(api: Api, stack: &StackRef, id: Uuid, lease: &str) -> Self {
        Self {
            api,
            path: format!(
                "/api/agent/stacks/{}/{}/{}/deployments/{id}",
                stack.org, stack.project, stack.stack
            ),
            lease: lease.to_string(),
        }
    }

    /// A call about the run, retried a few times on a network error or 5xx.
    async fn run_call<T: DeserializeOwned>(
        &self,
        method: Method,
        rel: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<Option<T>> {
        let path = format!("{}{rel}", self.path);
        let mut wait = Duration::from_millis(200);
        for attempt in 0.. {
            match self
                .api
                .call(method.clone(), &path, Some(&self.lease), body, CALL_TIMEOUT)
                .await
            {
                Err(Error::Upstream(m)) if attempt < 4 => {
                    tracing::warn!(error = %m, path, "an agent call failed; retrying");
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
                other => return other,
            }
        }
        unreachable!("the loop returns")
    }

    async fn post<T: DeserializeOwned>(&self, rel: &str, body: &impl Serialize) -> Result<T> {
        self.run_call(Method::POST, rel, Some(body))
            .await?
            .ok_or_else(|| Error::Upstream(format!("{rel}: the server sent no answer")))
    }

    async fn post_empty(&self, rel: &str, body: &impl Serialize) -> Result<()> {
        self.run_call::<Value>(Method::POST, rel, Some(body))
            .await
            .map(|_| ())
    }

    /// Reports the run's end.
    pub(super) async fn complete(&self, ended: &crate::runner::Ended) -> Result<()> {
        self.post_empty("/complete", ended).await
    }
}

fn not_here(what: &str) -> Error {
    Error::internal(format!("{what} is not an agent's to do"))
}

#[async_trait]
impl RunStore for RemoteRun {
    async fn claim_next(&self, _: &Lease, _: ClaimQueue<'_>) -> Result<Option<Claimed>> {
        Err(not_here("claiming"))
    }
    async fn claim(&self, _: &StackRef, _: Uuid, _: &Lease) -> Result<ClaimOutcome> {
        Err(not_here("claiming"))
    }
    async fn mark_running(&self, _: Uuid, _: &Lease) -> Result<()> {
        // The claim did.
        Ok(())
    }
    async fn held_deployment(
        &self,
        _: &StackRef,
        _: Uuid,
        _: &str,
    ) -> Result<Option<crate::domain::Deployment>> {
        Err(not_here("reading deployments"))
    }
    async fn heartbeat(&self, _: Uuid, _: &Lease) -> Result<Heartbeat> {
        let reply: HeartbeatReply = self.post("/heartbeat", &serde_json::json!({})).await?;
        Ok(Heartbeat {
            cancel_requested: reply.cancel_requested,
        })
    }
    async fn start_update(&self, _: Uuid, _: &Lease, kind: UpdateKind) -> Result<i64> {
        let reply: Value = self.post("/update", &UpdateStart { kind }).await?;
        reply["version"]
            .as_i64()
            .ok_or_else(|| Error::Upstream("the update's version is missing".into()))
    }
    async fn finish_update(&self, _: Uuid, _: &Lease, outcome: &UpdateOutcome) -> Result<()> {
        self.post_empty("/update/finish", outcome).await
    }
    async fn start_step(&self, _: Uuid, _: &Lease, name: &str) -> Result<usize> {
        let reply: Value = self
            .post(
                "/steps",
                &StepStart {
                    name: name.to_string(),
                },
            )
            .await?;
        reply["step"]
            .as_u64()
            .map(|s| s as usize)
            .ok_or_else(|| Error::Upstream("the step's index is missing".into()))
    }
    async fn finish_step(&self, _: Uuid, _: &Lease, step: usize, status: StepStatus) -> Result<()> {
        self.post_empty(&format!("/steps/{step}"), &StepEnd { status })
            .await
    }
    async fn append_logs(&self, _: Uuid, _: &Lease, lines: &[LogLine]) -> Result<()> {
        let body = Logs {
            lines: lines
                .iter()
                .map(|l| Line {
                    step: l.step,
                    ts: crate::domain::time_fmt::to_micros(l.timestamp),
                    line: l.line.clone(),
                    event: l.event.clone(),
                })
                .collect(),
        };
        self.post_empty("/logs", &body).await
    }
    async fn record_outputs(&self, _: Uuid, _: &Lease, _: &Value) -> Result<()> {
        Err(not_here("storing sealed outputs"))
    }
    async fn finish(&self, _: Uuid, _: &Lease, _: JobStatus) -> Result<()> {
        Err(not_here("ending a deployment directly"))
    }
    async fn queued_before(&self, _: OffsetDateTime) -> Result<Vec<QueueMessage>> {
        Err(not_here("reading the queue"))
    }
    async fn reap(&self, _: OffsetDateTime, _: OffsetDateTime) -> Result<Vec<Reaped>> {
        Err(not_here("reaping"))
    }
    async fn queue_state(
        &self,
        _: &crate::domain::Deployment,
    ) -> Result<crate::domain::QueueState> {
        Err(not_here("reading the queue"))
    }
}

#[async_trait]
impl StateStore for RemoteRun {
    async fn restore(&self, _: &StackRef, dir: &Path) -> Result<StateManifest> {
        let state: StateFiles = self
            .run_call(Method::GET, "/state", None::<&Value>)
            .await?
            .ok_or_else(|| Error::Upstream("the state answer is empty".into()))?;
        let dir = dir.to_path_buf();
        tokio::task::spawn_blocking(move || {
            crate::runner::files::fresh_dir(&dir)?;
            write_state_files(&dir, &state.files).map_err(|e| {
                Error::Upstream(format!(
                    "the server sent state this agent cannot write: {e}"
                ))
            })?;
            Ok(state.manifest.into())
        })
        .await
        .map_err(|e| Error::internal(format!("writing state: {e}")))?
    }

    async fn save(
        &self,
        _: &StackRef,
        dir: &Path,
        saved: &mut StateManifest,
    ) -> Result<(usize, usize)> {
        let dir = dir.to_path_buf();
        let files = tokio::task::spawn_blocking(move || read_state_files(&dir))
            .await
            .map_err(|e| Error::internal(format!("reading state: {e}")))??;
        let reply: StateSaved = self
            .post(
                "/state",
                &StateSave {
                    files,
                    manifest: (&*saved).into(),
                },
            )
            .await?;
        *saved = reply.manifest.into();
        Ok((reply.written, reply.removed))
    }

    async fn delete(&self, _: &StackRef) -> Result<()> {
        Err(not_here("deleting state"))
    }

    fn location(&self, _: &StackRef) -> String {
        format!("the server ({})", self.api.base)
    }
}

#[async_trait]
impl CredentialBroker for RemoteRun {
    async fn exchange(&self, _: &ExchangeRequest) -> Result<RunCredentials> {
        self.post("/credentials", &serde_json::json!({})).await
    }
}

#[async_trait]
impl Platform for RemoteRun {
    async fn record_outputs(
        &self,
        _: &StackRef,
        _: Uuid,
        _: &Lease,
        outputs: &[Output],
    ) -> Result<()> {
        self.post_empty("/outputs", &serde_json::json!({ "outputs": outputs }))
            .await
    }

    async fn pause_stack(&self, _: &StackRef) -> Result<()> {
        // The server paused it when it refused the save.
        Ok(())
    }
}
