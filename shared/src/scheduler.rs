//! The periodic tick shared by every backend: the embedded ticker in `tarmac serve` and the
//! `scheduler` Lambda (an EventBridge `rate(1 minute)` rule) both call `tick`.
//!
//! A tick fires the schedules that are due, reaps (runs whose worker died fail; deployments
//! queued too long are skipped) and, where a queue is separate from the store, reconciles: it
//! re-sends queued deployments whose message may have been lost.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;

use crate::deps::Deps;
use crate::domain::hooks::Event;
use crate::domain::schedule::firing;
use crate::domain::{JobStatus, StackRef};
use crate::error::Result;
use crate::ports::{FireResult, PlannedFiring};
use crate::service::{CreateRequest, prepare, queued};

/// Queued this long, a deployment's message may have been lost; the reconciler sends it again
/// (a duplicate is harmless: the claim is conditional).
pub const RECONCILE_AFTER: Duration = Duration::from_secs(120);

#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TickReport {
    /// Schedules that fired (each created a deployment, or recorded why it could not).
    pub fired: usize,
    /// Missed slots recorded as skipped.
    pub skipped: usize,
    pub reaped: usize,
    pub resent: usize,
    /// Deployments git sync created.
    pub synced: usize,
}

/// Due schedules are read in batches of this many.
const BATCH: usize = 500;

/// How long sent notifications and their attempts stay in the delivery log.
pub const DELIVERY_LOG_RETENTION: Duration = Duration::from_secs(30 * 86_400);

/// One tick at `now`.
pub async fn tick(
    deps: &Arc<Deps>,
    now: OffsetDateTime,
    queue_max_age: Duration,
) -> Result<TickReport> {
    // Each part runs even if another failed; the first failure is reported at the end.
    let mut first_error = None;
    let mut keep = |e: crate::Error, what: &str| {
        tracing::error!(error = %e.chain(), "tick: {what} failed");
        first_error.get_or_insert(e);
    };
    let (fired, skipped) = fire_due(deps, now).await.unwrap_or_else(|e| {
        keep(e, "firing schedules");
        (0, 0)
    });
    let reaped = match deps.runs.reap(now, now - queue_max_age).await {
        Ok(ended) => {
            // Their workers are gone: announce the failures they could not.
            for r in ended.iter().filter(|r| r.status == JobStatus::Failed) {
                if let Ok(Some(d)) = deps.deployments.get_deployment(&r.stack, r.id).await {
                    crate::webhooks::events::deployment(deps, &d, Event::DeploymentFailed).await;
                }
            }
            // A skipped one (an approval that expired, say) may have held its stack's queue,
            // whose messages were dropped meanwhile: where the queue is separate, they go now.
            let stacks: std::collections::HashSet<&StackRef> = ended
                .iter()
                .filter(|r| r.status == JobStatus::Skipped)
                .map(|r| &r.stack)
                .collect();
            for stack in stacks {
                crate::service::resend_stack(deps, stack).await;
            }
            ended.len()
        }
        Err(e) => {
            keep(e, "reaping");
            0
        }
    };
    let synced = match crate::gitsync::check_due(deps, now).await {
        Ok(r) => r.deployed,
        Err(e) => {
            keep(e, "git sync");
            0
        }
    };
    let resent = reconcile(deps, now).await.unwrap_or_else(|e| {
        keep(e, "reconciling");
        0
    });
    if let Err(e) = deps.outbox.prune_done(now - DELIVERY_LOG_RETENTION).await {
        keep(e, "pruning the delivery log");
    }
    if fired + skipped + reaped + resent + synced > 0 {
        tracing::info!(fired, skipped, reaped, resent, synced, "tick");
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(TickReport {
            fired,
            skipped,
            reaped,
            resent,
            synced,
        }),
    }
}

