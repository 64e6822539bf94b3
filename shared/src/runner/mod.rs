//! Running one claimed deployment: source, pre-run commands, engine, outputs, each a step with
//! its own status and logs, under a lease that is renewed while the run lasts.
//!
//! The same runner serves every backend; it only talks to the `RunStore` port.

pub mod cache;
mod credentials;
pub(crate) mod engine;
mod events;
pub(crate) mod exec;
pub(crate) mod files;
pub(crate) mod git;
pub(crate) mod logs;
pub(crate) mod remote;
mod secrets;
mod source;
mod state;
#[cfg(test)]
mod tests;
mod watch;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::deps::Deps;
use crate::domain::hooks::Event;
use crate::domain::spec::{EnvValue, LocalRepos, RunSpec};
use crate::domain::updates::{UpdateKind, UpdateOutcome, UpdateResult};
use crate::domain::{Deployment, JobStatus, Lease, LogLine, Operation, StackRef, StepStatus};
use crate::error::Result;
use crate::oidc::CredentialBroker;
use crate::ports::{Claimed, DriftRun, RunStore, StateStore};
use crate::sandbox::Sandbox;
use engine::Engine;
use events::EventStream;
use exec::{CommandSpec, Exit, Stdout};
use logs::{Masker, RunLog};
use watch::StopReason;

/// Stops runs from outside: server shutdown, or the end of a Lambda invocation. The message
/// says why, in the stopped deployment's log.
#[derive(Debug, Clone)]
pub struct StopSignal {
    pub token: CancellationToken,
    pub message: Arc<str>,
}

impl StopSignal {
    pub fn new(message: &str) -> Self {
        Self {
            token: CancellationToken::new(),
            message: message.into(),
        }
    }
}

/// How runs are carried out on this host.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Fresh per-deployment working directories go under here, removed after each run.
    pub work_dir: PathBuf,
    /// `PATH` for child processes (where git and the engines are found).
    pub path_env: String,
    pub lang: String,
    pub default_timeout: Duration,
    /// How long a stopped process group gets between SIGTERM and SIGKILL.
    pub stop_grace: Duration,
    /// How often the lease is renewed and cancellation checked.
    pub heartbeat_every: Duration,
    /// Confines every child process.
    pub sandbox: Arc<Sandbox>,
    /// Git mirrors, engines' plugins and stacks' dependency caches, shared by runs.
    pub cache: Arc<cache::Cache>,
    /// Whether AWS secret references of a run with no OIDC role are read with this process's
    /// own credentials (an operator's opt-in; see `secrets`).
    pub secrets_with_server_credentials: bool,
}

/// What executing a run needs from the platform. On a worker these are the stores
/// themselves; on an agent, clients of the agent API that act under the run's lease.
#[derive(Clone)]
pub(crate) struct RunContext {
    /// Steps, logs, the update, heartbeats: every write conditional on the lease.
    pub runs: Arc<dyn RunStore>,
    /// Where engine state is kept when it does not live in `state_dir` between runs.
    pub state_store: Option<Arc<dyn StateStore>>,
    /// Per-stack engine state directories on this machine.
    pub state_dir: PathBuf,
    pub credentials: Arc<dyn CredentialBroker>,
    /// Which local repositories may be cloned.
    pub local_repos: LocalRepos,
    pub platform: Arc<dyn Platform>,
}

/// A recorded stack output, before it is stored.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Output {
    pub name: String,
    pub value: serde_json::Value,
    pub secret: bool,
}

/// What only the platform can do for a run: seal its secret outputs with the server's key,
/// and pause its stack when its state could not be saved.
#[async_trait::async_trait]
pub(crate) trait Platform: Send + Sync {
    /// Stores the stack's outputs, the secret ones sealed.
    async fn record_outputs(
        &self,
        stack: &StackRef,
        id: Uuid,
        lease: &Lease,
        outputs: &[Output],
    ) -> Result<()>;
    /// Pauses the stack (its state is not where the next run would start from).
    async fn pause_stack(&self, stack: &StackRef) -> Result<()>;
}

/// The platform, in the process that holds the stores and the key.
pub(crate) struct LocalPlatform(pub Arc<Deps>);

#[async_trait::async_trait]
impl Platform for LocalPlatform {
    async fn record_outputs(
        &self,
        stack: &StackRef,
        id: Uuid,
        lease: &Lease,
        outputs: &[Output],
    ) -> Result<()> {
        let stored = seal_outputs(&self.0, &stack.org, outputs);
        self.0.runs.record_outputs(id, lease, &stored).await
    }

    async fn pause_stack(&self, stack: &StackRef) -> Result<()> {
        self.0.stacks.set_stack_paused(stack, true).await
    }
}

/// Outputs as stored: `{name: {"value": v}}`, or `{name: {"secret": sealed}}`.
pub(crate) fn seal_outputs(deps: &Deps, org: &str, outputs: &[Output]) -> serde_json::Value {
    let cipher = deps.cipher.for_org(org);
    let mut map = serde_json::Map::new();
    for o in outputs {
        let stored = if o.secret {
            serde_json::json!({ "secret": cipher.seal(&o.value.to_string()) })
        } else {
            serde_json::json!({ "value": o.value })
        };
        map.insert(o.name.clone(), stored);
    }
    serde_json::Value::Object(map)
}

