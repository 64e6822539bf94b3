//! The `DeploymentStore` port, and the insert that is also the embedded queue's enqueue.

use async_trait::async_trait;
use rusqlite::{OptionalExtension, Transaction, TransactionBehavior, params};
use uuid::Uuid;

use crate::domain::approvals::{Approval, ApprovalStatus, Ballot};
use crate::domain::time_fmt::to_micros;
use crate::domain::*;
use crate::error::{Error, Result};
use crate::ports::*;

use super::*;

#[async_trait]
impl DeploymentStore for SqliteStore {
    async fn create_deployment(&self, new: NewDeployment) -> Result<Deployment> {
        let created = self
            .db
            .write(move |c| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let exists: Option<i64> = tx
                    .query_row(
                        "SELECT 1 FROM deployments WHERE id = ?1",
                        [new.id.to_string()],
                        |r| r.get(0),
                    )
                    .optional()?;
                if exists.is_some() {
                    return Err(Error::conflict(format!(
                        "deployment {} already exists",
                        new.id
                    )));
                }
                insert_deployment(&tx, &new)?;
                let d = query_deployment(&tx, "d.id = ?1", [new.id.to_string()])?
                    .ok_or_else(|| Error::internal("inserted deployment vanished"))?;
                tx.commit()?;
                Ok(d)
            })
            .await?;
        self.wake_workers();
        Ok(created)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(deployment_id = %id))]
    async fn get_deployment(&self, stack: &StackRef, id: Uuid) -> Result<Option<Deployment>> {
        let stack = stack.clone();
        self.db
            .read(move |c| {
                query_deployment(
                    c,
                    "d.id = ?1 AND s.org = ?2 AND s.project = ?3 AND s.name = ?4",
                    params![id.to_string(), stack.org, stack.project, stack.stack],
                )
            })
            .await
    }

    async fn get_deployment_by_version(
        &self,
        stack: &StackRef,
        version: i64,
    ) -> Result<Option<Deployment>> {
        let stack = stack.clone();
        self.db
            .read(move |c| {
                query_deployment(
                    c,
                    "d.version = ?1 AND s.org = ?2 AND s.project = ?3 AND s.name = ?4",
                    params![version, stack.org, stack.project, stack.stack],
                )
            })
            .await
    }

    async fn list_stack_deployments(
        &self,
        stack: &StackRef,
        page: PageRequest,
    ) -> Result<Page<Deployment>> {
        let stack = stack.clone();
        self.db
            .read(move |c| {
                let Some(sid) = stack_id(c, &stack)? else {
                    return Ok(Page {
                        items: vec![],
                        total: 0,
                    });
                };
                page_deployments(c, "d.stack_id = ?1", &sid, page)
            })
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(stack = %stack))]
    async fn list_updates(&self, stack: &StackRef, page: PageRequest) -> Result<Page<Deployment>> {
        let stack = stack.clone();
        self.db
            .read(move |c| {
                let Some(sid) = stack_id(c, &stack)? else {
                    return Ok(Page {
                        items: vec![],
                        total: 0,
                    });
                };
                // Updates start in deployment order (one run per stack at a time).
                page_deployments(
                    c,
                    "d.stack_id = ?1 AND d.update_version IS NOT NULL",
                    &sid,
                    page,
                )
            })
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(stack = %stack))]
    async fn update_by_version(
        &self,
        stack: &StackRef,
        version: i64,
    ) -> Result<Option<Deployment>> {
        let stack = stack.clone();
        self.db
            .read(move |c| {
                query_deployment(
                    c,
                    "d.update_version = ?1 AND s.org = ?2 AND s.project = ?3 AND s.name = ?4",
                    params![version, stack.org, stack.project, stack.stack],
                )
            })
            .await
    }

    async fn list_org_deployments(&self, org: &str, page: PageRequest) -> Result<Page<Deployment>> {
        let org = org.to_string();
        self.db
            .read(move |c| page_deployments(c, "d.org = ?1", &org, page))
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(deployment_id = %id))]
    async fn cancel_deployment(&self, stack: &StackRef, id: Uuid) -> Result<CancelOutcome> {
        let stack = stack.clone();
        let outcome = self
            .db
            .write(move |c| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let (dseq, status): (i64, String) = tx
                    .query_row(
                        "SELECT d.seq, d.status FROM deployments d JOIN stacks s ON s.id = d.stack_id \
                         WHERE d.id = ?1 AND s.org = ?2 AND s.project = ?3 AND s.name = ?4",
                        params![id.to_string(), stack.org, stack.project, stack.stack],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?
                    .ok_or_else(|| Error::not_found(format!("deployment '{id}' not found")))?;
                let outcome = match status.parse::<JobStatus>()? {
                    JobStatus::NotStarted => {
                        insert_log(&tx, dseq, 0, Entry::Line("Cancelled before it started.\n"), now_us())?;
                        terminate(&tx, dseq, JobStatus::Skipped, StepStatus::Failed)?;
                        CancelOutcome::Dequeued
                    }
                    JobStatus::Accepted | JobStatus::Running => {
                        tx.execute("UPDATE deployments SET cancel_requested = 1 WHERE seq = ?1", [dseq])?;
                        CancelOutcome::Requested
                    }
                    _ => CancelOutcome::AlreadyFinished,
                };
                tx.commit()?;
                Ok(outcome)
            })
            .await?;
        self.run_changed();
        Ok(outcome)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(deployment_id = %id))]
    async fn decide_approval(
        &self,
        stack: &StackRef,
        id: Uuid,
        ballot: &Ballot,
    ) -> Result<Deployment> {
        let (stack, ballot) = (stack.clone(), ballot.clone());
        let d = self
            .db
            .write(move |c| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                type Row = (i64, String, String, Option<String>, i64, bool, String);
                let (dseq, status, requested_by, approval, sid, skip_intermediate, operation): Row = tx
                    .query_row(
                        "SELECT d.seq, d.status, d.requested_by, d.approval, d.stack_id, d.skip_intermediate, d.operation \
                         FROM deployments d JOIN stacks s ON s.id = d.stack_id \
                         WHERE d.id = ?1 AND s.org = ?2 AND s.project = ?3 AND s.name = ?4",
                        params![id.to_string(), stack.org, stack.project, stack.stack],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?)),
                    )
                    .optional()?
                    .ok_or_else(|| Error::not_found(format!("deployment '{id}' not found in stack '{stack}'")))?;
                // One a newer deployment supersedes would be skipped when claimed: it is now.
                if status == JobStatus::NotStarted.as_str()
                    && skip_intermediate
                    && super::runs::skip_if_superseded(&tx, dseq, sid, &operation)?
                {
                    tx.commit()?;
                    return Err(crate::domain::approvals::superseded(&operation));
                }
                let current: Option<Approval> =
                    approval.map(|a| serde_json::from_str(&a)).transpose()?;
                let next = Approval::decide_stored(
                    current.as_ref(),
                    status.parse()?,
                    &requested_by,
                    &ballot,
                )?;
                let expires = next.is_pending().then(|| to_micros(next.expires_at));
                tx.execute(
                    "UPDATE deployments SET approval = ?2, approval_expires = ?3, modified = ?4 WHERE seq = ?1",
                    params![dseq, serde_json::to_string(&next)?, expires, now_us()],
                )?;
                if next.status == ApprovalStatus::Rejected {
                    insert_log(&tx, dseq, 0, Entry::Line(&next.ending_line()), now_us())?;
                    terminate(&tx, dseq, JobStatus::Skipped, StepStatus::Failed)?;
                }
                let d = query_deployment(&tx, "d.seq = ?1", [dseq])?
                    .ok_or_else(|| Error::internal("decided deployment vanished"))?;
                tx.commit()?;
                Ok(d)
            })
            .await?;
        self.run_changed();
        self.wake_workers();
        Ok(d)
    }
}

