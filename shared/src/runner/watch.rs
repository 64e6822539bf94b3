//! The watchdog beside a run: it renews the lease, and stops the run on cancel, timeout,
//! shutdown or a lost lease.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::Executor;
use crate::domain::Lease;
use crate::error::Error;

/// Why a run was stopped from outside its steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StopReason {
    Cancelled,
    TimedOut(Duration),
    Shutdown,
    LeaseLost,
}

impl Executor {
    /// Renews the lease, and stops the run on cancel, timeout, shutdown or a lost lease.
    pub(super) fn watch(
        &self,
        id: Uuid,
        lease: Lease,
        timeout: Duration,
        stop: CancellationToken,
        reason: Arc<Mutex<Option<StopReason>>>,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let store = Arc::clone(&self.ctx.runs);
        let every = self.cfg.heartbeat_every;
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + timeout;
            let why = loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => match store.heartbeat(id, &lease).await {
                        Ok(hb) if hb.cancel_requested => break StopReason::Cancelled,
                        Ok(_) => {}
                        // Lost, or (an agent's) no longer allowed to hold it: its pool was
                        // deleted, or its token revoked. Either way the run is not ours.
                        Err(
                            Error::Conflict(_)
                            | Error::Unauthorized(_)
                            | Error::Forbidden(_)
                            | Error::NotFound(_),
                        ) => break StopReason::LeaseLost,
                        // A transient store error: the lease has slack for a few misses.
                        Err(e) => tracing::warn!(error = %e.chain(), "heartbeat failed"),
                    },
                    _ = tokio::time::sleep_until(deadline) => break StopReason::TimedOut(timeout),
                    _ = shutdown.cancelled() => break StopReason::Shutdown,
                }
            };
            *reason.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
            stop.cancel();
        })
    }
}
