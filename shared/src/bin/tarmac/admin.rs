//! The server side of the binary: `serve`, and the admin commands that work on a data dir
//! (`token create`) or an AWS deployment's keyring (`oidc rotate-key`) directly.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;
use tarmac::domain::Role;
use tarmac::sandbox::SandboxConfig;
use tarmac::serve::ServeConfig;

#[derive(Subcommand)]
pub(crate) enum OidcCommand {
    /// Make a new key the signing key. The old key stays in the JWKS until every token it signed
    /// has expired (12 hours and 5 minutes), so running deployments are not disturbed.
    RotateKey {
        /// Embedded mode: the data dir whose issuer gets a new generated key.
        #[arg(long, env = "TARMAC_DATA_DIR", default_value = "./.tarmac")]
        data_dir: PathBuf,
        /// AWS mode: the KMS key (RSA_2048, SIGN_VERIFY) to sign with from now on. The table is
        /// read from TARMAC_TABLE, and AWS access from the usual environment.
        #[arg(long)]
        kms_key_id: Option<String>,
    },
}

#[derive(Subcommand)]
pub(crate) enum CacheCommand {
    /// Evict entries, least recently used first, down to a size (entries a run is using are
    /// left). Safe while the server or agent runs.
    Prune {
        /// The server's data dir (its cache is `cache/` there).
        #[arg(long, env = "TARMAC_DATA_DIR", default_value = "./.tarmac")]
        data_dir: PathBuf,
        /// The cache directory itself, instead (an agent's is its work dir's `cache/`).
        #[arg(long, conflicts_with = "data_dir")]
        dir: Option<PathBuf>,
        /// Keep at most this much, e.g. 5G.
        #[arg(long, default_value = "0", value_parser = size)]
        max_size: u64,
    },
}

#[derive(clap::Args)]
pub(crate) struct ServeArgs {
    /// Where the database, secret key, engine state and working directories live.
    #[arg(long, env = "TARMAC_DATA_DIR", default_value = "./.tarmac")]
    data_dir: PathBuf,
    /// Address to listen on. Use port 0 for any free port.
    #[arg(long, env = "TARMAC_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Deployments that may run at once (at most one per stack). Defaults to the CPU count.
    #[arg(long, env = "TARMAC_WORKERS")]
    workers: Option<usize>,
    /// The org that gets an admin token on first start.
    #[arg(long, env = "TARMAC_ORG", default_value = "default")]
    org: String,
    /// Base URL for links in responses (consoleUrl). Defaults to the listen address.
    #[arg(long, env = "TARMAC_PUBLIC_URL")]
    public_url: Option<String>,
    /// The OIDC issuer URL put in deployments' tokens. Defaults to the public URL plus /oidc,
    /// where this server answers the discovery document and the JWKS.
    #[arg(long, env = "TARMAC_OIDC_ISSUER")]
    oidc_issuer: Option<String>,
    /// Allow cloning file:// URLs and local paths. Off by default: API users could otherwise read
    /// repositories on this machine's disk.
    #[arg(long, env = "TARMAC_ALLOW_LOCAL_REPOS")]
    allow_local_repos: bool,
    /// Let deployments clone from DATA_DIR/demo (and nowhere else on disk), where
    /// `tarmac quickstart` makes its example repository.
    #[arg(long, env = "TARMAC_DEMO")]
    demo: bool,
    /// Default limit on one deployment's run, in seconds (settings may set their own).
    #[arg(long, env = "TARMAC_DEPLOYMENT_TIMEOUT", default_value_t = 3600)]
    deployment_timeout: u64,
    /// How long a worker's claim on a deployment lasts without a heartbeat, in seconds.
    #[arg(long, env = "TARMAC_LEASE_SECS", default_value_t = 30.0)]
    lease_secs: f64,
    /// On SIGINT/SIGTERM, how long running deployments may finish, in seconds.
    #[arg(long, env = "TARMAC_SHUTDOWN_GRACE", default_value_t = 30)]
    shutdown_grace: u64,
    /// Between SIGTERM and SIGKILL of a stopped deployment's processes, in seconds.
    #[arg(long, env = "TARMAC_STOP_GRACE", default_value_t = 10)]
    stop_grace: u64,
    /// Queued deployments older than this many days are skipped.
    #[arg(long, env = "TARMAC_QUEUE_MAX_DAYS", default_value_t = 7)]
    queue_max_days: u64,
    /// Connections served at once; more are closed as they are accepted.
    #[arg(long, env = "TARMAC_MAX_CONNECTIONS", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..=65_536))]
    max_connections: u32,
    /// Seconds a request's headers, and then its JSON body, may take to arrive; a slower
    /// client's connection is closed (headers) or refused with 408 (body).
    #[arg(long, env = "TARMAC_REQUEST_TIMEOUT", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=600))]
    request_timeout: u64,
    #[command(flatten)]
    runs: RunArgs,
}

