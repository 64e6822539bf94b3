//! The SQLite adapters of `ScheduleStore` and `DriftStore`.

use async_trait::async_trait;
use rusqlite::{OptionalExtension, Row, TransactionBehavior, params};
use time::OffsetDateTime;
use uuid::Uuid;

use super::deployments::insert_deployment;
use super::{SqliteStore, stack_id};
use crate::domain::schedule::{Cron, Purpose, Schedule, When};
use crate::domain::time_fmt::{from_micros, to_micros};
use crate::domain::{Page, PageRequest, StackRef};
use crate::error::{Error, Result};
use crate::ports::{
    DriftRun, DriftStore, FireResult, HistoryEvent, PlannedFiring, SKIPPED_NOTE, ScheduleStore,
};
use crate::store_codec::stored_id;

const COLUMNS: &str = "s.id, st.org, st.project, st.name, s.purpose, s.cron, s.once, s.definition, \
    s.next_execution, s.paused, s.created, s.modified, s.last_executed";

fn schedule_from_row(r: &Row<'_>) -> rusqlite::Result<Result<Schedule>> {
    let (id, org, project, stack, purpose): (String, String, String, String, String) =
        (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?);
    let (cron, once, definition): (Option<String>, Option<i64>, String) =
        (r.get(5)?, r.get(6)?, r.get(7)?);
    let (next, paused, created, modified, last): (Option<i64>, bool, i64, i64, Option<i64>) =
        (r.get(8)?, r.get(9)?, r.get(10)?, r.get(11)?, r.get(12)?);
    Ok((|| {
        let when = match (cron, once) {
            (Some(c), _) => When::Cron(Box::new(Cron::from_stored(&c)?)),
            (None, Some(t)) => When::Once(from_micros(t)),
            (None, None) => return Err(Error::internal("schedule without cron or instant")),
        };
        Ok(Schedule {
            id: stored_id(&id)?,
            stack: StackRef {
                org,
                project,
                stack,
            },
            purpose: Purpose::parse(&purpose)?,
            when,
            definition: serde_json::from_str(&definition)?,
            next_execution: next.map(from_micros),
            paused,
            created: from_micros(created),
            modified: from_micros(modified),
            last_executed: last.map(from_micros),
        })
    })())
}

fn when_columns(when: &When) -> (Option<String>, Option<i64>) {
    match when {
        When::Cron(c) => (Some(c.as_str().to_string()), None),
        When::Once(t) => (None, Some(to_micros(*t))),
    }
}

