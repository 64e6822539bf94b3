//! The embedded worker pool and the ticker beside it.
//!
//! A worker claims from the store's queue, runs, and claims again; when nothing is claimable it
//! sleeps until the store signals new work (or a second passes, for changes made by another
//! process). Stopping is two-staged: `stop_claiming` lets runs finish; `abort_runs` stops them.

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::deps::Deps;
use crate::domain::Lease;
use crate::domain::pools::ClaimQueue;
use crate::ports::RunStore;
use crate::runner::{Runner, StopSignal};

pub(crate) struct Pool {
    pub store: Arc<dyn RunStore>,
    pub runner: Arc<Runner>,
    pub signal: Arc<Notify>,
    pub lease_ttl: Duration,
}

impl Pool {
    pub(crate) fn spawn(
        self,
        workers: usize,
        stop_claiming: CancellationToken,
        abort_runs: StopSignal,
    ) -> JoinSet<()> {
        let pool = Arc::new(self);
        let mut set = JoinSet::new();
        let host = std::process::id();
        for n in 0..workers {
            let lease = Lease {
                owner: format!("embedded-{host}-{n}-{}", uuid::Uuid::new_v4()),
                ttl: pool.lease_ttl,
            };
            let (pool, stop, abort) =
                (Arc::clone(&pool), stop_claiming.clone(), abort_runs.clone());
            set.spawn(async move { pool.work(lease, stop, abort).await });
        }
        set
    }

    async fn work(&self, lease: Lease, stop_claiming: CancellationToken, abort_runs: StopSignal) {
        loop {
            // Registered before looking, so a signal between the look and the wait is kept.
            let notified = self.signal.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if stop_claiming.is_cancelled() {
                return;
            }
            match self.store.claim_next(&lease, ClaimQueue::BuiltIn).await {
                Ok(Some(claimed)) => {
                    self.runner.run(claimed, &lease, &abort_runs).await;
                    continue;
                }
                Ok(None) => {}
                Err(e) if e.is_retryable() => {
                    tracing::warn!(error = %e.chain(), "claiming work failed; retrying");
                }
                Err(e) => tracing::error!(error = %e.chain(), "claiming work failed"),
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop_claiming.cancelled() => return,
            }
        }
    }
}

/// How often the embedded ticker looks for git syncs due between its ticks: a sync's check
/// starts within a second of its slot, so a push is deployed within one interval.
const SYNC_EVERY: Duration = Duration::from_secs(1);

/// Runs the shared `scheduler::tick` every `every` until `stop`, and the git syncs that fall
/// due between ticks every `SYNC_EVERY` (one indexed read when none is due).
pub(crate) fn spawn_ticker(
    deps: Arc<Deps>,
    every: Duration,
    queue_max_age: Duration,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sync = tokio::time::interval(SYNC_EVERY.min(every));
        sync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if let Err(e) =
                        crate::scheduler::tick(&deps, OffsetDateTime::now_utc(), queue_max_age).await
                    {
                        tracing::error!(error = %e.chain(), "tick failed");
                    }
                }
                _ = sync.tick() => {
                    if let Err(e) = crate::gitsync::check_due(&deps, OffsetDateTime::now_utc()).await {
                        tracing::error!(error = %e.chain(), "git sync failed");
                    }
                }
                _ = stop.cancelled() => return,
            }
        }
    })
}

/// Resolves on SIGINT or SIGTERM: how `serve` and `agent` are asked to stop.
pub(crate) async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}
