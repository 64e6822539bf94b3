//! The `RunStore` port: the embedded queue's claims, leases, steps, logs and terminal states.

use async_trait::async_trait;
use rusqlite::{OptionalExtension, Row, Transaction, TransactionBehavior, params};
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::domain::approvals::Approval;
use crate::domain::pools::ClaimQueue;
use crate::domain::time_fmt::to_micros;
use crate::domain::updates::{UpdateInfo, UpdateKind, UpdateOutcome, UpdateResult};
use crate::domain::*;
use crate::error::{Error, Result};
use crate::ports::*;
use crate::store_codec::{StoredStep, closing_step_status, stored_id};

use super::*;

/// One pass of the embedded queue inside a write transaction. Fair across orgs: the org with
/// the fewest runs goes first, then the one served longest ago, then the oldest deployment;
/// an org at its concurrency limit waits.
pub(super) fn claim_in(
    tx: &Transaction<'_>,
    lease: &Lease,
    pool: Option<&str>,
) -> Result<Option<Uuid>> {
    loop {
        let candidate: Option<(i64, String, i64, bool, String)> = tx
            .prepare_cached(
                "SELECT d.seq, d.id, d.stack_id, d.skip_intermediate, d.operation \
                 FROM deployments d JOIN stacks s ON s.id = d.stack_id \
                 WHERE d.status = 'not-started' AND d.agent_pool IS ?1 AND s.active IS NULL AND s.paused = 0 \
                   AND NOT EXISTS (SELECT 1 FROM orgs o WHERE o.name = s.org AND (o.paused = 1 OR o.max_concurrent <= \
                        (SELECT COUNT(*) FROM deployments r WHERE r.org = d.org AND r.status IN ('accepted', 'running')))) \
                   AND d.seq = (SELECT MIN(q.seq) FROM deployments q WHERE q.stack_id = d.stack_id AND q.status = 'not-started') \
                   AND (d.approval_expires IS NULL OR (d.skip_intermediate AND EXISTS (SELECT 1 FROM deployments n \
                        WHERE n.stack_id = d.stack_id AND n.status = 'not-started' AND n.operation = d.operation AND n.seq > d.seq))) \
                 ORDER BY (SELECT COUNT(*) FROM deployments r WHERE r.org = d.org AND r.status IN ('accepted', 'running')), \
                   (SELECT o.last_claim FROM orgs o WHERE o.name = d.org), d.seq \
                 LIMIT 1",
            )?
            .query_row([pool], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .optional()?;
        let Some((dseq, id, sid, skip_intermediate, operation)) = candidate else {
            return Ok(None);
        };
        // A head waiting for approval is a candidate only to be skipped, when a newer
        // deployment of its operation supersedes it.
        if skip_intermediate && skip_if_superseded(tx, dseq, sid, &operation)? {
            continue;
        }
        let id = stored_id(&id)?;
        take_slot(tx, dseq, sid, id, lease)?;
        return Ok(Some(id));
    }
}

/// Claims `id` if it may start now (see `RunStore::claim`).
pub(super) fn claim_one(tx: &Transaction<'_>, id: Uuid, lease: &Lease) -> Result<ClaimOutcome> {
    type Row = (i64, i64, String, bool, String, bool, bool, Option<String>);
    let row: Option<Row> = tx
        .query_row(
            "SELECT d.seq, d.stack_id, d.status, d.skip_intermediate, d.operation, s.paused, \
             EXISTS (SELECT 1 FROM orgs o WHERE o.name = s.org AND o.paused = 1), s.active \
             FROM deployments d JOIN stacks s ON s.id = d.stack_id WHERE d.id = ?1",
            [id.to_string()],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                ))
            },
        )
        .optional()?;
    let Some((dseq, sid, status, skip_intermediate, operation, stack_paused, org_paused, active)) =
        row
    else {
        return Ok(ClaimOutcome::Gone);
    };
    if status != JobStatus::NotStarted.as_str() {
        return Ok(ClaimOutcome::Gone);
    }
    if stack_paused || org_paused {
        return Ok(ClaimOutcome::Paused);
    }
    if org_at_limit(tx, dseq)? {
        return Ok(ClaimOutcome::Busy);
    }
    let first: i64 = tx.query_row(
        "SELECT MIN(seq) FROM deployments WHERE stack_id = ?1 AND status = 'not-started'",
        [sid],
        |r| r.get(0),
    )?;
    // A head waiting for approval holds the stack's queue, unless a newer deployment of its
    // operation supersedes it.
    let head: (i64, bool, bool, String) = tx.query_row(
        "SELECT seq, approval_expires IS NOT NULL, skip_intermediate, operation FROM deployments WHERE seq = ?1",
        [first],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )?;
    if head.1 {
        if head.2 && skip_if_superseded(tx, head.0, sid, &head.3)? {
            if head.0 == dseq {
                return Ok(ClaimOutcome::Skipped);
            }
            return claim_one(tx, id, lease);
        }
        return Ok(ClaimOutcome::AwaitingApproval);
    }
    if active.is_some() || first != dseq {
        return Ok(ClaimOutcome::Busy);
    }
    if skip_intermediate && skip_if_superseded(tx, dseq, sid, &operation)? {
        return Ok(ClaimOutcome::Skipped);
    }
    take_slot(tx, dseq, sid, id, lease)?;
    let deployment = query_deployment(tx, "d.id = ?1", [id.to_string()])?
        .ok_or_else(|| Error::internal("claimed deployment vanished"))?;
    Ok(ClaimOutcome::Claimed(Box::new(Claimed { deployment })))
}

