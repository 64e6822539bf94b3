//! `Deps`: every port a handler, worker or tick needs, in one struct. `crate::app` is the only
//! place that builds one.

use std::path::PathBuf;
use std::sync::Arc;

use crate::crypto::Cipher;
use crate::domain::StackRef;
use crate::oidc::{CredentialBroker, Issuer};
use crate::ports::*;

/// Everything a handler or worker needs, behind ports. Cloning it shares the adapters.
#[derive(Clone)]
pub struct Deps {
    pub stacks: Arc<dyn StackStore>,
    pub orgs: Arc<dyn OrgStore>,
    pub tokens: Arc<dyn TokenStore>,
    pub pools: Arc<dyn AgentPoolStore>,
    pub idempotency: Arc<dyn IdempotencyStore>,
    pub audit: Arc<dyn AuditLog>,
    pub bulk: Arc<dyn BulkStore>,
    pub deployments: Arc<dyn DeploymentStore>,
    pub logs: Arc<dyn LogStore>,
    pub runs: Arc<dyn RunStore>,
    pub schedules: Arc<dyn ScheduleStore>,
    pub drift: Arc<dyn DriftStore>,
    pub keys: Arc<dyn SigningKeyStore>,
    pub hooks: Arc<dyn HookStore>,
    pub outbox: Arc<dyn Outbox>,
    /// Where new deployments are sent, for backends whose store is not itself the queue (AWS).
    /// `None` in embedded mode: there the insert is the enqueue.
    pub queue: Option<Arc<dyn Queue>>,
    pub cipher: Cipher,
    /// Base of `consoleUrl` links.
    pub public_url: String,
    /// Which `file://` and local-path repositories may be cloned.
    pub local_repos: crate::domain::spec::LocalRepos,
    /// Where per-stack engine state lives on this machine, removed with the stack.
    pub state_dir: PathBuf,
    /// Where engine state is kept between runs when the worker's disk does not last (AWS).
    pub state_store: Option<Arc<dyn StateStore>>,
    /// SHA-256 (hex) of the one-time secret `POST /api/bootstrap` exchanges for an org's first
    /// admin token; `None` disables the route.
    pub bootstrap_sha256: Option<String>,
    /// Deployments that can run at once, reported as the org's `concurrency` (0: unbounded).
    pub concurrency: usize,
    /// The OIDC issuer whose discovery document and JWKS the API serves.
    pub issuer: Option<Arc<Issuer>>,
    /// Where runs get their OIDC token and cloud credentials.
    pub credentials: Arc<dyn CredentialBroker>,
    /// Signalled when any deployment's run changes (status, steps, log lines), where this
    /// process sees every change as it happens (embedded): live streams wait on it. `None`
    /// where it cannot (AWS, behind API Gateway, which cannot stream anyway).
    pub run_changes: Option<Arc<tokio::sync::Notify>>,
    /// Signalled when a deployment may have become claimable, where this process sees it
    /// (embedded): agents' long polls wait on it. `None` in AWS mode, where they poll.
    pub work_signal: Option<Arc<tokio::sync::Notify>>,
    /// The lease an agent holds on the deployment it runs; it heartbeats well within it.
    pub agent_lease: std::time::Duration,
    /// Where agents' engine state is restored from and saved to: the data dir's state
    /// directories (embedded), the state bucket (AWS).
    pub agent_state: Arc<dyn StateStore>,
    /// The engines and git on the deployments' `PATH`, found at start (embedded); empty where
    /// the runs happen elsewhere (the API function in AWS mode).
    pub tools: Vec<crate::domain::Tool>,
    /// This machine's run cache, where the API's process is the one that runs deployments
    /// (embedded): `DELETE S/deployments/cache` clears a stack's entry in it.
    pub run_cache: Option<Arc<dyn StackCache>>,
}

impl Deps {
    /// Removes a deleted stack's engine state, wherever it is kept: the state store's copy (its
    /// history stays in the versioned bucket) and this machine's state directory. Best effort:
    /// the stack is already gone, so failures are logged.
    pub async fn forget_state(&self, stack: &StackRef) {
        if let Some(store) = &self.state_store
            && let Err(e) = store.delete(stack).await
        {
            tracing::error!(error = %e.chain(), %stack, "could not remove a deleted stack's saved state");
        }
        let dir = stack.dir_under(&self.state_dir);
        if let Err(e) = tokio::fs::remove_dir_all(&dir).await
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(error = %e, dir = %dir.display(), "could not remove a deleted stack's state");
        }
    }

    /// A deployment's `consoleUrl`, also the link in notifications.
    pub fn console_url(&self, stack: &StackRef, version: i64) -> String {
        format!("{}/{stack}/deployments/{version}", self.public_url)
    }
}