/// How deployments' processes run, for `serve` and `agent` alike.
#[derive(clap::Args)]
pub(crate) struct RunArgs {
    /// PATH for deployments (where git and the engines are). Defaults to this process's PATH.
    #[arg(long, env = "TARMAC_CHILD_PATH")]
    child_path: Option<String>,
    /// How deployments' processes are confined: `required` (Landlock; the process does not
    /// start on a kernel without it), `best-effort` (what the kernel supports, the rest logged
    /// once) or `off`. See the README's Security section.
    #[arg(long, env = "TARMAC_SANDBOX", default_value = "required",
          value_parser = ["required", "best-effort", "off"])]
    sandbox: String,
    /// A directory deployments may also read and execute from (repeatable; the environment
    /// variable takes a `:`-separated list). Never the data dir or the agent's work dir.
    #[arg(long = "sandbox-ro", env = "TARMAC_SANDBOX_RO", value_delimiter = ':')]
    sandbox_ro: Vec<PathBuf>,
    /// A directory deployments may also write, e.g. a shared provider cache (repeatable; the
    /// environment variable takes a `:`-separated list). Never the data dir or the agent's
    /// work dir.
    #[arg(long = "sandbox-rw", env = "TARMAC_SANDBOX_RW", value_delimiter = ':')]
    sandbox_rw: Vec<PathBuf>,
    /// The run cache's size cap (git mirrors, engine plugins, stacks' dependency caches),
    /// e.g. 10G or 500M; least recently used entries go first.
    #[arg(long, env = "TARMAC_CACHE_MAX_SIZE", default_value = "10G", value_parser = size)]
    cache_max_size: u64,
    /// Let deployments' fromSecretsManager and fromParameterStore references be read with this
    /// machine's own AWS credentials when the stack has no OIDC role. Off by default: with it,
    /// any tenant could read the secrets this machine's credentials can.
    #[arg(long, env = "TARMAC_SECRETS_WITH_SERVER_CREDENTIALS")]
    secrets_with_server_credentials: bool,
    /// Log as JSON lines.
    #[arg(long, env = "TARMAC_LOG_JSON")]
    log_json: bool,
}

/// A size such as 10G, 500M or 4096.
pub(crate) fn size(v: &str) -> Result<u64, String> {
    tarmac::cache::parse_size(v).ok_or_else(|| {
        format!("'{v}' is not a size: use a number of bytes, or one with K, M, G or T")
    })
}

impl RunArgs {
    fn child_path(&self) -> String {
        self.child_path.clone().unwrap_or_else(|| {
            std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into())
        })
    }

    fn sandbox(self) -> SandboxConfig {
        SandboxConfig {
            mode: self.sandbox.parse().expect("clap restricts the mode"),
            read_only: self.sandbox_ro,
            read_write: self.sandbox_rw,
            helper: None,
        }
    }
}

#[derive(clap::Args)]
pub(crate) struct AgentArgs {
    /// The pool's token, as its creation showed it (`tpa_...`). Prefer the environment
    /// variable: a command line is visible to other users of this machine.
    #[arg(long, env = "TARMAC_AGENT_TOKEN", hide_env_values = true)]
    token: String,
    /// Deployments this agent runs at once (at most one per stack, across all agents).
    #[arg(long, env = "TARMAC_AGENT_CONCURRENCY", default_value_t = 1)]
    concurrency: usize,
    /// How long each claim waits for work, in seconds (the server caps it at 25). In AWS mode
    /// a waiting claim holds an agent gateway invocation: a shorter wait costs more requests,
    /// a longer one more Lambda time.
    #[arg(long, env = "TARMAC_AGENT_POLL_SECS", default_value_t = 20,
          value_parser = clap::value_parser!(u64).range(1..=25))]
    poll_secs: u64,
    /// Where runs' working directories and engine state go while they run.
    #[arg(long, env = "TARMAC_AGENT_WORK_DIR", default_value = "./.tarmac-agent")]
    work_dir: PathBuf,
    /// Default limit on one deployment's run, in seconds (settings may set their own).
    #[arg(long, env = "TARMAC_DEPLOYMENT_TIMEOUT", default_value_t = 86_400)]
    deployment_timeout: u64,
    /// Between SIGTERM and SIGKILL of a stopped deployment's processes, in seconds.
    #[arg(long, env = "TARMAC_STOP_GRACE", default_value_t = 10)]
    stop_grace: u64,
    #[command(flatten)]
    runs: RunArgs,
}

