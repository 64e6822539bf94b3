//! The composition root: the one place where adapters are chosen and wired into `Deps` and a
//! `Runner`. `tarmac serve`, the Lambda functions, the CLI's admin commands, the tests and the
//! benchmarks all build their application here.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;

use crate::aws::StsExchange;
use crate::crypto::Cipher;
use crate::deps::Deps;
use crate::error::{Error, Result};
use crate::oidc::{
    CredentialBroker, ExchangeRequest, Exchanger, ISSUER_PATH, Issuer, LocalSigner, RunCredentials,
};
use crate::runner::cache::Cache;
use crate::runner::{Runner, RunnerConfig};
use crate::sandbox::{Sandbox, SandboxConfig};
use crate::sqlite::SqliteStore;

#[cfg(feature = "aws")]
mod aws;
mod local_state;

#[cfg(feature = "aws")]
pub use aws::{aws_oidc_exchanger, rotate_kms_key};
pub use local_state::DirStateStore;

/// `tarmac oidc rotate-key --kms-key-id` in a build without the AWS mode.
#[cfg(not(feature = "aws"))]
pub async fn rotate_kms_key(_table: &str, _key_id: &str) -> Result<String> {
    Err(Error::invalid(
        "this tarmac was built without AWS support; build it with `--features aws`",
    ))
}

/// How runs are carried out, whatever the backend.
#[derive(Debug, Clone)]
pub struct RunSettings {
    /// `PATH` for deployments' child processes.
    pub child_path: String,
    pub deployment_timeout: Duration,
    pub stop_grace: Duration,
    pub heartbeat_every: Duration,
    /// How deployments' processes are confined.
    pub sandbox: SandboxConfig,
    /// The lease an agent holds on the deployment it runs.
    pub agent_lease: Duration,
    /// The run cache's size cap (see `runner::cache`), in bytes.
    pub cache_max_bytes: u64,
    /// Whether AWS secret references may be read with the server's own credentials when the
    /// stack has no OIDC role (see `runner::secrets`).
    pub secrets_with_server_credentials: bool,
}

/// The data dir's run cache (git mirrors, plugins, dependency caches).
pub const CACHE_DIR: &str = "cache";

/// Agents' lease on a deployment, where it is not configured: an agent heartbeats every third
/// of it, so a dead agent's run fails within a minute.
pub const AGENT_LEASE: Duration = Duration::from_secs(60);

/// `tarmac serve`'s backend: every port on one SQLite file in a data dir.
#[derive(Debug, Clone)]
pub struct EmbeddedConfig {
    pub data_dir: PathBuf,
    pub public_url: String,
    /// The OIDC issuer URL (`iss`); defaults to the public URL plus `/oidc`.
    pub oidc_issuer: Option<String>,
    /// Which repositories on this machine deployments may clone.
    pub local_repos: crate::domain::spec::LocalRepos,
    /// Deployments that may run at once.
    pub workers: usize,
    pub run: RunSettings,
}

impl EmbeddedConfig {
    /// A data dir with the defaults of `tarmac serve`.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            data_dir: data_dir.to_path_buf(),
            public_url: "http://127.0.0.1:8080".into(),
            oidc_issuer: None,
            local_repos: crate::domain::spec::LocalRepos::Denied,
            workers: 1,
            run: RunSettings {
                child_path: std::env::var("PATH")
                    .unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
                deployment_timeout: Duration::from_secs(3600),
                stop_grace: Duration::from_secs(10),
                heartbeat_every: Duration::from_secs(1),
                sandbox: SandboxConfig::default(),
                agent_lease: AGENT_LEASE,
                cache_max_bytes: crate::runner::cache::DEFAULT_MAX_BYTES,
                secrets_with_server_credentials: false,
            },
        }
    }
}

/// Which backend to build.
#[allow(
    clippy::large_enum_variant,
    reason = "built once per process, then dropped"
)]
pub enum Config {
    Embedded(EmbeddedConfig),
    /// The Lambda functions: DynamoDB, SQS, S3 and KMS through the SDK configuration given.
    #[cfg(feature = "aws")]
    Aws(Box<(crate::aws::AwsConfig, aws_config::SdkConfig)>),
}

/// An application: its ports, the runner over them, and what its entry points need beside.
pub struct App {
    pub deps: Arc<Deps>,
    pub runner: Arc<Runner>,
    /// Embedded: notified when a deployment is queued or a stack freed (the workers wait on
    /// it); AWS: never (SQS delivers work).
    pub work_signal: Arc<Notify>,
    /// Embedded: notified when notifications are due (the dispatcher waits on it).
    pub outbox_signal: Arc<Notify>,
    /// AWS: the queue, whose messages the worker keeps invisible while it runs them.
    #[cfg(feature = "aws")]
    pub sqs: Option<Arc<crate::aws::SqsQueue>>,
}

/// The files of a data dir.
pub const DB_FILE: &str = "tarmac.db";
pub const KEY_FILE: &str = "secret.key";

/// Creates a data dir (0700) if it does not exist.
pub fn make_data_dir(data_dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)?;
    Ok(())
}

