//! `tarmac agent`: runs a pool's deployments on this machine, as a client of the API. Runs
//! that outlast Lambda's 15 minutes, or that must reach a private network, go to a pool whose
//! agents run where they can.
//!
//! Each of `concurrency` slots long-polls for a deployment, runs it with the same executor and
//! sandbox as the built-in workers (steps, logs, heartbeats and state through the API under
//! the run's lease), and reports its end. An agent killed mid-run stops heartbeating; its lease
//! expires and the server's reaper fails the run, as for a dead worker.

mod client;
pub mod protocol;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::domain::spec::{DeploymentConfig, LocalRepos, SourcePolicy};
use crate::domain::{Deployment, JobStatus, Lease, StackRef};
use crate::error::{Error, Result};
use crate::runner::{Executor, RunContext, RunnerConfig, StopSignal};
use crate::sandbox::{Sandbox, SandboxConfig};
pub use client::Api;
use client::RemoteRun;
use protocol::{AgentHello, Job};

/// Everything `tarmac agent` is configured with.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The API's base URL.
    pub url: String,
    /// The pool's token.
    pub token: String,
    pub concurrency: usize,
    /// How long one claim waits for work (the server answers at most 25 s).
    pub poll: Duration,
    /// Runs' working directories and engine state go under here.
    pub work_dir: PathBuf,
    /// `PATH` for deployments' processes.
    pub child_path: String,
    pub deployment_timeout: Duration,
    pub stop_grace: Duration,
    pub sandbox: SandboxConfig,
    /// The run cache's size cap, in bytes (`--cache-max-size`); the cache is the work dir's
    /// `cache/`, kept across restarts.
    pub cache_max_bytes: u64,
    /// `--secrets-with-server-credentials`: the agent's own AWS credentials.
    pub secrets_with_server_credentials: bool,
}

/// Refuses a URL that would send the pool token in the clear, but to this machine.
pub fn check_url(url: &str) -> Result<()> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| Error::invalid(format!("--url '{url}' is not a URL: {e}")))?;
    let local = matches!(
        parsed.host_str(),
        Some("127.0.0.1" | "localhost" | "[::1]" | "::1")
    );
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if local => Ok(()),
        _ => Err(Error::invalid(format!(
            "--url '{url}' must be https (plain http only to this machine): the pool token and the runs' secrets travel over it"
        ))),
    }
}