pub(crate) async fn agent(a: AgentArgs, url: Option<String>) -> tarmac::Result<()> {
    tarmac::telemetry::init(a.runs.log_json);
    let url = url
        .or_else(|| std::env::var("TARMAC_URL").ok())
        .ok_or_else(|| tarmac::Error::invalid("--url is required: the Tarmac API's base URL"))?;
    tarmac::agent::run(tarmac::agent::AgentConfig {
        url,
        token: a.token,
        concurrency: a.concurrency,
        poll: Duration::from_secs(a.poll_secs),
        work_dir: a.work_dir,
        child_path: a.runs.child_path(),
        deployment_timeout: Duration::from_secs(a.deployment_timeout),
        stop_grace: Duration::from_secs(a.stop_grace),
        cache_max_bytes: a.runs.cache_max_size,
        secrets_with_server_credentials: a.runs.secrets_with_server_credentials,
        sandbox: a.runs.sandbox(),
    })
    .await
}

#[derive(Subcommand)]
pub(crate) enum TokenCommand {
    /// Create a token for an org and print it. It is shown only once; only its hash is stored.
    Create {
        #[arg(long)]
        org: String,
        #[arg(long, default_value = "write", value_parser = ["admin", "write", "read"])]
        role: String,
        /// A name for the token, shown as the requester of its deployments.
        #[arg(long, default_value = "api-token")]
        name: String,
        #[arg(long, env = "TARMAC_DATA_DIR", default_value = "./.tarmac")]
        data_dir: PathBuf,
    },
}

pub(crate) async fn serve(a: ServeArgs) -> tarmac::Result<()> {
    tarmac::telemetry::init(a.runs.log_json);
    let workers = a
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let cfg = ServeConfig {
        data_dir: a.data_dir,
        listen: a.listen,
        workers,
        bootstrap_org: a.org,
        public_url: a.public_url.map(|u| u.trim_end_matches('/').to_string()),
        oidc_issuer: a.oidc_issuer,
        allow_local_repos: a.allow_local_repos,
        demo: a.demo,
        deployment_timeout: Duration::from_secs(a.deployment_timeout),
        lease_ttl: Duration::from_secs_f64(a.lease_secs),
        heartbeat_every: Duration::from_secs_f64((a.lease_secs / 10.0).clamp(0.1, 1.0)),
        shutdown_grace: Duration::from_secs(a.shutdown_grace),
        stop_grace: Duration::from_secs(a.stop_grace),
        queue_max_age: Duration::from_secs(a.queue_max_days * 86_400),
        child_path: a.runs.child_path(),
        cache_max_bytes: a.runs.cache_max_size,
        secrets_with_server_credentials: a.runs.secrets_with_server_credentials,
        max_connections: a.max_connections as usize,
        request_timeout: Duration::from_secs(a.request_timeout),
        sandbox: a.runs.sandbox(),
    };
    tarmac::serve::serve(cfg).await
}

pub(crate) async fn token(command: TokenCommand) -> tarmac::Result<()> {
    let TokenCommand::Create {
        org,
        role,
        name,
        data_dir,
    } = command;
    tarmac::telemetry::init(false);
    let role: Role = role.parse().expect("clap restricts the role");
    tarmac::serve::create_token(&data_dir, &org, role, &name)
        .await
        .map(|token| println!("{token}"))
}

pub(crate) fn cache(command: CacheCommand) -> tarmac::Result<()> {
    let CacheCommand::Prune {
        data_dir,
        dir,
        max_size,
    } = command;
    let dir = dir.unwrap_or_else(|| data_dir.join(tarmac::app::CACHE_DIR));
    if !dir.join(".key").is_file() {
        return Err(tarmac::Error::invalid(format!(
            "{} is not a Tarmac run cache",
            dir.display()
        )));
    }
    let cache = tarmac::cache::Cache::open(&dir, max_size)?;
    let r = cache.prune(max_size)?;
    println!(
        "evicted {} of {} entries: {} bytes before, {} after{}",
        r.evicted,
        r.entries,
        r.bytes_before,
        r.bytes_after,
        match r.busy {
            0 => String::new(),
            n => format!(" ({n} in use, left)"),
        }
    );
    Ok(())
}

pub(crate) async fn oidc(command: OidcCommand) -> tarmac::Result<()> {
    let OidcCommand::RotateKey {
        data_dir,
        kms_key_id,
    } = command;
    tarmac::telemetry::init(false);
    let rotated = match kms_key_id {
        Some(key_id) => match std::env::var("TARMAC_TABLE").ok().filter(|t| !t.is_empty()) {
            Some(table) => tarmac::app::rotate_kms_key(&table, &key_id).await,
            None => Err(tarmac::Error::invalid("TARMAC_TABLE must be set")),
        },
        None => tarmac::app::rotate_local_key(&data_dir).await,
    };
    rotated.map(|kid| println!("new signing key: {kid}"))
}