/// Stores a new deployment (creating its stack if needed) and returns its version, which is
/// the stack's next one.
pub(super) fn insert_deployment(tx: &Transaction<'_>, new: &NewDeployment) -> Result<i64> {
    let sid = ensure_stack(tx, &new.stack)?;
    let version: i64 = tx
        .prepare_cached("UPDATE stacks SET last_version = last_version + 1 WHERE id = ?1 RETURNING last_version")?
        .query_row([sid], |r| r.get(0))?;
    tx.prepare_cached(
        "INSERT INTO deployments (id, stack_id, org, version, operation, status, config, initiator, \
         requested_by, skip_intermediate, created, modified, agent_pool, approval, approval_expires) \
         VALUES (?1, ?2, ?3, ?4, ?5, 'not-started', ?6, ?7, ?8, ?9, ?10, ?10, ?11, ?12, ?13)",
    )?
    .execute(params![
        new.id.to_string(),
        sid,
        new.stack.org,
        version,
        new.operation.as_str(),
        serde_json::to_string(&new.config)?,
        new.initiator,
        new.requested_by,
        new.skip_intermediate(),
        now_us(),
        new.config.spec().agent_pool,
        new.approval.as_ref().map(serde_json::to_string).transpose()?,
        new.approval
            .as_ref()
            .filter(|a| a.is_pending())
            .map(|a| to_micros(a.expires_at)),
    ])?;
    Ok(version)
}