/// Whether the org of deployment `dseq` runs as many deployments as its limit allows.
fn org_at_limit(tx: &Transaction<'_>, dseq: i64) -> Result<bool> {
    Ok(tx
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM orgs o WHERE o.name = d.org AND o.max_concurrent <= \
             (SELECT COUNT(*) FROM deployments r WHERE r.org = d.org AND r.status IN ('accepted', 'running'))) \
             FROM deployments d WHERE d.seq = ?1",
        )?
        .query_row([dseq], |r| r.get(0))?)
}

/// Marks a queued deployment `skipped` if a newer one of the same operation is queued behind it.
pub(super) fn skip_if_superseded(
    tx: &Transaction<'_>,
    dseq: i64,
    sid: i64,
    operation: &str,
) -> Result<bool> {
    let newer: bool = tx
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM deployments WHERE stack_id = ?1 AND status = 'not-started' \
             AND operation = ?2 AND seq > ?3)",
        )?
        .query_row(params![sid, operation, dseq], |r| r.get(0))?;
    if newer {
        let msg = format!(
            "Skipped: a newer {operation} deployment is queued (skipIntermediateDeployments).\n"
        );
        insert_log(tx, dseq, 0, Entry::Line(&msg), now_us())?;
        terminate(tx, dseq, JobStatus::Skipped, StepStatus::Failed)?;
    }
    Ok(newer)
}

/// `not-started` → `accepted` under `lease`, taking the stack's run slot.
pub(super) fn take_slot(
    tx: &Transaction<'_>,
    dseq: i64,
    sid: i64,
    id: Uuid,
    lease: &Lease,
) -> Result<()> {
    tx.prepare_cached(
        "UPDATE deployments SET status = 'accepted', lease_owner = ?2, lease_expires = ?3, modified = ?4 WHERE seq = ?1",
    )?
    .execute(params![dseq, lease.owner, lease_expiry(lease), now_us()])?;
    tx.prepare_cached("UPDATE stacks SET active = ?2 WHERE id = ?1")?
        .execute(params![sid, id.to_string()])?;
    // Round-robin by org: the org served longest ago goes first next time.
    tx.prepare_cached(
        "INSERT INTO orgs (name, paused, last_claim) SELECT org, 0, ?2 FROM deployments WHERE seq = ?1 \
         ON CONFLICT (name) DO UPDATE SET last_claim = excluded.last_claim",
    )?
    .execute(params![dseq, now_us()])?;
    Ok(())
}

