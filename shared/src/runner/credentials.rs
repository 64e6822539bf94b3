//! The "Fetch provider credentials via OIDC" step.

use super::{Executor, Failure, Run, StepResult};
use crate::error::Error;
use crate::oidc::ExchangeRequest;

impl Executor {
    /// Trades the run's lease for its OIDC token and cloud credentials, which join the
    /// environment of every later step and are masked in the log from now on.
    pub(super) async fn fetch_credentials(&self, run: &Run<'_>, idx: usize) -> StepResult<()> {
        let broker = &self.ctx.credentials;
        let request = ExchangeRequest {
            org: run.d.stack.org.clone(),
            project: run.d.stack.project.clone(),
            stack: run.d.stack.stack.clone(),
            deployment_id: run.d.id,
            lease: run.lease.owner.clone(),
        };
        let exchanged = tokio::select! {
            r = broker.exchange(&request) => r,
            _ = run.stop.cancelled() => return Err(Failure::Stopped),
        };
        let creds = exchanged.map_err(|e| {
            if e.is_internal() {
                tracing::error!(error = %e.chain(), "OIDC credential exchange failed");
                Failure::Failed("The OIDC credential exchange failed inside Tarmac; the server's log has the cause.".into())
            } else {
                Failure::Failed(format!("The OIDC credential exchange failed: {e}"))
            }
        })?;
        run.log.mask_also(creds.secrets());
        // For the secret references read next.
        *run.cloud.lock().unwrap_or_else(|p| p.into_inner()) = Some(creds.clone());
        for note in &creds.notes {
            run.log.line(idx, note).await;
        }
        let dir = run.workdir.join("oidc");
        let (env, files) = creds.environment(&dir);
        let written = async {
            tokio::fs::create_dir_all(&dir).await?;
            for (path, contents) in files {
                crate::crypto::write_private(&path, contents.as_bytes())?;
            }
            Ok::<_, Error>(())
        };
        written
            .await
            .map_err(|e| Failure::Failed(format!("cannot write the OIDC credential files: {e}")))?;
        let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        run.log
            .line(idx, &format!("Set {}", names.join(", ")))
            .await;
        run.set_env(env);
        Ok(())
    }
}