/// Runs until SIGINT/SIGTERM, or until the server refuses the token.
pub async fn run(cfg: AgentConfig) -> Result<()> {
    check_url(&cfg.url)?;
    if cfg.concurrency == 0 {
        return Err(Error::invalid("--concurrency must be at least 1"));
    }
    std::fs::create_dir_all(&cfg.work_dir)?;
    let work_dir = std::fs::canonicalize(&cfg.work_dir)?;
    // Whatever is left from an earlier agent here is over: its leases expire on the server.
    let runs_dir = work_dir.join("runs");
    let orphans = crate::runner::exec::kill_orphans(&runs_dir);
    if orphans > 0 {
        tracing::warn!(orphans, "killed processes left running by a previous agent");
    }
    let _ = std::fs::remove_dir_all(&runs_dir);
    let state_dir = work_dir.join("state");
    let _ = std::fs::remove_dir_all(&state_dir);
    let tools = crate::runner::engine::discover(&cfg.child_path).await;
    let found: Vec<PathBuf> = tools.iter().filter_map(|t| t.path.clone()).collect();
    let sandbox = Arc::new(Sandbox::new(
        &cfg.sandbox,
        &cfg.child_path,
        &found,
        std::slice::from_ref(&work_dir),
    )?);
    sandbox.ready().await?;

    let api = Api::new(&cfg.url, &cfg.token)?;
    let hello = AgentHello {
        id: uuid::Uuid::new_v4().to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        platform: format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
        hostname: nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_default(),
        pid: std::process::id().to_string(),
    };
    let shared = Arc::new(Slots {
        api,
        hello,
        poll: cfg.poll,
        runner: RunnerConfig {
            work_dir: runs_dir,
            path_env: cfg.child_path.clone(),
            lang: "C.UTF-8".into(),
            default_timeout: cfg.deployment_timeout,
            stop_grace: cfg.stop_grace,
            heartbeat_every: Duration::from_secs(1),
            sandbox,
            cache: Arc::new(crate::runner::cache::Cache::open(
                &work_dir.join("cache"),
                cfg.cache_max_bytes,
            )?),
            secrets_with_server_credentials: cfg.secrets_with_server_credentials,
        },
        state_dir,
    });
    println!(
        "Tarmac agent {} serving its pool at {} ({} slot(s)); press Ctrl+C to stop.",
        shared.hello.id, cfg.url, cfg.concurrency
    );
    use std::io::Write;
    let _ = std::io::stdout().flush();

    let stop_claiming = CancellationToken::new();
    let abort = StopSignal::new(
        "The agent running this deployment was stopped; the run was stopped with it.",
    );
    let refused = CancellationToken::new();
    let mut slots = JoinSet::new();
    for _ in 0..cfg.concurrency {
        let (s, stop, abort, refused) = (
            Arc::clone(&shared),
            stop_claiming.clone(),
            abort.clone(),
            refused.clone(),
        );
        slots.spawn(async move { s.work(stop, abort, refused).await });
    }
    tokio::select! {
        _ = crate::worker::shutdown_signal() => {
            tracing::info!("stopping: running deployments are stopped");
        }
        _ = refused.cancelled() => {}
    }
    stop_claiming.cancel();
    abort.token.cancel();
    let mut error = None;
    while let Some(r) = slots.join_next().await {
        if let Ok(Err(e)) = r {
            error.get_or_insert(e);
        }
    }
    match error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

struct Slots {
    api: Api,
    hello: AgentHello,
    poll: Duration,
    runner: RunnerConfig,
    state_dir: PathBuf,
}

impl Slots {
    async fn work(
        &self,
        stop: CancellationToken,
        abort: StopSignal,
        refused: CancellationToken,
    ) -> Result<()> {
        let mut backoff = Duration::from_millis(500);
        loop {
            if stop.is_cancelled() {
                return Ok(());
            }
            // Not given up when the agent stops: the server may already have handed this
            // claim a deployment, which is then started, stopped and failed with the agent's
            // reason, rather than left to fail when its lease runs out.
            let claimed = self.api.claim(&self.hello, self.poll).await;
            match claimed {
                Ok(Some(job)) => {
                    backoff = Duration::from_millis(500);
                    self.run_job(job, &abort).await;
                }
                Ok(None) => backoff = Duration::from_millis(500),
                Err(e @ (Error::Unauthorized(_) | Error::Forbidden(_))) => {
                    refused.cancel();
                    return Err(Error::Unauthorized(format!(
                        "the server refused this agent's pool token ({e}); it was revoked, or its pool deleted. Stopping."
                    )));
                }
                Err(e) => {
                    tracing::warn!(error = %e.chain(), "claiming failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.cancelled() => return Ok(()),
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    #[tracing::instrument(skip_all, fields(deployment_id = %job.id, org = %job.org, project = %job.project, stack = %job.stack))]
    async fn run_job(&self, job: Job, abort: &StopSignal) {
        let stack = match StackRef::new(&job.org, &job.project, &job.stack) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "the server sent a job for an invalid stack");
                return;
            }
        };
        let remote = Arc::new(RemoteRun::new(self.api.clone(), &stack, job.id, &job.lease));
        let config = DeploymentConfig::parse(job.settings.clone(), SourcePolicy::Stored);
        let now = OffsetDateTime::now_utc();
        let lease_ttl = Duration::from_millis(job.lease_millis.max(300));
        let lease = Lease {
            owner: job.lease.clone(),
            ttl: lease_ttl,
        };
        let opened = match (&config, job.opened, job.error) {
            (Err(e), _, _) => Err(format!("the deployment's settings cannot be run: {e}")),
            (Ok(_), Some(o), None) => Ok(o),
            (Ok(_), _, Some(e)) => Err(e),
            (Ok(_), None, None) => Err("the server sent no secrets for this run".into()),
        };
        let d = Deployment {
            id: job.id,
            stack: stack.clone(),
            version: job.version,
            latest_version: job.version,
            operation: job.operation,
            status: JobStatus::Running,
            config: config.unwrap_or_else(|_| {
                DeploymentConfig::parse(
                    serde_json::json!({"sourceContext": {"git": {"repoUrl": "https://invalid.invalid/"}}}),
                    SourcePolicy::Stored,
                )
                .expect("a fixed valid settings document")
            }),
            initiator: String::new(),
            requested_by: String::new(),
            created: now,
            modified: now,
            started: Some(now),
            steps: vec![],
            stack_paused: false,
            update: None,
            approval: None,
        };
        let ctx = RunContext {
            runs: remote.clone(),
            state_store: Some(remote.clone()),
            state_dir: self.state_dir.join(job.id.simple().to_string()),
            credentials: remote.clone(),
            local_repos: LocalRepos::Denied,
            platform: remote.clone(),
        };
        let mut runner = self.runner.clone();
        runner.heartbeat_every =
            (lease_ttl / 10).clamp(Duration::from_millis(100), Duration::from_secs(5));
        let exec = Executor::new(ctx, runner);
        tracing::info!("running");
        let ended = exec.execute(&d, opened, &lease, abort).await;
        let _ = tokio::fs::remove_dir_all(self.state_dir.join(job.id.simple().to_string())).await;
        match ended {
            Some(ended) => match remote.complete(&ended).await {
                Ok(()) => tracing::info!(status = %ended.status, "finished"),
                Err(e) => {
                    tracing::error!(error = %e.chain(), "could not report the run's end; its lease will expire")
                }
            },
            None => tracing::warn!("the lease was lost; the server has failed this run"),
        }
    }
}