/// Where a queue is separate from the store, re-sends queued deployments old enough that their
/// message may have been lost. Returns how many it sent.
async fn reconcile(deps: &Deps, now: OffsetDateTime) -> Result<usize> {
    let Some(queue) = &deps.queue else {
        return Ok(0);
    };
    // One re-send per deployment per minute: overlapping ticks in one minute share a dedup id.
    let attempt = (now.unix_timestamp() / 60) as u64;
    let mut resent = 0;
    for message in deps.runs.queued_before(now - RECONCILE_AFTER).await? {
        // A paused stack keeps its queue; resuming it makes its deployments due again.
        let Ok(stack) = message.stack_ref() else {
            continue;
        };
        if deps.stacks.stack_paused(&stack).await? != Some(false)
            || deps.orgs.org_paused(&stack.org).await?
        {
            continue;
        }
        // Claims are conditional, so a message that was not lost after all does no harm.
        match queue.send(&message, attempt).await {
            Ok(()) => resent += 1,
            Err(e) => {
                tracing::warn!(deployment_id = %message.deployment_id, error = %e.chain(), "reconciler could not re-send")
            }
        }
    }
    Ok(resent)
}

/// Fires every schedule due at `now`. Each slot fires once however many ticks race: the
/// store's conditional advance picks one winner. The cost follows the number of due
/// schedules, not the number stored; each batch is planned in memory (settings read once per
/// stack) and written in chunks, which the embedded store commits one transaction each.
pub async fn fire_due(deps: &Arc<Deps>, now: OffsetDateTime) -> Result<(usize, usize)> {
    let (mut fired, mut skipped) = (0, 0);
    loop {
        let due = deps.schedules.due_schedules(now, BATCH).await?;
        let batch_len = due.len();
        let mut settings: HashMap<StackRef, Option<serde_json::Value>> = HashMap::new();
        let mut planned = Vec::with_capacity(due.len());
        for s in due {
            let Some(expected) = s.next_execution else {
                continue;
            };
            if !settings.contains_key(&s.stack) {
                let stored = deps
                    .stacks
                    .get_settings(&s.stack)
                    .await?
                    .map(|v| v.settings);
                settings.insert(s.stack.clone(), stored);
            }
            let f = firing(&s.when, expected, now)?;
            let body = s.definition.get("request").cloned().unwrap_or_default();
            // Requested by the token that set the schedule (older schedules: "scheduler").
            let by = s.definition[crate::domain::schedule::REQUESTED_BY]
                .as_str()
                .unwrap_or("scheduler");
            let request = CreateRequest::new(&s.stack, &body, "schedule", by);
            // A refused request (settings gone, or a pool deleted since they named it) uses up
            // its slot, and the history says why.
            let deployment = prepare(deps, &request, settings[&s.stack].as_ref())
                .await
                .map_err(|e| e.to_string());
            skipped += f.skipped.len();
            planned.push(PlannedFiring {
                stack: s.stack,
                schedule_id: s.id,
                expected,
                next: f.next,
                fired_at: now,
                slot: f.slot,
                skipped: f.skipped,
                deployment,
            });
        }
        let mut tasks = tokio::task::JoinSet::new();
        let mut chunks = planned.into_iter().peekable();
        while chunks.peek().is_some() {
            let chunk: Vec<PlannedFiring> = chunks.by_ref().take(CHUNK).collect();
            let deps = Arc::clone(deps);
            tasks.spawn(async move {
                let stacks: Vec<(StackRef, usize)> = chunk
                    .iter()
                    .map(|f| (f.stack.clone(), f.skipped.len()))
                    .collect();
                let results = deps.schedules.fire(chunk).await?;
                let mut lost_skips = 0;
                let mut fired = 0;
                for ((stack, skips), r) in stacks.iter().zip(&results) {
                    match r {
                        FireResult::Lost => lost_skips += skips,
                        FireResult::Fired(created) => {
                            fired += 1;
                            if let Some((id, _)) = created {
                                // Stored with the firing; sent and announced as every
                                // created deployment is.
                                match deps.deployments.get_deployment(stack, *id).await? {
                                    Some(d) => queued(&deps, &d).await,
                                    None => tracing::warn!(deployment_id = %id, "a fired deployment is gone already"),
                                }
                            }
                        }
                    }
                }
                Ok::<_, crate::Error>((fired, lost_skips))
            });
        }
        while let Some(done) = tasks.join_next().await {
            let (f, lost_skips) =
                done.map_err(|e| crate::Error::internal(format!("firing task failed: {e}")))??;
            fired += f;
            skipped -= lost_skips;
        }
        if batch_len < BATCH {
            return Ok((fired, skipped));
        }
    }
}

/// Firings written together (one transaction in the embedded store).
const CHUNK: usize = 50;