/// Carries out runs: their steps, logs, lease and state, wherever the run happens. It knows
/// nothing of webhooks, schedules or the server's key: a run's secrets come opened.
pub(crate) struct Executor {
    ctx: RunContext,
    cfg: RunnerConfig,
    /// Asks git remotes over HTTP(S) where branches point (kept-alive connections).
    http: reqwest::Client,
}

/// The server's side of a run: it starts it (webhooks), opens its secrets, has the executor
/// carry it out, and concludes it (the ttl, the terminal status, webhooks, drift records).
pub struct Runner {
    deps: Arc<Deps>,
    exec: Executor,
}

/// A run's secrets, opened with the server's key: the one thing an agent receives that the
/// stored deployment holds sealed.
#[derive(Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Opened {
    /// Every environment variable of the run, its secret ones decrypted.
    pub env: Vec<EnvVar>,
    /// `gitAuth`, decrypted.
    pub git: Option<GitCredentials>,
    /// The passphrase of the stack's Pulumi state.
    pub passphrase: String,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened")
            .field("env", &self.env.iter().map(|e| &e.name).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// A run's git credentials, decrypted.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum GitCredentials {
    Ssh { private_key: String },
    Token { token: String },
    Basic { user: String, password: String },
}

impl GitCredentials {
    /// The user and password an HTTP remote gets (a token goes as GitHub's `x-access-token`);
    /// none for an SSH key.
    pub(crate) fn http_basic(&self) -> Option<(&str, &str)> {
        match self {
            GitCredentials::Token { token } => Some(("x-access-token", token)),
            GitCredentials::Basic { user, password } => Some((user, password)),
            GitCredentials::Ssh { .. } => None,
        }
    }

    pub(crate) fn secrets(&self) -> Vec<String> {
        match self {
            GitCredentials::Ssh { private_key } => vec![private_key.clone()],
            GitCredentials::Token { token } => vec![token.clone()],
            // A user name is no secret (and masking one that is also a word of the log, say
            // a role's name, would hide it).
            GitCredentials::Basic { password, .. } => vec![password.clone()],
        }
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect()
    }
}

/// Opens a deployment's secrets with the server's key: its environment, its git credentials
/// and its stack's Pulumi passphrase. An error says which could not be opened.
pub(crate) fn open(deps: &Deps, d: &Deployment) -> std::result::Result<Opened, String> {
    let spec = d.config.spec();
    let cipher = deps.cipher.for_org(&d.stack.org);
    let mut env = Vec::with_capacity(spec.env.len());
    for (name, value) in &spec.env {
        match value {
            EnvValue::Plain(v) => env.push(EnvVar {
                name: name.clone(),
                value: v.clone(),
                secret: false,
                reference: None,
            }),
            EnvValue::Reference(r) => env.push(EnvVar {
                name: name.clone(),
                value: String::new(),
                secret: true,
                reference: Some(r.clone()),
            }),
            EnvValue::Secret { secret } => {
                let plain = cipher.open(secret).ok_or_else(|| {
                    format!("the secret environment variable {name} cannot be decrypted with this server's key")
                })?;
                env.push(EnvVar {
                    name: name.clone(),
                    value: plain,
                    secret: true,
                    reference: None,
                });
            }
        }
    }
    let git = git_credentials(&cipher, spec.source.auth.as_ref())?;
    let passphrase = deps
        .cipher
        .derive(&format!("pulumi-passphrase:{}", d.stack));
    Ok(Opened {
        env,
        git,
        passphrase,
    })
}

/// `gitAuth`, opened with the org's key.
pub(crate) fn git_credentials(
    cipher: &crate::crypto::OrgCipher<'_>,
    auth: Option<&crate::domain::spec::source::GitAuth>,
) -> std::result::Result<Option<GitCredentials>, String> {
    let open = |v: &Option<crate::domain::spec::source::SealedValue>| {
        v.as_ref().and_then(|v| cipher.open(&v.secret))
    };
    let Some(auth) = auth else {
        return Ok(None);
    };
    Ok(if let Some(ssh) = &auth.ssh_auth {
        let key = open(&ssh.ssh_private_key).ok_or("gitAuth.sshAuth has no usable private key")?;
        Some(GitCredentials::Ssh { private_key: key })
    } else if let Some(token) = open(&auth.access_token) {
        Some(GitCredentials::Token { token })
    } else {
        auth.basic_auth.as_ref().map(|basic| GitCredentials::Basic {
            user: open(&basic.user_name).unwrap_or_default(),
            password: open(&basic.password).unwrap_or_default(),
        })
    })
}

/// How a run ended, for the server to conclude it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Ended {
    pub status: JobStatus,
    /// For detect-drift: whether drift was found.
    pub drift: Option<bool>,
    /// The step the closing lines go to.
    pub last_step: usize,
}

/// How a run's steps ended.
struct Outcome {
    /// The closing line of the log.
    summary: String,
    /// For detect-drift: whether drift was found.
    drift: Option<bool>,
}

/// One of the run's own environment variables, decrypted.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct EnvVar {
    pub name: String,
    /// Empty for a reference, until the run reads it.
    pub value: String,
    pub secret: bool,
    /// Where the value is read from when the run starts (its "Resolve secrets" step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<crate::domain::spec::secrets::SecretRef>,
}

