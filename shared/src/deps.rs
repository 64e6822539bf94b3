//! The one place where the ports are wired to adapters.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::Notify;

use crate::crypto::Cipher;
use crate::error::Result;
use crate::oidc::{CredentialBroker, Exchanger, ISSUER_PATH, Issuer};
use crate::ports::*;
use crate::sqlite::SqliteStore;

/// Everything a handler or worker needs, behind ports.
pub struct Deps {
    pub stacks: Arc<dyn StackStore>,
    pub orgs: Arc<dyn OrgStore>,
    pub tokens: Arc<dyn TokenStore>,
    pub deployments: Arc<dyn DeploymentStore>,
    pub logs: Arc<dyn LogStore>,
    pub runs: Arc<dyn RunStore>,
    pub schedules: Arc<dyn ScheduleStore>,
    pub drift: Arc<dyn DriftStore>,
    /// Where new deployments are sent, for backends whose store is not itself the queue (AWS).
    /// `None` in embedded mode: there the insert is the enqueue.
    pub queue: Option<Arc<dyn Queue>>,
    pub cipher: Cipher,
    /// Base of `consoleUrl` links.
    pub public_url: String,
    /// Whether `file://` and local-path repositories may be cloned.
    pub allow_local_repos: bool,
    /// Where per-stack engine state lives (embedded mode), removed with the stack.
    pub state_dir: Option<PathBuf>,
    /// Where engine state is kept between runs when the worker's disk does not last (AWS).
    pub state_store: Option<Arc<dyn StateStore>>,
    /// SHA-256 (hex) of the one-time secret `POST /api/bootstrap` exchanges for an org's first
    /// admin token; `None` disables the route.
    pub bootstrap_sha256: Option<String>,
    /// Deployments that can run at once, reported as the org's `concurrency`.
    pub concurrency: usize,
    /// The OIDC issuer whose discovery document and JWKS the API serves.
    pub issuer: Option<Arc<Issuer>>,
    /// Where runs get their OIDC token and cloud credentials.
    pub credentials: Option<Arc<dyn CredentialBroker>>,
    /// Webhooks and the outbox that delivers notifications; `None` where not available.
    pub hooks: Option<Arc<dyn HookStore>>,
    pub outbox: Option<Arc<dyn Outbox>>,
}

impl Deps {
    /// Removes a deleted stack's engine state, wherever it is kept: the state store's copy (its
    /// history stays in the versioned bucket) and the embedded state directory. Best effort:
    /// the stack is already gone, so failures are logged.
    pub async fn forget_state(&self, stack: &crate::domain::StackRef) {
        if let Some(store) = &self.state_store
            && let Err(e) = store.delete(stack).await
        {
            tracing::error!(error = %e.chain(), %stack, "could not remove a deleted stack's saved state");
        }
        if let Some(root) = &self.state_dir {
            let dir = stack.dir_under(root);
            if let Err(e) = tokio::fs::remove_dir_all(&dir).await
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(error = %e, dir = %dir.display(), "could not remove a deleted stack's state");
            }
        }
    }

    /// A deployment's `consoleUrl`, also the link in notifications.
    pub fn console_url(&self, stack: &crate::domain::StackRef, version: i64) -> String {
        format!("{}/{stack}/deployments/{version}", self.public_url)
    }
}

/// The embedded backend's files in a data dir.
pub struct Embedded {
    pub store: SqliteStore,
    pub cipher: Cipher,
    pub work_signal: Arc<Notify>,
}

pub const DB_FILE: &str = "tarmac.db";
pub const KEY_FILE: &str = "secret.key";

impl Embedded {
    /// Opens the data dir, creating it (0700), its database and its key on first use.
    pub fn open(data_dir: &Path) -> Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(data_dir)?;
        let store = SqliteStore::open(&data_dir.join(DB_FILE))?;
        let cipher = Cipher::load_or_create(&data_dir.join(KEY_FILE))?;
        let work_signal = store.work_signal();
        Ok(Self {
            store,
            cipher,
            work_signal,
        })
    }

    /// The ports over this data dir. The OIDC issuer is `issuer_url`, by default the public URL
    /// plus `/oidc`; call `Issuer::ensure_local_key` before it signs.
    pub fn deps(
        &self,
        public_url: String,
        issuer_url: Option<String>,
        allow_local_repos: bool,
        state_dir: PathBuf,
        concurrency: usize,
    ) -> Deps {
        let s = Arc::new(self.store.clone());
        let issuer_url = issuer_url
            .unwrap_or_else(|| format!("{}{ISSUER_PATH}", public_url.trim_end_matches('/')));
        let issuer = Arc::new(Issuer::new(
            &issuer_url,
            s.clone(),
            Some(self.cipher.clone()),
            None,
        ));
        let credentials = Arc::new(Exchanger::new(s.clone(), Arc::clone(&issuer), None));
        Deps {
            stacks: s.clone(),
            orgs: s.clone(),
            tokens: s.clone(),
            deployments: s.clone(),
            logs: s.clone(),
            runs: s.clone(),
            schedules: s.clone(),
            drift: s.clone(),
            queue: None,
            cipher: self.cipher.clone(),
            public_url,
            allow_local_repos,
            state_dir: Some(state_dir),
            state_store: None,
            bootstrap_sha256: None,
            concurrency,
            issuer: Some(issuer),
            credentials: Some(credentials),
            hooks: Some(s.clone()),
            outbox: Some(s),
        }
    }
}