#[async_trait]
impl RunStore for SqliteStore {
    #[tracing::instrument(level = "debug", skip_all, fields(deployment_id = %id))]
    async fn claim(&self, _stack: &StackRef, id: Uuid, lease: &Lease) -> Result<ClaimOutcome> {
        let lease = lease.clone();
        self.db
            .write(move |c| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let outcome = claim_one(&tx, id, &lease)?;
                tx.commit()?;
                Ok(outcome)
            })
            .await
    }

    async fn claim_next(&self, lease: &Lease, queue: ClaimQueue<'_>) -> Result<Option<Claimed>> {
        let lease = lease.clone();
        let pool = queue.pool();
        self.db
            .write(move |c| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let Some(id) = claim_in(&tx, &lease, pool.as_deref())? else {
                    tx.commit()?; // keeps any skips made on the way
                    return Ok(None);
                };
                let deployment = query_deployment(&tx, "d.id = ?1", [id.to_string()])?
                    .ok_or_else(|| Error::internal("claimed deployment vanished"))?;
                tx.commit()?;
                Ok(Some(Claimed { deployment }))
            })
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(deployment_id = %id))]
    async fn mark_running(&self, id: Uuid, lease: &Lease) -> Result<()> {
        let lease = lease.clone();
        let result = self.db
            .write(move |c| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let dseq = held(&tx, id, &lease, "'accepted'")?;
                let now = now_us();
                tx.execute(
                    "UPDATE deployments SET status = 'running', started = ?2, modified = ?2, lease_expires = ?3 WHERE seq = ?1",
                    params![dseq, now, lease_expiry(&lease)],
                )?;
                tx.commit()?;
                Ok(())
            })
            .await;
        self.run_changed();
        result
    }

    async fn held_deployment(
        &self,
        stack: &StackRef,
        id: Uuid,
        owner: &str,
    ) -> Result<Option<Deployment>> {
        let (stack, owner) = (stack.clone(), owner.to_string());
        self.db
            .read(move |c| {
                query_deployment(
                    c,
                    "d.id = ?1 AND s.org = ?2 AND s.project = ?3 AND s.name = ?4 \
                     AND d.status = 'running' AND d.lease_owner = ?5 AND d.lease_expires > ?6",
                    params![
                        id.to_string(),
                        stack.org,
                        stack.project,
                        stack.stack,
                        owner,
                        now_us()
                    ],
                )
            })
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(deployment_id = %id))]
    async fn heartbeat(&self, id: Uuid, lease: &Lease) -> Result<Heartbeat> {
        let lease = lease.clone();
        self.db
            .write(move |c| {
                let cancel: Option<bool> = c
                    .prepare_cached(
                        "UPDATE deployments SET lease_expires = ?3 WHERE id = ?1 AND lease_owner = ?2 \
                         AND status IN ('accepted', 'running') RETURNING cancel_requested",
                    )?
                    .query_row(params![id.to_string(), lease.owner, lease_expiry(&lease)], |r| r.get(0))
                    .optional()?;
                let cancel_requested = cancel
                    .ok_or_else(|| Error::conflict(format!("deployment {id} is no longer held by this worker")))?;
                Ok(Heartbeat { cancel_requested })
            })
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(deployment_id = %id))]
    async fn start_update(&self, id: Uuid, lease: &Lease, kind: UpdateKind) -> Result<i64> {
        let lease = lease.clone();
        let result = self.db
            .write(move |c| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let dseq = held(&tx, id, &lease, "'running'")?;
                let (sid, existing): (i64, Option<i64>) = tx.query_row(
                    "SELECT stack_id, update_version FROM deployments WHERE seq = ?1",
                    [dseq],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?;
                if existing.is_some() {
                    return Err(Error::conflict(format!(
                        "deployment {id} has started its update already"
                    )));
                }
                let version: i64 = tx.query_row(
                    "UPDATE stacks SET update_seq = update_seq + 1 WHERE id = ?1 RETURNING update_seq",
                    [sid],
                    |r| r.get(0),
                )?;
                let info = UpdateInfo::starting(version, kind);
                tx.execute(
                    "UPDATE deployments SET update_version = ?2, update_info = ?3 WHERE seq = ?1",
                    params![dseq, version, serde_json::to_string(&info)?],
                )?;
                tx.commit()?;
                Ok(version)
            })
            .await;
        self.run_changed();
        result
    }

    #[tracing::instrument(level = "debug", skip_all, fields(deployment_id = %id))]
    async fn finish_update(&self, id: Uuid, lease: &Lease, outcome: &UpdateOutcome) -> Result<()> {
        let (lease, outcome) = (lease.clone(), outcome.clone());
        let result =
            self.db
                .write(move |c| {
                    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                    let dseq = held(&tx, id, &lease, "'running'")?;
                    let (sid, info): (i64, Option<String>) = tx.query_row(
                        "SELECT stack_id, update_info FROM deployments WHERE seq = ?1",
                        [dseq],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )?;
                    let mut info: UpdateInfo = serde_json::from_str(&info.ok_or_else(|| {
                        Error::not_found(format!("deployment {id} has no update"))
                    })?)?;
                    info.result = outcome.result;
                    info.ended = Some(OffsetDateTime::now_utc());
                    info.resource_changes = outcome.resource_changes.clone();
                    info.resource_count = outcome.resource_count;
                    tx.execute(
                        "UPDATE deployments SET update_info = ?2 WHERE seq = ?1",
                        params![dseq, serde_json::to_string(&info)?],
                    )?;
                    if outcome.result == UpdateResult::Succeeded
                        && let Some(count) = outcome.resource_count
                    {
                        tx.execute(
                            "UPDATE stacks SET resource_count = ?2 WHERE id = ?1",
                            params![sid, count],
                        )?;
                    }
                    tx.commit()?;
                    Ok(())
                })
                .await;
        self.run_changed();
        result
    }

    #[tracing::instrument(level = "debug", skip_all, fields(deployment_id = %id))]
    async fn start_step(&self, id: Uuid, lease: &Lease, name: &str) -> Result<usize> {
        let (lease, name) = (lease.clone(), name.to_string());
        let result = self
            .db
            .write(move |c| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let dseq = held(&tx, id, &lease, "'running'")?;
                let now = now_us();
                let idx = update_steps(&tx, dseq, |steps| {
                    steps.push(StoredStep::running(&name, now));
                    Ok(steps.len() - 1)
                })?;
                insert_log(&tx, dseq, idx, Entry::Header(&name), now)?;
                tx.commit()?;
                Ok(idx)
            })
            .await;
        self.run_changed();
        result
    }

    async fn finish_step(
        &self,
        id: Uuid,
        lease: &Lease,
        step: usize,
        status: StepStatus,
    ) -> Result<()> {
        let lease = lease.clone();
        let result = self
            .db
            .write(move |c| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let dseq = held(&tx, id, &lease, "'running'")?;
                update_steps(&tx, dseq, |steps| {
                    let s = steps.get_mut(step).ok_or_else(|| {
                        Error::invalid(format!("the deployment has no step {step}"))
                    })?;
                    s.status = status.as_str().into();
                    s.updated = Some(now_us());
                    Ok(step)
                })?;
                tx.commit()?;
                Ok(())
            })
            .await;
        self.run_changed();
        result
    }

    #[tracing::instrument(level = "debug", skip_all, fields(deployment_id = %id))]
    async fn append_logs(&self, id: Uuid, lease: &Lease, lines: &[LogLine]) -> Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let (lease, lines) = (lease.clone(), lines.to_vec());
        let result = self
            .db
            .write(move |c| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let dseq = held(&tx, id, &lease, "'accepted', 'running'")?;
                for l in &lines {
                    let event = l.event.as_ref().map(Value::to_string);
                    let entry = match &event {
                        Some(e) => Entry::Event(e),
                        None => Entry::Line(&l.line),
                    };
                    insert_log(&tx, dseq, l.step, entry, to_micros(l.timestamp))?;
                }
                tx.commit()?;
                Ok(())
            })
            .await;
        self.run_changed();
        result
    }

    #[tracing::instrument(level = "debug", skip_all, fields(deployment_id = %id))]
    async fn record_outputs(&self, id: Uuid, lease: &Lease, outputs: &Value) -> Result<()> {
        let lease = lease.clone();
        let raw = if outputs.is_null() {
            None
        } else {
            Some(serde_json::to_string(outputs)?)
        };
        self.db
            .write(move |c| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let dseq = held(&tx, id, &lease, "'running'")?;
                tx.execute(
                    "UPDATE stacks SET outputs = ?2 WHERE id = (SELECT stack_id FROM deployments WHERE seq = ?1)",
                    params![dseq, raw],
                )?;
                tx.commit()?;
                Ok(())
            })
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(deployment_id = %id))]
    async fn finish(&self, id: Uuid, lease: &Lease, status: JobStatus) -> Result<()> {
        let lease = lease.clone();
        let step_status = closing_step_status(status);
        let result = self
            .db
            .write(move |c| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let dseq = held(&tx, id, &lease, "'accepted', 'running'")?;
                terminate(&tx, dseq, status, step_status)?;
                tx.commit()?;
                Ok(())
            })
            .await;
        self.run_changed();
        result?;
        self.wake_workers();
        Ok(())
    }

    async fn queued_before(&self, cutoff: OffsetDateTime) -> Result<Vec<QueueMessage>> {
        let cutoff = to_micros(cutoff);
        self.db
            .read(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT d.id, s.org, s.project, s.name FROM deployments d JOIN stacks s ON s.id = d.stack_id \
                     WHERE d.status = 'not-started' AND d.created < ?1 AND d.approval_expires IS NULL ORDER BY d.seq",
                )?;
                let rows = stmt.query_map([cutoff], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, String>(3)?))
                })?;
                rows.map(|row| {
                    let (id, org, project, stack) = row?;
                    let deployment_id = stored_id(&id)?;
                    Ok(QueueMessage { deployment_id, org, project, stack })
                })
                .collect()
            })
            .await
    }

    async fn queue_state(&self, d: &Deployment) -> Result<QueueState> {
        let id = d.id.to_string();
        self.db
            .read(move |c| {
                let row = c
                    .prepare_cached(
                        "SELECT \
                         (SELECT COUNT(*) FROM deployments q WHERE q.status = 'not-started' AND q.org = d.org \
                            AND q.agent_pool IS d.agent_pool AND q.seq < d.seq AND q.approval_expires IS NULL), \
                         s.active IS NOT NULL OR EXISTS (SELECT 1 FROM deployments o WHERE o.stack_id = d.stack_id \
                            AND o.status = 'not-started' AND o.seq < d.seq), \
                         s.paused OR EXISTS (SELECT 1 FROM orgs o WHERE o.name = s.org AND o.paused = 1), \
                         EXISTS (SELECT 1 FROM orgs o WHERE o.name = s.org AND o.max_concurrent <= \
                            (SELECT COUNT(*) FROM deployments r WHERE r.org = d.org AND r.status IN ('accepted', 'running'))) \
                         FROM deployments d JOIN stacks s ON s.id = d.stack_id WHERE d.id = ?1",
                    )?
                    .query_row([&id], |r| {
                        Ok(QueueState {
                            ahead: r.get::<_, i64>(0)? as u64,
                            stack_busy: r.get(1)?,
                            paused: r.get(2)?,
                            org_at_limit: r.get(3)?,
                        })
                    })
                    .optional()?;
                Ok(row.unwrap_or_default())
            })
            .await
    }

    async fn reap(&self, now: OffsetDateTime, queue_expiry: OffsetDateTime) -> Result<Vec<Reaped>> {
        let (now, expiry) = (to_micros(now), to_micros(queue_expiry));
        let changed = self
            .db
            .write(move |c| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let row = |r: &Row<'_>| -> rusqlite::Result<(i64, String, StackRef)> {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        StackRef {
                            org: r.get(2)?,
                            project: r.get(3)?,
                            stack: r.get(4)?,
                        },
                    ))
                };
                let expired: Vec<(i64, String, StackRef)> = tx
                    .prepare_cached(
                        "SELECT d.seq, d.id, s.org, s.project, s.name FROM deployments d JOIN stacks s ON s.id = d.stack_id \
                         WHERE d.status IN ('accepted', 'running') AND d.lease_expires < ?1",
                    )?
                    .query_map([now], row)?
                    .collect::<rusqlite::Result<_>>()?;
                let stale: Vec<(i64, String, StackRef)> = tx
                    .prepare_cached(
                        "SELECT d.seq, d.id, s.org, s.project, s.name FROM deployments d JOIN stacks s ON s.id = d.stack_id \
                         WHERE d.status = 'not-started' AND d.approval_expires IS NULL \
                           AND (CASE WHEN d.approval IS NULL THEN d.created ELSE d.modified END) < ?1",
                    )?
                    .query_map([expiry], row)?
                    .collect::<rusqlite::Result<_>>()?;
                for (dseq, _, _) in &expired {
                    insert_log(
                        &tx,
                        *dseq,
                        0,
                        Entry::Line("The worker running this deployment stopped renewing its lease (it crashed or was killed); marked failed.\n"),
                        now,
                    )?;
                    terminate(&tx, *dseq, JobStatus::Failed, StepStatus::Failed)?;
                }
                for (dseq, _, _) in &stale {
                    insert_log(&tx, *dseq, 0, Entry::Line("Skipped: queued for longer than the queue allows.\n"), now)?;
                    terminate(&tx, *dseq, JobStatus::Skipped, StepStatus::Failed)?;
                }
                // Approvals past their deadline: the deployment is skipped, saying so.
                let unapproved: Vec<(i64, String, StackRef, String)> = tx
                    .prepare_cached(
                        "SELECT d.seq, d.id, s.org, s.project, s.name, d.approval FROM deployments d JOIN stacks s ON s.id = d.stack_id \
                         WHERE d.approval_expires < ?1 AND d.status = 'not-started'",
                    )?
                    .query_map([now], |r| {
                        let (seq, id, stack) = row(r)?;
                        Ok((seq, id, stack, r.get(5)?))
                    })?
                    .collect::<rusqlite::Result<_>>()?;
                let mut lapsed = Vec::with_capacity(unapproved.len());
                for (dseq, id, stack, approval) in unapproved {
                    let approval: Approval = serde_json::from_str(&approval)?;
                    let expired = approval.expired();
                    tx.execute(
                        "UPDATE deployments SET approval = ?2 WHERE seq = ?1",
                        params![dseq, serde_json::to_string(&expired)?],
                    )?;
                    insert_log(&tx, dseq, 0, Entry::Line(&expired.ending_line()), now)?;
                    terminate(&tx, dseq, JobStatus::Skipped, StepStatus::Failed)?;
                    lapsed.push((dseq, id, stack));
                }
                tx.commit()?;
                let failed = expired.into_iter().map(|e| (e, JobStatus::Failed));
                let skipped = stale.into_iter().chain(lapsed).map(|e| (e, JobStatus::Skipped));
                failed
                    .chain(skipped)
                    .map(|((_, id, stack), status)| {
                        Ok(Reaped {
                            stack,
                            id: stored_id(&id)?,
                            status,
                        })
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .await?;
        if !changed.is_empty() {
            self.run_changed();
            self.wake_workers();
        }
        Ok(changed)
    }
}