/// A data dir's store and cipher, created on first use. For `tarmac serve` and the admin
/// commands that work on a data dir directly.
pub fn open_data_dir(data_dir: &Path) -> Result<(SqliteStore, Cipher)> {
    make_data_dir(data_dir)?;
    let store = SqliteStore::open(&data_dir.join(DB_FILE))?;
    let cipher = Cipher::load_or_create(&data_dir.join(KEY_FILE))?;
    Ok((store, cipher))
}

/// The issuer URL: given, or the public URL plus `/oidc`.
fn issuer_url(given: Option<&str>, public_url: &str) -> String {
    given
        .map(|u| u.trim_end_matches('/').to_string())
        .unwrap_or_else(|| format!("{}{ISSUER_PATH}", public_url.trim_end_matches('/')))
}

impl App {
    pub async fn build(config: Config) -> Result<Self> {
        match config {
            Config::Embedded(cfg) => Self::embedded(cfg).await,
            #[cfg(feature = "aws")]
            Config::Aws(aws) => Self::aws(&aws.0, &aws.1).await,
        }
    }

    async fn embedded(cfg: EmbeddedConfig) -> Result<Self> {
        let (store, cipher) = open_data_dir(&cfg.data_dir)?;
        // Absolute from here on: engines run in their own working directories, and a relative
        // state path (`./.tarmac`, the default) would put a stack's state inside a run's
        // directory, which is removed when the run ends.
        let data_dir = std::fs::canonicalize(&cfg.data_dir)?;
        let (work_signal, outbox_signal) = (store.work_signal(), store.outbox_signal());
        let run_changes = store.run_signal();
        let s = Arc::new(store);
        let signer = LocalSigner::new(cipher.clone());
        let issuer = Arc::new(Issuer::new(
            &issuer_url(cfg.oidc_issuer.as_deref(), &cfg.public_url),
            s.clone(),
            Arc::new(signer.clone()),
        ));
        issuer.ensure_key(async || signer.generate().await).await?;
        let credentials = Arc::new(Exchanger::new(
            s.clone(),
            Arc::clone(&issuer),
            Arc::new(StsExchange::new(None)),
        ));
        let state_dir = data_dir.join("state");
        let tools = crate::runner::engine::discover(&cfg.run.child_path).await;
        let found: Vec<PathBuf> = tools.iter().filter_map(|t| t.path.clone()).collect();
        // Runs see nothing of the data dir but their own directory and their stack's state.
        let sandbox = Sandbox::new(
            &cfg.run.sandbox,
            &cfg.run.child_path,
            &found,
            std::slice::from_ref(&data_dir),
        )?;
        let cache = Arc::new(Cache::open(
            &data_dir.join(CACHE_DIR),
            cfg.run.cache_max_bytes,
        )?);
        let deps = Arc::new(Deps {
            stacks: s.clone(),
            orgs: s.clone(),
            tokens: s.clone(),
            pools: s.clone(),
            idempotency: s.clone(),
            audit: s.clone(),
            bulk: s.clone(),
            deployments: s.clone(),
            logs: s.clone(),
            runs: s.clone(),
            schedules: s.clone(),
            drift: s.clone(),
            keys: s.clone(),
            hooks: s.clone(),
            outbox: s,
            queue: None,
            cipher,
            public_url: cfg.public_url,
            local_repos: cfg.local_repos,
            agent_state: Arc::new(DirStateStore::new(state_dir.clone())),
            state_dir,
            state_store: None,
            bootstrap_sha256: None,
            concurrency: cfg.workers,
            issuer: Some(issuer),
            credentials,
            run_changes: Some(run_changes),
            work_signal: Some(Arc::clone(&work_signal)),
            agent_lease: cfg.run.agent_lease,
            tools,
            run_cache: Some(Arc::clone(&cache) as Arc<dyn crate::ports::StackCache>),
        });
        let runner = Arc::new(Runner::new(
            Arc::clone(&deps),
            RunnerConfig {
                work_dir: data_dir.join("work"),
                path_env: cfg.run.child_path,
                lang: "C.UTF-8".into(),
                default_timeout: cfg.run.deployment_timeout,
                stop_grace: cfg.run.stop_grace,
                heartbeat_every: cfg.run.heartbeat_every,
                sandbox: Arc::new(sandbox),
                cache,
                secrets_with_server_credentials: cfg.run.secrets_with_server_credentials,
            },
        ));
        Ok(Self {
            deps,
            runner,
            work_signal,
            outbox_signal,
            #[cfg(feature = "aws")]
            sqs: None,
        })
    }
}

/// `tarmac oidc rotate-key`: a new generated signing key for a data dir's issuer. Safe while
/// `tarmac serve` runs: the server reads the keyring each time it signs or serves the JWKS.
pub async fn rotate_local_key(data_dir: &Path) -> Result<String> {
    let (store, cipher) = open_data_dir(data_dir)?;
    let signer = LocalSigner::new(cipher);
    let key = signer.generate().await?;
    Issuer::new("", Arc::new(store), Arc::new(signer))
        .rotate(key)
        .await
}

/// The broker of a server that was not given a way to issue credentials.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoCredentials;

#[async_trait]
impl CredentialBroker for NoCredentials {
    async fn exchange(&self, _request: &ExchangeRequest) -> Result<RunCredentials> {
        Err(Error::invalid(
            "this server is not configured to issue OIDC credentials",
        ))
    }
}
