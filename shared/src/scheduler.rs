//! The periodic tick shared by every backend: the embedded ticker in `tarmac serve` and the
//! `scheduler` Lambda (an EventBridge `rate(1 minute)` rule) both call `tick`.
//!
//! A tick fires the schedules that are due, reaps (runs whose worker died fail; deployments
//! queued too long are skipped) and, where a queue is separate from the store, reconciles: it
//! re-sends queued deployments whose message may have been lost.

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;

use crate::deps::Deps;
use crate::error::Result;
use crate::ports::HistoryEvent;
use crate::schedule::{Schedule, firing};
use crate::service::create_deployment;

/// Queued this long with their stack idle, a deployment's message is presumed lost.
pub const RECONCILE_AFTER: Duration = Duration::from_secs(120);

#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TickReport {
    /// Schedules that fired (each created a deployment, or recorded why it could not).
    pub fired: usize,
    /// Missed slots recorded as skipped.
    pub skipped: usize,
    pub reaped: usize,
    pub resent: usize,
}

/// Due schedules are read in batches of this many.
const BATCH: usize = 500;

/// One tick at `now`.
pub async fn tick(
    deps: &Arc<Deps>,
    now: OffsetDateTime,
    queue_max_age: Duration,
) -> Result<TickReport> {
    let (fired, skipped) = fire_due(deps, now).await?;
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
    if fired + skipped + reaped + resent > 0 {
        tracing::info!(fired, skipped, reaped, resent, "tick");
    }
    Ok(TickReport {
        fired,
        skipped,
        reaped,
        resent,
    })
}

/// Fires every schedule due at `now`. Each slot fires once however many ticks race: only the
/// tick whose conditional advance wins creates the deployment. The cost follows the number of
/// due schedules, not the number stored.
pub async fn fire_due(deps: &Arc<Deps>, now: OffsetDateTime) -> Result<(usize, usize)> {
    let (mut fired, mut skipped) = (0, 0);
    let join = |done: std::result::Result<Result<(usize, usize)>, tokio::task::JoinError>| {
        done.map_err(|e| crate::Error::internal(format!("firing task failed: {e}")))?
    };
    loop {
        let due = deps.schedules.due_schedules(now, BATCH).await?;
        let batch_len = due.len();
        // Firings of different schedules are independent; running a few at once overlaps
        // their storage round trips. Each slot is still claimed by a conditional write.
        let mut tasks = tokio::task::JoinSet::new();
        for s in due {
            let deps = Arc::clone(deps);
            tasks.spawn(async move { fire_one(&deps, s, now).await });
            if tasks.len() >= CONCURRENCY
                && let Some(done) = tasks.join_next().await
            {
                let (f, k) = join(done)?;
                fired += f;
                skipped += k;
            }
        }
        while let Some(done) = tasks.join_next().await {
            let (f, k) = join(done)?;
            fired += f;
            skipped += k;
        }
        if batch_len < BATCH {
            return Ok((fired, skipped));
        }
    }
}

/// Schedules fired at once within a tick.
const CONCURRENCY: usize = 16;

/// Fires one due schedule if this tick wins its slot: `(fired, skipped slots)`.
async fn fire_one(deps: &Deps, s: Schedule, now: OffsetDateTime) -> Result<(usize, usize)> {
    let Some(slot_due) = s.next_execution else {
        return Ok((0, 0));
    };
    let f = firing(&s.when, slot_due, now)?;
    if !deps
        .schedules
        .advance_schedule(&s.stack, s.id, slot_due, f.next, now)
        .await?
    {
        return Ok((0, 0)); // another tick fired this slot
    }
    for missed in &f.skipped {
        let note = "skipped: the slot passed while no scheduler was running; only the latest missed slot fires";
        history(deps, &s, *missed, None, note).await?;
    }
    let body = s.definition.get("request").cloned().unwrap_or_default();
    match create_deployment(deps, &s.stack, &body, "schedule", "scheduler").await {
        Ok(d) => history(deps, &s, f.slot, Some((d.id, d.version)), "fired").await?,
        // Refused (settings gone, say): the slot is used up, and the history says why.
        Err(e) if e.status().is_client_error() => {
            history(deps, &s, f.slot, None, &format!("failed: {e}")).await?;
        }
        Err(e) => return Err(e),
    }
    Ok((1, f.skipped.len()))
}

async fn history(
    deps: &Deps,
    s: &Schedule,
    at: OffsetDateTime,
    deployment: Option<(uuid::Uuid, i64)>,
    note: &str,
) -> Result<()> {
    let event = HistoryEvent {
        id: uuid::Uuid::new_v4(),
        schedule_id: s.id,
        executed: at,
        deployment,
        note: note.to_string(),
    };
    deps.schedules.add_history(&s.stack, &event).await
}