/// Why a run ended early.
enum Failure {
    Stopped,
    Failed(String),
}

type StepResult<T = ()> = Result<T, Failure>;

/// Everything one run's steps share.
struct Run<'a> {
    d: &'a Deployment,
    lease: &'a Lease,
    log: RunLog,
    stop: CancellationToken,
    workdir: PathBuf,
    /// The child environment shared by pre-run commands and the engine; the OIDC step adds to it.
    env: Mutex<Vec<(String, String)>>,
    /// Names of the steps started so far; the last one gets the run's closing line.
    steps: Mutex<Vec<String>>,
    /// The run's secrets, opened.
    opened: Opened,
    /// What every command of the run may read or write beyond its directory and its stack's
    /// state: its caches, and the mirror its `.git` borrows from.
    grants: Mutex<Grants>,
    /// The cache entries the run uses, kept from eviction until it ends.
    held: Mutex<Vec<cache::Held>>,
    /// What the OIDC step exchanged the run's token for, for the secret references.
    cloud: Mutex<Option<crate::oidc::exchange::RunCredentials>>,
}

#[derive(Debug, Default, Clone)]
struct Grants {
    read_only: Vec<PathBuf>,
    read_write: Vec<PathBuf>,
}

impl Run<'_> {
    fn env(&self) -> Vec<(String, String)> {
        self.env.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn grant_read(&self, path: PathBuf) {
        self.grants
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .read_only
            .push(path);
    }

    fn grants(&self) -> Grants {
        self.grants
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn hold(&self, held: cache::Held) {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(held);
    }

    /// Sets variables the run has not set itself.
    fn set_default_env(&self, vars: Vec<(String, String)>) {
        let mut env = self.env.lock().unwrap_or_else(|p| p.into_inner());
        for (k, v) in vars {
            if !env.iter().any(|(name, _)| *name == k) {
                env.push((k, v));
            }
        }
    }

    /// Sets variables, replacing any of the same name.
    fn set_env(&self, vars: Vec<(String, String)>) {
        let mut env = self.env.lock().unwrap_or_else(|p| p.into_inner());
        for (k, v) in vars {
            env.retain(|(name, _)| *name != k);
            env.push((k, v));
        }
    }
}

impl Runner {
    pub fn new(deps: Arc<Deps>, cfg: RunnerConfig) -> Self {
        let ctx = RunContext {
            runs: Arc::clone(&deps.runs),
            state_store: deps.state_store.clone(),
            state_dir: deps.state_dir.clone(),
            credentials: Arc::clone(&deps.credentials),
            local_repos: deps.local_repos.clone(),
            platform: Arc::new(LocalPlatform(Arc::clone(&deps))),
        };
        Self {
            exec: Executor::new(ctx, cfg),
            deps,
        }
    }

    /// The sandbox every child of every run is started in.
    pub fn sandbox(&self) -> &Sandbox {
        self.exec.sandbox()
    }

    /// Runs a claimed deployment to a terminal status, which it returns. When `stop` fires the
    /// run is stopped and failed with its message.
    #[tracing::instrument(skip_all, fields(deployment_id = %claimed.deployment.id, org = %claimed.deployment.stack.org,
        project = %claimed.deployment.stack.project, stack = %claimed.deployment.stack.stack,
        version = claimed.deployment.version, operation = %claimed.deployment.operation))]
    pub async fn run(
        &self,
        claimed: Claimed,
        lease: &Lease,
        stop_signal: &StopSignal,
    ) -> JobStatus {
        let d = claimed.deployment;
        if let Err(e) = self.deps.runs.mark_running(d.id, lease).await {
            tracing::warn!(error = %e.chain(), "could not start a claimed deployment");
            return JobStatus::Failed;
        }
        started(&self.deps, &d).await;
        let opened = open(&self.deps, &d);
        match self.exec.execute(&d, opened, lease, stop_signal).await {
            Some(ended) => conclude(&self.deps, &d, lease, ended).await,
            None => JobStatus::Failed,
        }
    }
}

/// Announces a deployment that is now `running`.
pub(crate) async fn started(deps: &Deps, d: &Deployment) {
    tracing::info!(deployment_id = %d.id, "deployment started");
    crate::webhooks::events::deployment(deps, d, Event::DeploymentStarted).await;
}

