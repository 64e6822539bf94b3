//! The periodic tick shared by every backend: the embedded ticker in `tarmac serve` and the
//! `scheduler` Lambda (an EventBridge `rate(1 minute)` rule) both call `tick`.
//!
//! Today a tick reaps (runs whose worker died fail; deployments queued too long are skipped)
//! and, where a queue is separate from the store, reconciles: it re-sends queued deployments
//! whose message may have been lost. Schedules slot in here.

use std::time::Duration;

use time::OffsetDateTime;

use crate::deps::Deps;
use crate::error::Result;

/// Queued this long with their stack idle, a deployment's message is presumed lost.
pub const RECONCILE_AFTER: Duration = Duration::from_secs(120);

#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TickReport {
    pub reaped: usize,
    pub resent: usize,
}

/// One tick at `now`.
pub async fn tick(deps: &Deps, now: OffsetDateTime, queue_max_age: Duration) -> Result<TickReport> {
    let reaped = deps.runs.reap(now, now - queue_max_age).await?.len();
    let mut resent = 0;
    // One re-send per deployment per minute: overlapping ticks in one minute share a dedup id.
    let attempt = (now.unix_timestamp() / 60) as u64;
    if let Some(queue) = &deps.queue {
        for message in deps.runs.queued_before(now - RECONCILE_AFTER).await? {
            // A paused stack keeps its queue; resuming it makes its deployments due again.
            let Ok(stack) = message.stack_ref() else {
                continue;
            };
            if deps.stacks.stack_paused(&stack).await? != Some(false) {
                continue;
            }
            // Claims are conditional, so a message that was not lost after all does no harm.
            queue.send(&message, attempt).await?;
            resent += 1;
        }
    }
    if reaped + resent > 0 {
        tracing::info!(reaped, resent, "tick");
    }
    Ok(TickReport { reaped, resent })
}
