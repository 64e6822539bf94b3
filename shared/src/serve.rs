//! `tarmac serve`: the API, a worker pool and the reaper in one process, on the embedded store.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::app::{App, Config, EmbeddedConfig, RunSettings, make_data_dir, open_data_dir};
use crate::crypto::{new_token, token_hash};
use crate::domain::spec::LocalRepos;
use crate::domain::{Role, validate_name};
use crate::error::{Error, Result};
use crate::ports::TokenStore;
use crate::runner::StopSignal;
use crate::sandbox::SandboxConfig;
use crate::worker::{Pool, spawn_ticker};

/// Everything `tarmac serve` is configured with.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub workers: usize,
    /// The org that gets an admin token when the data dir is new.
    pub bootstrap_org: String,
    pub public_url: Option<String>,
    /// The OIDC issuer URL (`iss`); defaults to the public URL plus `/oidc`.
    pub oidc_issuer: Option<String>,
    pub allow_local_repos: bool,
    /// `--demo`: deployments may clone from the data dir's `demo/` directory (and nowhere
    /// else on disk), where `tarmac quickstart` puts its example repository.
    pub demo: bool,
    pub deployment_timeout: Duration,
    pub lease_ttl: Duration,
    pub heartbeat_every: Duration,
    pub shutdown_grace: Duration,
    pub stop_grace: Duration,
    pub queue_max_age: Duration,
    /// `PATH` for deployments' child processes.
    pub child_path: String,
    /// How deployments' processes are confined (`--sandbox`).
    pub sandbox: SandboxConfig,
    /// Connections served at once (`--max-connections`); more are closed as they come.
    pub max_connections: usize,
    /// How long a request's headers, and then its JSON body, may take to arrive.
    pub request_timeout: Duration,
    /// The run cache's size cap, in bytes (`--cache-max-size`).
    pub cache_max_bytes: u64,
    /// `--secrets-with-server-credentials`.
    pub secrets_with_server_credentials: bool,
}

/// The data dir's directory that `--demo` lets deployments clone from.
pub const DEMO_DIR: &str = "demo";