/// Ends a run the executor carried out (here or on an agent): a successful update arms the
/// stack's ttl, the terminal status is stored, and what follows a finished run happens.
pub(crate) async fn conclude(
    deps: &Deps,
    d: &Deployment,
    lease: &Lease,
    ended: Ended,
) -> JobStatus {
    let status = ended.status;
    if status == JobStatus::Succeeded && d.operation == Operation::Update {
        let line = match crate::tags::arm(deps, &d.stack, time::OffsetDateTime::now_utc()).await {
            Ok(Some(due)) => Some(format!(
                "The stack's ttl tag schedules its destroy for {}.",
                crate::domain::time_fmt::rfc3339(due)
            )),
            Ok(None) => None,
            Err(e) => {
                tracing::error!(error = %e.chain(), "could not arm the stack's ttl");
                Some(
                    "The stack's ttl tag could not schedule its destroy; see the server's log."
                        .to_string(),
                )
            }
        };
        if let Some(line) = line {
            let entry = LogLine {
                step: ended.last_step,
                timestamp: time::OffsetDateTime::now_utc(),
                line,
                event: None,
            };
            if let Err(e) = deps.runs.append_logs(d.id, lease, &[entry]).await {
                tracing::warn!(error = %e.chain(), "could not log the ttl");
            }
        }
    }
    if let Err(e) = deps.runs.finish(d.id, lease, status).await {
        tracing::warn!(error = %e.chain(), "could not record the deployment's end");
        return JobStatus::Failed;
    }
    tracing::info!(deployment_id = %d.id, status = %status, "deployment finished");
    let succeeded = status == JobStatus::Succeeded;
    let event = if succeeded {
        Event::DeploymentSucceeded
    } else {
        Event::DeploymentFailed
    };
    crate::webhooks::events::deployment(deps, d, event).await;
    if d.operation == Operation::RemediateDrift {
        crate::webhooks::events::drift_remediation(deps, d, succeeded).await;
    }
    let delete_after = d.operation == Operation::Destroy && d.config.spec().delete_after_destroy;
    after(deps, d, status, ended.drift, delete_after).await;
    status
}

/// What follows a finished run: a detect-drift run is recorded (and remediated if asked);
/// a successful destroy with `deleteAfterDestroy` deletes the stack. Failures here are
/// logged; the deployment's own status stands.
async fn after(
    deps: &Deps,
    d: &Deployment,
    status: JobStatus,
    drift: Option<bool>,
    delete_after: bool,
) {
    if d.operation == Operation::DetectDrift {
        let run = DriftRun {
            id: Uuid::new_v4(),
            stack: d.stack.clone(),
            created: time::OffsetDateTime::now_utc(),
            detect: (d.id, d.version),
            drift_detected: drift == Some(true),
            remediation: None,
        };
        if let Err(e) = deps.drift.record_drift_run(&run).await {
            tracing::error!(error = %e.chain(), "could not record the drift run");
            return;
        }
        crate::webhooks::events::drift_detection(
            deps,
            d,
            run.id,
            run.drift_detected,
            status == JobStatus::Succeeded,
        )
        .await;
        if status == JobStatus::Succeeded
            && drift == Some(true)
            && d.config.spec().remediate_if_drift_detected
        {
            let body = serde_json::json!({"operation": "remediate-drift", "inheritSettings": true});
            let request = crate::service::CreateRequest::new(
                &d.stack,
                &body,
                "drift-remediation",
                &d.requested_by,
            );
            match crate::service::create(deps, &request).await {
                Ok(r) => {
                    if let Err(e) = deps
                        .drift
                        .link_remediation(&d.stack, run.id, (r.id, r.version))
                        .await
                    {
                        tracing::error!(error = %e.chain(), "could not link the remediation to its drift run");
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e.chain(), "could not start the drift remediation")
                }
            }
        }
    }
    if delete_after && status == JobStatus::Succeeded {
        match deps.stacks.delete_stack(&d.stack).await {
            Ok(()) => {
                tracing::info!("deleteAfterDestroy: the stack was deleted");
                deps.forget_state(&d.stack).await;
            }
            Err(e) => {
                tracing::error!(error = %e.chain(), "deleteAfterDestroy: could not delete the stack")
            }
        }
    }
}

impl Executor {
    pub(crate) fn new(ctx: RunContext, cfg: RunnerConfig) -> Self {
        let http = reqwest::Client::builder()
            .user_agent(crate::USER_AGENT)
            .build()
            .unwrap_or_default();
        Self { ctx, cfg, http }
    }

    /// The sandbox every child of every run is started in.
    pub(crate) fn sandbox(&self) -> &Sandbox {
        &self.cfg.sandbox
    }

    /// Carries out a `running` deployment under `lease`: its steps, logs and closing line.
    /// `opened` is its secrets, or why they could not be opened (which fails the run). `None`
    /// if the lease was lost: another party owns the deployment, and nothing more is written.
    pub(crate) async fn execute(
        &self,
        d: &Deployment,
        opened: std::result::Result<Opened, String>,
        lease: &Lease,
        stop_signal: &StopSignal,
    ) -> Option<Ended> {
        let spec = d.config.spec();
        // Everything secret the run knows is masked: its secret variables and git credentials.
        let secrets: Vec<String> = match &opened {
            Ok(o) => o
                .env
                .iter()
                .filter(|e| e.secret && e.reference.is_none())
                .map(|e| e.value.clone())
                .chain(o.git.iter().flat_map(GitCredentials::secrets))
                .chain(git::url_credentials(&spec.source.repo_url))
                .collect(),
            Err(_) => vec![],
        };
        let masker = Masker::new(secrets);
        let log = RunLog::start(Arc::clone(&self.ctx.runs), d.id, lease.clone(), masker);

        let stop = CancellationToken::new();
        let reason = Arc::new(Mutex::new(None));
        let timeout = spec
            .timeout_secs
            .map(Duration::from_secs)
            .unwrap_or(self.cfg.default_timeout);
        let watchdog = self.watch(
            d.id,
            lease.clone(),
            timeout,
            stop.clone(),
            Arc::clone(&reason),
            stop_signal.token.clone(),
        );

        let workdir = self.cfg.work_dir.join(d.id.to_string());
        let user_env = match &opened {
            // References are set by their step, once read.
            Ok(o) => o
                .env
                .iter()
                .filter(|e| e.reference.is_none())
                .map(|e| (e.name.clone(), e.value.clone()))
                .collect(),
            Err(_) => vec![],
        };
        let run = Run {
            d,
            lease,
            log: log.clone(),
            stop: stop.clone(),
            env: Mutex::new(self.child_env(d, &workdir, user_env)),
            workdir: workdir.clone(),
            steps: Mutex::new(Vec::new()),
            opened: opened.as_ref().ok().cloned().unwrap_or_default(),
            grants: Mutex::default(),
            held: Mutex::default(),
            cloud: Mutex::default(),
        };
        let outcome = match &opened {
            Err(msg) => Err(Failure::Failed(msg.clone())),
            Ok(_) => self.steps(&run, spec).await,
        };
        let last_step = run
            .steps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
            .saturating_sub(1);
        watchdog.abort();
        let workdir_clone = workdir.clone();
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(workdir_clone)).await;
        drop(run.held.into_inner());
        self.cfg.cache.trim_soon(false);