#[async_trait]
impl ScheduleStore for SqliteStore {
    async fn create_schedule(&self, s: &Schedule) -> Result<()> {
        let s = s.clone();
        self.db
            .write(move |c| {
                let sid = stack_id(c, &s.stack)?.ok_or_else(|| Error::not_found(format!("stack '{}' not found", s.stack)))?;
                let (cron, once) = when_columns(&s.when);
                c.execute(
                    "INSERT INTO schedules (id, stack_id, purpose, cron, once, definition, next_execution, paused, created, modified, last_executed) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                    params![
                        s.id.to_string(),
                        sid,
                        s.purpose.as_str(),
                        cron,
                        once,
                        serde_json::to_string(&s.definition)?,
                        s.next_execution.map(to_micros),
                        s.paused,
                        to_micros(s.created),
                        to_micros(s.modified),
                        s.last_executed.map(to_micros)
                    ],
                )?;
                Ok(())
            })
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(deployment_id = %id))]
    async fn get_schedule(&self, stack: &StackRef, id: Uuid) -> Result<Option<Schedule>> {
        let stack = stack.clone();
        self.db
            .read(move |c| {
                c.prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM schedules s JOIN stacks st ON st.id = s.stack_id \
                     WHERE s.id = ?1 AND st.org = ?2 AND st.project = ?3 AND st.name = ?4"
                ))?
                .query_row(
                    params![id.to_string(), stack.org, stack.project, stack.stack],
                    schedule_from_row,
                )
                .optional()?
                .transpose()
            })
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(stack = %stack))]
    async fn list_schedules(&self, stack: &StackRef) -> Result<Vec<Schedule>> {
        let stack = stack.clone();
        self.db
            .read(move |c| {
                let mut stmt = c.prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM schedules s JOIN stacks st ON st.id = s.stack_id \
                     WHERE st.org = ?1 AND st.project = ?2 AND st.name = ?3 ORDER BY s.created, s.id"
                ))?;
                let rows = stmt.query_map(params![stack.org, stack.project, stack.stack], schedule_from_row)?;
                rows.map(|r| r.map_err(Error::from).and_then(|s| s)).collect()
            })
            .await
    }

    async fn update_schedule(
        &self,
        s: &Schedule,
        expected_next: Option<OffsetDateTime>,
    ) -> Result<()> {
        let s = s.clone();
        self.db
            .write(move |c| {
                let (cron, once) = when_columns(&s.when);
                let n = c.execute(
                    "UPDATE schedules SET cron = ?2, once = ?3, definition = ?4, next_execution = ?5, paused = ?6, modified = ?7 \
                     WHERE id = ?1 AND next_execution IS ?11 \
                     AND stack_id = (SELECT id FROM stacks WHERE org = ?8 AND project = ?9 AND name = ?10)",
                    params![
                        s.id.to_string(),
                        cron,
                        once,
                        serde_json::to_string(&s.definition)?,
                        s.next_execution.map(to_micros),
                        s.paused,
                        to_micros(s.modified),
                        s.stack.org,
                        s.stack.project,
                        s.stack.stack,
                        expected_next.map(to_micros)
                    ],
                )?;
                if n == 1 {
                    return Ok(());
                }
                let exists: bool = c.query_row(
                    "SELECT EXISTS (SELECT 1 FROM schedules WHERE id = ?1)",
                    [s.id.to_string()],
                    |r| r.get(0),
                )?;
                Err(if exists {
                    Error::conflict("the schedule fired meanwhile; retry")
                } else {
                    Error::not_found("schedule not found")
                })
            })
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(deployment_id = %id))]
    async fn delete_schedule(&self, stack: &StackRef, id: Uuid) -> Result<()> {
        let stack = stack.clone();
        let n = self
            .db
            .write(move |c| {
                Ok(c.execute(
                    "DELETE FROM schedules WHERE id = ?1 AND stack_id = (SELECT id FROM stacks WHERE org = ?2 AND project = ?3 AND name = ?4)",
                    params![id.to_string(), stack.org, stack.project, stack.stack],
                )?)
            })
            .await?;
        if n == 0 {
            return Err(Error::not_found(format!("schedule '{id}' not found")));
        }
        Ok(())
    }

    async fn due_schedules(&self, now: OffsetDateTime, limit: usize) -> Result<Vec<Schedule>> {
        let now = to_micros(now);
        self.db
            .read(move |c| {
                let mut stmt = c.prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM schedules s JOIN stacks st ON st.id = s.stack_id \
                     WHERE s.paused = 0 AND s.next_execution IS NOT NULL AND s.next_execution <= ?1 \
                     ORDER BY s.next_execution LIMIT ?2"
                ))?;
                let rows = stmt.query_map(params![now, limit as i64], schedule_from_row)?;
                rows.map(|r| r.map_err(Error::from).and_then(|s| s)).collect()
            })
            .await
    }

    async fn advance_schedule(
        &self,
        _stack: &StackRef,
        id: Uuid,
        expected: OffsetDateTime,
        next: Option<OffsetDateTime>,
        fired: OffsetDateTime,
    ) -> Result<bool> {
        let n = self
            .db
            .write(move |c| {
                Ok(c.prepare_cached(
                    "UPDATE schedules SET next_execution = ?3, last_executed = ?4 \
                     WHERE id = ?1 AND next_execution = ?2 AND paused = 0",
                )?
                .execute(params![
                    id.to_string(),
                    to_micros(expected),
                    next.map(to_micros),
                    to_micros(fired)
                ])?)
            })
            .await?;
        Ok(n == 1)
    }

    async fn add_history(&self, _stack: &StackRef, e: &HistoryEvent) -> Result<()> {
        let e = e.clone();
        self.db
            .write(move |c| {
                c.prepare_cached(
                    "INSERT INTO schedule_history (id, schedule_id, executed, deployment, version, note) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?
                .execute(params![
                    e.id.to_string(),
                    e.schedule_id.to_string(),
                    to_micros(e.executed),
                    e.deployment.map(|d| d.0.to_string()),
                    e.deployment.map(|d| d.1),
                    e.note
                ])?;
                Ok(())
            })
            .await
    }

    async fn fire(&self, batch: Vec<PlannedFiring>) -> Result<Vec<FireResult>> {
        let results = self
            .db
            .write(move |c| {
                // One transaction for the whole batch: a tick's cost is then one commit per batch,
                // not three per schedule.
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let mut results = Vec::with_capacity(batch.len());
                for f in &batch {
                    let won = tx
                        .prepare_cached(
                            "UPDATE schedules SET next_execution = ?3, last_executed = ?4 \
                             WHERE id = ?1 AND next_execution = ?2 AND paused = 0",
                        )?
                        .execute(params![
                            f.schedule_id.to_string(),
                            to_micros(f.expected),
                            f.next.map(to_micros),
                            to_micros(f.fired_at)
                        ])?
                        == 1;
                    if !won {
                        results.push(FireResult::Lost);
                        continue;
                    }
                    let history = |at: OffsetDateTime, deployment: Option<(Uuid, i64)>, note: &str| -> Result<()> {
                        tx.prepare_cached(
                            "INSERT INTO schedule_history (id, schedule_id, executed, deployment, version, note) \
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                        )?
                        .execute(params![
                            Uuid::new_v4().to_string(),
                            f.schedule_id.to_string(),
                            to_micros(at),
                            deployment.map(|d| d.0.to_string()),
                            deployment.map(|d| d.1),
                            note
                        ])?;
                        Ok(())
                    };
                    for missed in &f.skipped {
                        history(*missed, None, SKIPPED_NOTE)?;
                    }
                    let created = match &f.deployment {
                        Ok(new) => {
                            let version = insert_deployment(&tx, new)?;
                            history(f.slot, Some((new.id, version)), "fired")?;
                            Some((new.id, version))
                        }
                        Err(why) => {
                            history(f.slot, None, &format!("failed: {why}"))?;
                            None
                        }
                    };
                    results.push(FireResult::Fired(created));
                }
                tx.commit()?;
                Ok(results)
            })
            .await?;
        if results
            .iter()
            .any(|r| matches!(r, FireResult::Fired(Some(_))))
        {
            self.wake_workers();
        }
        Ok(results)
    }

    async fn history(
        &self,
        _stack: &StackRef,
        schedule_id: Uuid,
        limit: usize,
    ) -> Result<Vec<HistoryEvent>> {
        self.db
            .read(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT id, executed, deployment, version, note FROM schedule_history WHERE schedule_id = ?1 \
                     ORDER BY executed DESC, rowid DESC LIMIT ?2",
                )?;
                let rows = stmt.query_map(params![schedule_id.to_string(), limit as i64], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, Option<String>>(2)?, r.get::<_, Option<i64>>(3)?, r.get::<_, String>(4)?))
                })?;
                rows.map(|row| {
                    let (id, executed, dep, version, note) = row?;
                    let deployment = match (dep, version) {
                        (Some(d), Some(v)) => Some((stored_id(&d)?, v)),
                        _ => None,
                    };
                    Ok(HistoryEvent { id: stored_id(&id)?, schedule_id, executed: from_micros(executed), deployment, note })
                })
                .collect()
            })
            .await
    }
}