pub async fn serve(cfg: ServeConfig) -> Result<()> {
    validate_name("organization", &cfg.bootstrap_org)?;
    if cfg.workers == 0 {
        return Err(Error::invalid("--workers must be at least 1"));
    }
    if cfg.lease_ttl < cfg.heartbeat_every * 3 {
        return Err(Error::invalid(
            "the lease must last at least three heartbeats",
        ));
    }
    // The data dir is created and locked before anything else touches it.
    make_data_dir(&cfg.data_dir)?;
    let _lock = lock_data_dir(&cfg.data_dir)?;
    // Runs of an earlier process are over (its leases expire and the reaper fails them). If it
    // crashed, its engines may still be running: stop them before the stacks' next runs can
    // start, then drop the working directories.
    let work_dir = cfg.data_dir.join("work");
    let orphans = crate::runner::exec::kill_orphans(&work_dir);
    if orphans > 0 {
        tracing::warn!(
            orphans,
            "killed processes left running by a previous tarmac serve"
        );
    }
    if let Err(e) = std::fs::remove_dir_all(&work_dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(error = %e, "could not clear old working directories");
    }

    let listener = tokio::net::TcpListener::bind(cfg.listen).await?;
    let addr = listener.local_addr()?;
    let base_url = format!("http://{addr}");
    let public_url = cfg.public_url.clone().unwrap_or_else(|| base_url.clone());
    let local_repos = if cfg.allow_local_repos {
        LocalRepos::Any
    } else if cfg.demo {
        let demo = cfg.data_dir.join(DEMO_DIR);
        make_data_dir(&demo)?;
        LocalRepos::Under(std::fs::canonicalize(&demo)?)
    } else {
        LocalRepos::Denied
    };
    let app = App::build(Config::Embedded(EmbeddedConfig {
        data_dir: cfg.data_dir.clone(),
        public_url,
        oidc_issuer: cfg.oidc_issuer.clone(),
        local_repos,
        workers: cfg.workers,
        run: RunSettings {
            child_path: cfg.child_path.clone(),
            deployment_timeout: cfg.deployment_timeout,
            stop_grace: cfg.stop_grace,
            heartbeat_every: cfg.heartbeat_every,
            sandbox: cfg.sandbox.clone(),
            agent_lease: cfg.lease_ttl,
            cache_max_bytes: cfg.cache_max_bytes,
            secrets_with_server_credentials: cfg.secrets_with_server_credentials,
        },
    }))
    .await?;
    // Before any work is taken: `required` on a kernel without Landlock stops here, saying so.
    app.runner.sandbox().ready().await?;
    let deps = Arc::clone(&app.deps);
    let bootstrap_token = if deps.tokens.token_count().await? == 0 {
        let token = new_token();
        deps.tokens
            .create_token(
                &token_hash(&token),
                &cfg.bootstrap_org,
                Role::Admin,
                "bootstrap-admin",
            )
            .await?;
        Some(token)
    } else {
        None
    };

    let stop_claiming = CancellationToken::new();
    let abort_runs =
        StopSignal::new("Tarmac shut down before the deployment finished; it was stopped.");
    let pool = Pool {
        store: Arc::clone(&deps.runs),
        runner: Arc::clone(&app.runner),
        signal: Arc::clone(&app.work_signal),
        lease_ttl: cfg.lease_ttl,
    };
    let mut workers = pool.spawn(cfg.workers, stop_claiming.clone(), abort_runs.clone());
    let dispatcher = crate::delivery::spawn(
        Arc::clone(&deps),
        Arc::clone(&app.outbox_signal),
        crate::delivery::RETRY_BASE,
        stop_claiming.clone(),
    );
    let ticker = spawn_ticker(
        Arc::clone(&deps),
        (cfg.lease_ttl / 3).max(Duration::from_millis(200)),
        cfg.queue_max_age,
        stop_claiming.clone(),
    );

    // stdout is for people (and the tests that read it); logs go to stderr.
    println!("Tarmac listening on {base_url}");
    if let Some(token) = &bootstrap_token {
        println!(
            "First start: created org '{}' with an admin token, shown only this once:",
            cfg.bootstrap_org
        );
        println!("    {token}");
        println!(
            "Try: curl -H 'Authorization: token {token}' {base_url}/api/orgs/{}/deployments/metadata",
            cfg.bootstrap_org
        );
    }
    print_tools(&deps.tools, &cfg.child_path);
    println!("Press Ctrl+C to stop.");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    tracing::info!(%addr, workers = cfg.workers, data_dir = %cfg.data_dir.display(), "tarmac serve started");

    let app = crate::http::router(Arc::clone(&deps));
    let shutting_down = stop_claiming.clone();
    let limits = ConnectionLimits {
        max_connections: cfg.max_connections,
        request_timeout: cfg.request_timeout,
    };
    serve_http(listener, app, limits, async move {
        crate::worker::shutdown_signal().await;
        tracing::info!("shutting down: no new work is taken; running deployments may finish");
        shutting_down.cancel();
    })
    .await;

    stop_claiming.cancel();
    ticker.abort();
    let _ = dispatcher.await;
    let drained = tokio::time::timeout(cfg.shutdown_grace, async {
        while workers.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("grace period over: stopping running deployments");
        abort_runs.token.cancel();
        let bound = cfg.stop_grace + Duration::from_secs(10);
        let _ = tokio::time::timeout(bound, async {
            while workers.join_next().await.is_some() {}
        })
        .await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// What one server's connections may take.
#[derive(Debug, Clone, Copy)]
struct ConnectionLimits {
    max_connections: usize,
    request_timeout: Duration,
}

/// hyper's read buffer: a request head (request line and headers) that does not fit gets its
/// bare 431 and the end of the connection; smaller ones reach `http::limits`, which answers
/// 414 and 431 itself.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Serves `app` on `listener` until `shutdown`, then lets open connections finish their
/// requests (for at most a few seconds). Each connection gets the request timeout for its
/// headers (hyper closes it when they do not arrive in time: slow clients) and for its JSON
/// bodies (`http::limits`); connections past the cap are closed as they are accepted.
async fn serve_http(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    limits: ConnectionLimits,
    shutdown: impl std::future::Future<Output = ()>,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt;

    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.request_timeout)
        .max_buf_size(MAX_HEAD_BYTES);
    let mut refused_logged = tokio::time::Instant::now() - Duration::from_secs(60);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors, say: wait a little rather than spin.
                    tracing::warn!(error = %e, "could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            drop(stream);
            if refused_logged.elapsed() > Duration::from_secs(10) {
                refused_logged = tokio::time::Instant::now();
                tracing::warn!(
                    max_connections = limits.max_connections,
                    "connection refused: the server has as many as --max-connections allows"
                );
            }
            continue;
        };
        let timeout = crate::http::limits::RequestTimeout(limits.request_timeout);
        // The peer's address is for the audit log.
        let service = app
            .clone()
            .map_request(move |req: hyper::Request<hyper::body::Incoming>| {
                let mut req = req.map(axum::body::Body::new);
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                req.extensions_mut().insert(timeout);
                req
            });
        let conn = http.serve_connection(
            TokioIo::new(stream),
            hyper_util::service::TowerToHyperService::new(service),
        );
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(5), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after 5 s of shutdown were dropped");
    }
}

/// Says which engines (and git) deployments will find, and how to fix it when none is there.
fn print_tools(tools: &[crate::domain::Tool], child_path: &str) {
    println!("Deployments run with PATH={child_path}");
    for t in tools {
        match (&t.path, &t.version) {
            (Some(path), Some(version)) => {
                println!("  {:<9} {version} ({})", t.name, path.display())
            }
            (Some(path), None) => println!(
                "  {:<9} found ({}), version unknown",
                t.name,
                path.display()
            ),
            (None, _) => println!("  {:<9} not found", t.name),
        }
    }
    let engine = tools
        .iter()
        .any(|t| t.found() && matches!(t.name.as_str(), "terraform" | "tofu" | "pulumi"));
    if !engine {
        println!(
            "Warning: no IaC engine (terraform, tofu or pulumi) is on the deployments' PATH, so every deployment will fail. Install one, or restart with --child-path (TARMAC_CHILD_PATH) naming the directory that holds it."
        );
        tracing::warn!(child_path, "no IaC engine on the deployments' PATH");
    }
    if !tools.iter().any(|t| t.found() && t.name == "git") {
        println!("Warning: git is not on the deployments' PATH: no source can be fetched.");
    }
}

/// Holds an exclusive lock on the data dir for the life of the process: two servers on one
/// data dir would clear each other's working directories.
fn lock_data_dir(dir: &std::path::Path) -> Result<nix::fcntl::Flock<std::fs::File>> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("serve.lock"))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|_| {
        Error::invalid(format!(
            "another tarmac serve is already using the data dir {}",
            dir.display()
        ))
    })
}

/// `tarmac token create`: adds a token to a data dir and returns it.
pub async fn create_token(
    data_dir: &std::path::Path,
    org: &str,
    role: Role,
    name: &str,
) -> Result<String> {
    validate_name("organization", org)?;
    let (store, _) = open_data_dir(data_dir)?;
    let token = new_token();
    store
        .create_token(&token_hash(&token), org, role, name)
        .await?;
    Ok(token)
}