        let reason = *reason.lock().unwrap_or_else(|p| p.into_inner());
        let drift = outcome.as_ref().ok().and_then(|o| o.drift);
        let (status, message) = match (outcome.map(|o| o.summary), reason) {
            (_, Some(StopReason::LeaseLost)) => {
                tracing::warn!("lease lost; another party owns this deployment now");
                return None;
            }
            (Ok(msg), _) => (JobStatus::Succeeded, msg),
            (Err(Failure::Stopped), Some(StopReason::Cancelled)) => {
                (JobStatus::Failed, "Deployment cancelled.".to_string())
            }
            (Err(Failure::Stopped), Some(StopReason::TimedOut(t))) => (
                JobStatus::Failed,
                format!(
                    "Deployment timed out after {}s and was stopped.",
                    t.as_secs()
                ),
            ),
            (Err(Failure::Stopped), _) => (JobStatus::Failed, stop_signal.message.to_string()),
            (Err(Failure::Failed(msg)), _) => (JobStatus::Failed, msg),
        };
        log.line(last_step, &message).await;
        let delete_after = d.operation == Operation::Destroy && spec.delete_after_destroy;
        if delete_after && status != JobStatus::Succeeded {
            log.line(last_step, "The destroy did not succeed, so deleteAfterDestroy left the stack, its settings and its schedules in place.")
                .await;
        }
        log.flush().await;
        Some(Ended {
            status,
            drift,
            last_step,
        })
    }

    /// The child environment: nothing of the server's own but `PATH` and `LANG`.
    fn child_env(
        &self,
        d: &Deployment,
        workdir: &Path,
        user: Vec<(String, String)>,
    ) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = vec![
            ("PATH".into(), self.cfg.path_env.clone()),
            ("HOME".into(), workdir.join("home").display().to_string()),
            ("TMPDIR".into(), workdir.join("tmp").display().to_string()),
            ("LANG".into(), self.cfg.lang.clone()),
            ("CI".into(), "true".into()),
            ("PULUMI_CI_SYSTEM".into(), "Tarmac".into()),
            ("PULUMI_CI_BUILD_ID".into(), d.id.to_string()),
            ("PULUMI_CI_BUILD_NUMBER".into(), d.version.to_string()),
            ("PULUMI_SKIP_UPDATE_CHECK".into(), "true".into()),
            ("TF_IN_AUTOMATION".into(), "1".into()),
            ("TF_INPUT".into(), "0".into()),
            ("CHECKPOINT_DISABLE".into(), "1".into()),
            ("TARMAC_DEPLOYMENT_ID".into(), d.id.to_string()),
            ("TARMAC_ORG".into(), d.stack.org.clone()),
            ("TARMAC_PROJECT".into(), d.stack.project.clone()),
            ("TARMAC_STACK".into(), d.stack.stack.clone()),
            ("TARMAC_OPERATION".into(), d.operation.to_string()),
        ];
        // The run's own variables win over the defaults above.
        for (k, v) in user {
            env.retain(|(name, _)| *name != k);
            env.push((k, v));
        }
        env
    }

    async fn begin(&self, run: &Run<'_>, name: &str) -> StepResult<usize> {
        let idx = self
            .ctx
            .runs
            .start_step(run.d.id, run.lease, name)
            .await
            .map_err(|e| Failure::Failed(format!("could not record step '{name}': {e}")))?;
        run.steps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(name.to_string());
        Ok(idx)
    }

    async fn end<T>(&self, run: &Run<'_>, idx: usize, result: StepResult<T>) -> StepResult<T> {
        if let Err(Failure::Failed(msg)) = &result {
            run.log.line(idx, msg).await;
        }
        run.log.flush().await;
        let status = if result.is_ok() {
            StepStatus::Succeeded
        } else {
            StepStatus::Failed
        };
        if let Err(e) = self
            .ctx
            .runs
            .finish_step(run.d.id, run.lease, idx, status)
            .await
        {
            tracing::warn!(error = %e.chain(), "could not record a step's end");
        }
        // The step's failure has been logged in it; the deployment's end says the rest.
        result.map_err(|f| match f {
            Failure::Stopped => Failure::Stopped,
            Failure::Failed(_) => {
                Failure::Failed(format!("Step '{}' failed.", step_name(run, idx)))
            }
        })
    }

    /// Runs one command in a step; a non-zero exit other than `ok_codes` fails it.
    async fn command(
        &self,
        run: &Run<'_>,
        idx: usize,
        spec: &CommandSpec,
        mode: Stdout,
        ok_codes: &[i32],
    ) -> StepResult<(i32, Vec<u8>)> {
        let groups = run.workdir.join(exec::GROUPS_FILE);
        // Each command may write in the run's directory, its stack's state and its caches,
        // nowhere else.
        let state = self.state_dir(run.d);
        let grants = run.grants();
        let read_only: Vec<&Path> = (spec.read_only.iter())
            .chain(&grants.read_only)
            .map(PathBuf::as_path)
            .collect();
        let read_write: Vec<&Path> = [run.workdir.as_path(), state.as_path()]
            .into_iter()
            .chain(spec.read_write.iter().map(PathBuf::as_path))
            .chain(grants.read_write.iter().map(PathBuf::as_path))
            .collect();
        let launch = self
            .cfg
            .sandbox
            .launch(
                &spec.program,
                &spec.args,
                &spec.env,
                &read_write,
                &read_only,
            )
            .await
            .map_err(Failure::Failed)?;
        let out = exec::run(
            spec,
            &launch,
            &run.log,
            idx,
            mode,
            &run.stop,
            self.cfg.stop_grace,
            &groups,
        )
        .await;
        match out.exit {
            Exit::Code(c) if c == 0 || ok_codes.contains(&c) => Ok((c, out.stdout)),
            Exit::Code(c) => Err(Failure::Failed(format!(
                "{} exited with code {c}",
                display_cmd(spec)
            ))),
            Exit::Stopped => Err(Failure::Stopped),
            Exit::SpawnFailed(msg) => Err(Failure::Failed(msg)),
        }
    }

    async fn steps(&self, run: &Run<'_>, spec: &RunSpec) -> StepResult<Outcome> {
        for dir in ["home", "tmp"] {
            tokio::fs::create_dir_all(run.workdir.join(dir))
                .await
                .map_err(|e| {
                    Failure::Failed(format!("cannot create the working directory: {e}"))
                })?;
        }

        self.use_caches(run).await?;
        let idx = self.begin(run, "Get source").await?;
        let result = self.get_source(run, idx, spec).await;
        let program_dir = self.end(run, idx, result).await?;

        if spec.oidc.is_some() {
            let idx = self
                .begin(run, "Fetch provider credentials via OIDC")
                .await?;
            let result = self.fetch_credentials(run, idx).await;
            self.end(run, idx, result).await?;
        }

        if run.opened.env.iter().any(|e| e.reference.is_some()) {
            let idx = self.begin(run, "Resolve secrets").await?;
            let result = self.resolve_secrets(run, idx).await;
            self.end(run, idx, result).await?;
        }

        for (i, command) in spec.pre_run_commands.iter().enumerate() {
            let idx = self
                .begin(run, &format!("Pre-run command {}", i + 1))
                .await?;
            let shell = spec.shell.clone().unwrap_or_else(default_shell);
            run.log.line(idx, &format!("$ {command}")).await;
            let cmd = CommandSpec::new(
                shell,
                vec!["-c".into(), command.clone()],
                program_dir.clone(),
                run.env(),
            );
            let result = self
                .command(run, idx, &cmd, Stdout::Log, &[])
                .await
                .map(|_| ());
            self.end(run, idx, result).await?;
        }

        let engine = engine::detect(&program_dir, spec.engine, &self.cfg.path_env)
            .map_err(Failure::Failed)?;
        if let Some(why) = engine::missing_engine(engine, &self.cfg.path_env) {
            return Err(Failure::Failed(why));
        }
        let op = run.d.operation;
        // Pulumi clients follow a deployment's engine events from the step whose header is
        // exactly `pulumi <operation>`, and look for its update as soon as they see it: the
        // update exists first, and the step has that name whatever the engine (its first line
        // names the engine's own command).
        self.ctx
            .runs
            .start_update(run.d.id, run.lease, UpdateKind::of(op))
            .await
            .map_err(|e| Failure::Failed(format!("could not record the update: {e}")))?;
        let idx = self.begin(run, &engine_step_name(op)).await?;
        let result = self.engine_step(run, idx, engine, &program_dir).await;
        let outcome = self.end(run, idx, result).await?;

        if engine::records_outputs(op) {
            let idx = self.begin(run, "Record outputs").await?;
            let result = self.record_outputs(run, idx, engine, &program_dir).await;
            self.end(run, idx, result).await?;
        }
        Ok(outcome)
    }

    /// Gives the run its org's plugin caches and its stack's dependency cache: writable to all
    /// its commands, named in its environment (unless the run names its own), and kept from
    /// eviction until it ends. Tenants share nothing: every entry is per org or per stack.
    async fn use_caches(&self, run: &Run<'_>) -> StepResult<()> {
        let cache = &self.cfg.cache;
        let stack = cache.stack(&run.d.stack);
        let terraform = cache.plugins(&run.d.stack.org, "terraform");
        let pulumi = cache.plugins(&run.d.stack.org, "pulumi");
        let dirs = [
            ("TF_PLUGIN_CACHE_DIR", terraform.join("cache")),
            ("npm_config_cache", stack.join("npm")),
            ("PIP_CACHE_DIR", stack.join("pip")),
            ("GOMODCACHE", stack.join("go/mod")),
            ("GOCACHE", stack.join("go/build")),
            ("TARMAC_CACHE_DIR", stack.join("data")),
        ];
        let plugins = pulumi.join("plugins");
        let home_pulumi = run.workdir.join("home/.pulumi");
        // Runs get the entries' contents, never the entries themselves, whose lock and use
        // files are the server's.
        let contents: Vec<PathBuf> = dirs
            .iter()
            .map(|(_, d)| d.clone())
            .chain([plugins.clone()])
            .collect();
        // One trip to the blocking pool: this is on every run's way to its engine.
        let entries = [stack, terraform, pulumi];
        let made = {
            let (contents, plugins) = (contents.clone(), plugins.clone());
            tokio::task::spawn_blocking(move || -> std::io::Result<Vec<cache::Held>> {
                let held = entries
                    .iter()
                    .map(|e| cache::Cache::hold_blocking(e))
                    .collect::<std::io::Result<Vec<_>>>()?;
                for dir in contents.iter().chain([&home_pulumi]) {
                    std::fs::create_dir_all(dir)?;
                }
                // Pulumi has no variable for its plugin directory alone.
                std::os::unix::fs::symlink(&plugins, home_pulumi.join("plugins"))?;
                Ok(held)
            })
            .await
        };
        let held = made
            .map_err(std::io::Error::other)
            .and_then(|r| r)
            .map_err(|e| Failure::Failed(format!("the run cache failed: {e}")))?;
        for h in held {
            run.hold(h);
        }
        run.grants
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .read_write
            .extend(contents);
        run.set_default_env(
            dirs.into_iter()
                .map(|(k, v)| (k.to_string(), v.display().to_string()))
                .collect(),
        );
        Ok(())
    }

    /// The engine's environment: the run's, plus what keeps the stack's state in its state
    /// directory (the run's own variables of the same name win).
    async fn engine_env(
        &self,
        run: &Run<'_>,
        engine: Engine,
        program_dir: &Path,
    ) -> StepResult<Vec<(String, String)>> {
        let state = self.state_dir(run.d);
        tokio::fs::create_dir_all(&state).await.map_err(|e| {
            Failure::Failed(format!("cannot create the stack's state directory: {e}"))
        })?;
        let setup = engine::state_setup(engine, program_dir, &state, || {
            run.opened.passphrase.clone()
        });
        for (path, text) in setup.files {
            files::write_new(&path, text.as_bytes())
                .map_err(|e| Failure::Failed(format!("cannot write {}: {e}", path.display())))?;
        }
        let mut env = run.env();
        for (k, v) in setup.env {
            if !env.iter().any(|(name, _)| *name == k) {
                env.push((k, v));
            }
        }
        Ok(env)
    }

    /// The engine step: the operation between its update's first and last events, then the
    /// update's end (its result, changes and the resources the state holds).
    async fn engine_step(
        &self,
        run: &Run<'_>,
        idx: usize,
        engine: Engine,
        program_dir: &Path,
    ) -> StepResult<Outcome> {
        let stack = &run.d.stack;
        let kind = UpdateKind::of(run.d.operation);
        let events: Events = Arc::new(Mutex::new(EventStream::new(
            &stack.project,
            &stack.stack,
            kind == UpdateKind::Preview,
        )));
        let prelude = lock(&events).prelude();
        run.log.event(idx, prelude).await;
        let result = self
            .engine_with_state(run, idx, engine, program_dir, &events)
            .await;
        let (update_result, summary) = match &result {
            Ok(_) => (UpdateResult::Succeeded, "succeeded"),
            Err(Failure::Stopped) => (UpdateResult::Failed, "canceled"),
            Err(Failure::Failed(_)) => (UpdateResult::Failed, "failed"),
        };
        let closing = lock(&events).finish(summary);
        for e in closing {
            run.log.event(idx, e).await;
        }
        // Every event is stored before the update is seen to end.
        run.log.flush().await;
        let outcome = UpdateOutcome {
            result: update_result,
            resource_changes: lock(&events).changes().clone(),
            resource_count: engine::resource_count(engine, program_dir, &self.state_dir(run.d)),
        };
        if let Err(e) = self
            .ctx
            .runs
            .finish_update(run.d.id, run.lease, &outcome)
            .await
        {
            tracing::warn!(error = %e.chain(), "could not record the update's end");
        }
        result
    }

    async fn engine_operation(
        &self,
        run: &Run<'_>,
        idx: usize,
        engine: Engine,
        program_dir: &Path,
        events: &Events,
    ) -> StepResult<Outcome> {
        let env = self.engine_env(run, engine, program_dir).await?;
        let plan = engine::plan(engine, run.d.operation, &run.d.stack.stack);
        let last = plan.commands.len() - 1;
        let mut drift = None;
        for (i, mut args) in plan.commands.into_iter().enumerate() {
            let main = i == last;
            let event_log = run.workdir.join("engine-events.jsonl");
            if main && plan.events == engine::EventSource::EventLog {
                args.extend([
                    engine::EVENT_LOG_FLAG.to_string(),
                    event_log.display().to_string(),
                ]);
            }
            let cmd = CommandSpec::new(
                engine.binary(),
                args,
                program_dir.to_path_buf(),
                env.clone(),
            );
            run.log.line(idx, &format!("$ {}", display_cmd(&cmd))).await;
            let ok: Vec<i32> = if main {
                plan.drift_exit_code.into_iter().collect()
            } else {
                vec![]
            };
            let mode = match plan.events {
                engine::EventSource::JsonStdout if main => {
                    Stdout::TerraformJson(Arc::clone(events))
                }
                _ => Stdout::Log,
            };
            let tail = (main && plan.events == engine::EventSource::EventLog).then(|| {
                let done = CancellationToken::new();
                let task = tokio::spawn(events::tail_event_log(
                    event_log.clone(),
                    run.log.clone(),
                    idx,
                    Arc::clone(events),
                    done.clone(),
                ));
                (done, task)
            });
            // Terraform's plugin cache takes one `init` at a time (the org's runs queue here).
            let serial = match (engine, i) {
                (Engine::Terraform | Engine::Tofu, 0) => Some(
                    cache::Cache::serialise(
                        &self
                            .cfg
                            .cache
                            .plugins(&run.d.stack.org, "terraform")
                            .join(".init.lock"),
                    )
                    .await
                    .map_err(|e| Failure::Failed(format!("the run cache failed: {e}")))?,
                ),
                _ => None,
            };
            let result = self.command(run, idx, &cmd, mode, &ok).await;
            drop(serial);
            if let Some((done, task)) = tail {
                done.cancel();
                let _ = task.await;
            }
            let (code, _) = result?;
            if main && plan.drift_exit_code.is_some() {
                drift = Some(Some(code) == plan.drift_exit_code);
            }
        }
        let summary = match drift {
            Some(true) => "Drift detected: the stack's resources differ from its program.".into(),
            Some(false) => "No drift detected.".into(),
            None => format!("{} {} succeeded.", engine.binary(), run.d.operation),
        };
        Ok(Outcome { summary, drift })
    }

    async fn record_outputs(
        &self,
        run: &Run<'_>,
        idx: usize,
        engine: Engine,
        program_dir: &Path,
    ) -> StepResult<()> {
        let source = engine::outputs_source(engine, program_dir, &self.state_dir(run.d));
        let parsed = match &source {
            engine::OutputsSource::StateFile(path) => {
                // No state yet means no outputs.
                let state = files::read(path).unwrap_or_default();
                engine::parse_outputs(&source, &state, None)
            }
            engine::OutputsSource::Commands { shown, masked } => {
                let env = self.engine_env(run, engine, program_dir).await?;
                let capture = |args: &Vec<String>| {
                    CommandSpec::new(
                        engine.binary(),
                        args.clone(),
                        program_dir.to_path_buf(),
                        env.clone(),
                    )
                };
                let (_, shown) = self
                    .command(run, idx, &capture(shown), Stdout::Capture, &[])
                    .await?;
                let masked = match masked {
                    Some(args) => Some(
                        self.command(run, idx, &capture(args), Stdout::Capture, &[])
                            .await?
                            .1,
                    ),
                    None => None,
                };
                engine::parse_outputs(&source, &shown, masked.as_deref())
            }
        }
        .map_err(Failure::Failed)?;
        let outputs: Vec<Output> = parsed
            .into_iter()
            .map(|(name, value, secret)| Output {
                name,
                value,
                secret,
            })
            .collect();
        let mut names: Vec<&str> = outputs.iter().map(|o| o.name.as_str()).collect();
        names.sort();
        self.ctx
            .platform
            .record_outputs(&run.d.stack, run.d.id, run.lease, &outputs)
            .await
            .map_err(|e| Failure::Failed(format!("could not store outputs: {e}")))?;
        let listed = if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        };
        run.log
            .line(idx, &format!("Recorded {} outputs: {listed}", names.len()))
            .await;
        Ok(())
    }
}

/// The name of a deployment's engine step, which Pulumi clients look for in its log.
fn engine_step_name(op: Operation) -> String {
    format!("pulumi {op}")
}

/// The update's events, shared by the command that makes them and the step that closes them.
type Events = Arc<Mutex<EventStream>>;

fn lock(events: &Events) -> std::sync::MutexGuard<'_, EventStream> {
    events.lock().unwrap_or_else(|p| p.into_inner())
}

fn step_name(run: &Run<'_>, idx: usize) -> String {
    run.steps
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(idx)
        .cloned()
        .unwrap_or_default()
}

fn default_shell() -> String {
    if Path::new("/bin/bash").exists() {
        "/bin/bash".into()
    } else {
        "/bin/sh".into()
    }
}

fn display_cmd(spec: &CommandSpec) -> String {
    std::iter::once(spec.program.as_str())
        .chain(spec.args.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(" ")
}