fn drift_from_row(stack: &StackRef, r: &Row<'_>) -> rusqlite::Result<Result<DriftRun>> {
    let (id, created, detect_id, detect_version, detected, rem_id, rem_version): (
        String,
        i64,
        String,
        i64,
        bool,
        Option<String>,
        Option<i64>,
    ) = (
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
    );
    let stack = stack.clone();
    Ok((|| {
        Ok(DriftRun {
            id: stored_id(&id)?,
            stack,
            created: from_micros(created),
            detect: (stored_id(&detect_id)?, detect_version),
            drift_detected: detected,
            remediation: match (rem_id, rem_version) {
                (Some(i), Some(v)) => Some((stored_id(&i)?, v)),
                _ => None,
            },
        })
    })())
}

const DRIFT_COLUMNS: &str = "d.id, d.created, d.detect_id, d.detect_version, d.drift_detected, d.remediate_id, d.remediate_version";

#[async_trait]
impl DriftStore for SqliteStore {
    async fn record_drift_run(&self, run: &DriftRun) -> Result<()> {
        let run = run.clone();
        self.db
            .write(move |c| {
                let sid = stack_id(c, &run.stack)?.ok_or_else(|| Error::not_found("stack not found"))?;
                c.execute(
                    "INSERT INTO drift_runs (id, stack_id, created, detect_id, detect_version, drift_detected, remediate_id, remediate_version) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    params![
                        run.id.to_string(),
                        sid,
                        to_micros(run.created),
                        run.detect.0.to_string(),
                        run.detect.1,
                        run.drift_detected,
                        run.remediation.map(|r| r.0.to_string()),
                        run.remediation.map(|r| r.1)
                    ],
                )?;
                Ok(())
            })
            .await
    }

    async fn link_remediation(
        &self,
        stack: &StackRef,
        run: Uuid,
        remediation: (Uuid, i64),
    ) -> Result<()> {
        let stack = stack.clone();
        let n = self
            .db
            .write(move |c| {
                Ok(c.execute(
                    "UPDATE drift_runs SET remediate_id = ?2, remediate_version = ?3 WHERE id = ?1 \
                     AND stack_id = (SELECT id FROM stacks WHERE org = ?4 AND project = ?5 AND name = ?6)",
                    params![run.to_string(), remediation.0.to_string(), remediation.1, stack.org, stack.project, stack.stack],
                )?)
            })
            .await?;
        if n == 0 {
            return Err(Error::not_found("drift run not found"));
        }
        Ok(())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(stack = %stack))]
    async fn drift_runs(&self, stack: &StackRef, page: PageRequest) -> Result<Page<DriftRun>> {
        let stack = stack.clone();
        self.db
            .read(move |c| {
                let Some(sid) = stack_id(c, &stack)? else { return Ok(Page { items: vec![], total: 0 }) };
                let total: u64 = c.query_row("SELECT COUNT(*) FROM drift_runs WHERE stack_id = ?1", [sid], |r| r.get(0))?;
                let offset = u64::from(page.page.saturating_sub(1)) * u64::from(page.page_size);
                let order = if page.ascending { "ASC" } else { "DESC" };
                let mut stmt = c.prepare_cached(&format!(
                    "SELECT {DRIFT_COLUMNS} FROM drift_runs d WHERE d.stack_id = ?1 ORDER BY d.created {order}, d.rowid {order} LIMIT ?2 OFFSET ?3"
                ))?;
                let items = stmt
                    .query_map(params![sid, page.page_size, offset], |r| drift_from_row(&stack, r))?
                    .map(|r| r.map_err(Error::from).and_then(|d| d))
                    .collect::<Result<Vec<_>>>()?;
                Ok(Page { items, total })
            })
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(deployment_id = %id))]
    async fn drift_run(&self, stack: &StackRef, id: Uuid) -> Result<Option<DriftRun>> {
        let stack = stack.clone();
        self.db
            .read(move |c| {
                let Some(sid) = stack_id(c, &stack)? else {
                    return Ok(None);
                };
                c.prepare_cached(&format!(
                    "SELECT {DRIFT_COLUMNS} FROM drift_runs d WHERE d.stack_id = ?1 AND d.id = ?2"
                ))?
                .query_row(params![sid, id.to_string()], |r| drift_from_row(&stack, r))
                .optional()?
                .transpose()
            })
            .await
    }
}
