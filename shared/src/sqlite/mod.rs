//! The embedded adapters: every port on one SQLite file. Production code for `tarmac serve`.

mod db;
mod notifications;
mod schedules;
mod schema;

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, Row, Transaction, TransactionBehavior, params};
use serde_json::Value;
use time::OffsetDateTime;
use tokio::sync::Notify;
use uuid::Uuid;

pub use db::Db;

use crate::domain::time_fmt::{from_micros, to_micros};
use crate::domain::*;
use crate::error::{Error, Result};
use crate::ports::*;
use crate::store_codec::{
    StoredStep, close_running, closing_step_status, decode_steps, stored_id, to_domain_steps,
};

/// Every port, on one SQLite database.
#[derive(Clone)]
pub struct SqliteStore {
    db: Arc<Db>,
    work: Arc<Notify>,
    outbox: Arc<Notify>,
}

impl SqliteStore {
    pub fn open(path: &Path) -> Result<Self> {
        Ok(Self {
            db: Db::open(path)?,
            work: Arc::new(Notify::new()),
            outbox: Arc::new(Notify::new()),
        })
    }

    /// Signalled whenever a deployment may have become claimable.
    pub fn work_signal(&self) -> Arc<Notify> {
        Arc::clone(&self.work)
    }

    /// Signalled whenever notifications were queued.
    pub fn outbox_signal(&self) -> Arc<Notify> {
        Arc::clone(&self.outbox)
    }

    pub(crate) fn wake_workers(&self) {
        self.work.notify_waiters();
    }
}

fn now_us() -> i64 {
    to_micros(OffsetDateTime::now_utc())
}

fn lease_expiry(lease: &Lease) -> i64 {
    now_us() + lease.ttl.as_micros() as i64
}

fn stack_id(conn: &Connection, stack: &StackRef) -> Result<Option<i64>> {
    Ok(conn
        .prepare_cached("SELECT id FROM stacks WHERE org = ?1 AND project = ?2 AND name = ?3")?
        .query_row(params![stack.org, stack.project, stack.stack], |r| r.get(0))
        .optional()?)
}

fn ensure_stack(tx: &Transaction, stack: &StackRef) -> Result<i64> {
    if let Some(id) = stack_id(tx, stack)? {
        return Ok(id);
    }
    tx.prepare_cached("INSERT INTO stacks (org, project, name, created) VALUES (?1, ?2, ?3, ?4)")?
        .execute(params![stack.org, stack.project, stack.stack, now_us()])?;
    Ok(tx.last_insert_rowid())
}

const DEPLOYMENT_COLUMNS: &str = "d.id, s.org, s.project, s.name, d.version, s.last_version, \
    d.operation, d.status, d.config, d.initiator, d.requested_by, d.created, d.modified, \
    d.started, d.steps, s.paused";

fn deployment_from_row(r: &Row) -> rusqlite::Result<Result<Deployment>> {
    let id: String = r.get(0)?;
    let operation: String = r.get(6)?;
    let status: String = r.get(7)?;
    let config: String = r.get(8)?;
    let steps: String = r.get(14)?;
    let stack = StackRef {
        org: r.get(1)?,
        project: r.get(2)?,
        stack: r.get(3)?,
    };
    let (version, latest, initiator, requested_by): (i64, i64, String, String) =
        (r.get(4)?, r.get(5)?, r.get(9)?, r.get(10)?);
    let (created, modified, started, paused): (i64, i64, Option<i64>, bool) =
        (r.get(11)?, r.get(12)?, r.get(13)?, r.get(15)?);
    Ok((|| {
        Ok(Deployment {
            id: stored_id(&id)?,
            stack,
            version,
            latest_version: latest,
            operation: operation.parse()?,
            status: status.parse()?,
            config: serde_json::from_str(&config)?,
            initiator,
            requested_by,
            created: from_micros(created),
            modified: from_micros(modified),
            started: started.map(from_micros),
            steps: to_domain_steps(&steps)?,
            stack_paused: paused,
        })
    })())
}

fn query_deployment(
    conn: &Connection,
    where_sql: &str,
    args: impl rusqlite::Params,
) -> Result<Option<Deployment>> {
    let sql = format!(
        "SELECT {DEPLOYMENT_COLUMNS} FROM deployments d JOIN stacks s ON s.id = d.stack_id WHERE {where_sql}"
    );
    conn.prepare_cached(&sql)?
        .query_row(args, deployment_from_row)
        .optional()?
        .transpose()
}

fn page_deployments(
    conn: &Connection,
    filter: &str,
    key: &dyn rusqlite::ToSql,
    page: PageRequest,
) -> Result<Page<Deployment>> {
    let total: u64 = conn
        .prepare_cached(&format!(
            "SELECT COUNT(*) FROM deployments d JOIN stacks s ON s.id = d.stack_id WHERE {filter}"
        ))?
        .query_row([key], |r| r.get(0))?;
    let order = if page.ascending { "ASC" } else { "DESC" };
    let sql = format!(
        "SELECT {DEPLOYMENT_COLUMNS} FROM deployments d JOIN stacks s ON s.id = d.stack_id \
         WHERE {filter} ORDER BY d.seq {order} LIMIT ?2 OFFSET ?3"
    );
    let offset = u64::from(page.page.saturating_sub(1)) * u64::from(page.page_size);
    let mut stmt = conn.prepare_cached(&sql)?;
    let items = stmt
        .query_map(params![key, page.page_size, offset], deployment_from_row)?
        .map(|r| r.map_err(Error::from).and_then(|d| d))
        .collect::<Result<Vec<_>>>()?;
    Ok(Page { items, total })
}

/// Appends one log entry inside a transaction, bumping the deployment's log counter.
fn insert_log(
    tx: &Transaction,
    dseq: i64,
    step: usize,
    header: Option<&str>,
    line: Option<&str>,
    ts: i64,
) -> Result<()> {
    let seq: i64 = tx
        .prepare_cached(
            "UPDATE deployments SET log_seq = log_seq + 1 WHERE seq = ?1 RETURNING log_seq",
        )?
        .query_row([dseq], |r| r.get(0))?;
    let n: Option<i64> = if header.is_some() {
        None
    } else {
        Some(
            tx.prepare_cached(
                "SELECT COALESCE(MAX(n) + 1, 0) FROM log_entries WHERE deployment_seq = ?1 AND step = ?2 AND n IS NOT NULL",
            )?
            .query_row(params![dseq, step as i64], |r| r.get(0))?,
        )
    };
    tx.prepare_cached(
        "INSERT INTO log_entries (deployment_seq, seq, step, n, ts, header, line) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![dseq, seq, step as i64, n, ts, header, line])?;
    Ok(())
}

/// The row's internal sequence, if `id` is held under `lease` in one of `statuses`.
fn held(tx: &Connection, id: Uuid, lease: &Lease, statuses: &str) -> Result<i64> {
    let sql = format!(
        "SELECT seq FROM deployments WHERE id = ?1 AND lease_owner = ?2 AND status IN ({statuses})"
    );
    tx.prepare_cached(&sql)?
        .query_row(params![id.to_string(), lease.owner], |r| r.get(0))
        .optional()?
        .ok_or_else(|| Error::conflict(format!("deployment {id} is no longer held by this worker")))
}

fn update_steps(
    tx: &Transaction,
    dseq: i64,
    f: impl FnOnce(&mut Vec<StoredStep>) -> Result<usize>,
) -> Result<usize> {
    let raw: String = tx
        .prepare_cached("SELECT steps FROM deployments WHERE seq = ?1")?
        .query_row([dseq], |r| r.get(0))?;
    let mut steps = decode_steps(&raw)?;
    let out = f(&mut steps)?;
    tx.prepare_cached("UPDATE deployments SET steps = ?2, modified = ?3 WHERE seq = ?1")?
        .execute(params![dseq, serde_json::to_string(&steps)?, now_us()])?;
    Ok(out)
}

/// Ends a deployment: terminal status, running steps closed, lease and stack slot released.
fn terminate(
    tx: &Transaction,
    dseq: i64,
    status: JobStatus,
    step_status: StepStatus,
) -> Result<()> {
    let now = now_us();
    update_steps(tx, dseq, |steps| {
        close_running(steps, step_status, now);
        Ok(0)
    })?;
    let (id, stack): (String, i64) = tx
        .prepare_cached(
            "UPDATE deployments SET status = ?2, modified = ?3, lease_owner = NULL, lease_expires = NULL \
             WHERE seq = ?1 RETURNING id, stack_id",
        )?
        .query_row(params![dseq, status.as_str(), now], |r| Ok((r.get(0)?, r.get(1)?)))?;
    tx.prepare_cached("UPDATE stacks SET active = NULL WHERE id = ?1 AND active = ?2")?
        .execute(params![stack, id])?;
    Ok(())
}

#[async_trait]
impl StackStore for SqliteStore {
    async fn create_stack(&self, stack: &StackRef) -> Result<()> {
        let stack = stack.clone();
        self.db
            .write(move |c| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                if stack_id(&tx, &stack)?.is_some() {
                    return Err(Error::conflict(format!("stack '{stack}' already exists")));
                }
                ensure_stack(&tx, &stack)?;
                tx.commit()?;
                Ok(())
            })
            .await
    }

    async fn stack_exists(&self, stack: &StackRef) -> Result<bool> {
        let stack = stack.clone();
        self.db
            .read(move |c| Ok(stack_id(c, &stack)?.is_some()))
            .await
    }

    async fn delete_stack(&self, stack: &StackRef) -> Result<()> {
        let stack = stack.clone();
        self.db
            .write(move |c| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let (id, active): (i64, Option<String>) = tx
                    .query_row(
                        "SELECT id, active FROM stacks WHERE org = ?1 AND project = ?2 AND name = ?3",
                        params![stack.org, stack.project, stack.stack],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?
                    .ok_or_else(|| Error::not_found(format!("stack '{stack}' not found")))?;
                if active.is_some() {
                    return Err(Error::conflict(format!(
                        "stack '{stack}' has a deployment in progress; cancel it or wait for it to finish"
                    )));
                }
                tx.execute("DELETE FROM stacks WHERE id = ?1", [id])?;
                tx.execute(
                    "DELETE FROM hooks WHERE scope = ?1",
                    [format!("stack/{stack}")],
                )?;
                tx.commit()?;
                Ok(())
            })
            .await
    }

    async fn get_settings(&self, stack: &StackRef) -> Result<Option<VersionedSettings>> {
        let stack = stack.clone();
        self.db
            .read(move |c| {
                let row: Option<(Option<String>, i64)> = c
                    .prepare_cached(
                        "SELECT settings, settings_version FROM stacks WHERE org = ?1 AND project = ?2 AND name = ?3",
                    )?
                    .query_row(params![stack.org, stack.project, stack.stack], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()?;
                match row {
                    Some((Some(raw), version)) => {
                        Ok(Some(VersionedSettings { settings: serde_json::from_str(&raw)?, version }))
                    }
                    _ => Ok(None),
                }
            })
            .await
    }

    async fn put_settings(&self, stack: &StackRef, settings: &Value, expected: i64) -> Result<i64> {
        let stack = stack.clone();
        let raw = serde_json::to_string(settings)?;
        self.db
            .write(move |c| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let id = ensure_stack(&tx, &stack)?;
                // The counter only grows, so a delete and re-create cannot recycle a version.
                let (current, has): (i64, bool) = tx.query_row(
                    "SELECT settings_version, settings IS NOT NULL FROM stacks WHERE id = ?1",
                    [id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?;
                let current_visible = if has { current } else { 0 };
                if current_visible != expected {
                    return Err(Error::conflict("settings changed concurrently; retry"));
                }
                let version = current + 1;
                tx.execute(
                    "UPDATE stacks SET settings = ?2, settings_version = ?3 WHERE id = ?1",
                    params![id, raw, version],
                )?;
                tx.commit()?;
                Ok(version)
            })
            .await
    }

    async fn delete_settings(&self, stack: &StackRef) -> Result<bool> {
        let stack = stack.clone();
        self.db
            .write(move |c| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let had: bool = tx
                    .query_row(
                        "SELECT settings IS NOT NULL FROM stacks WHERE org = ?1 AND project = ?2 AND name = ?3",
                        params![stack.org, stack.project, stack.stack],
                        |r| r.get(0),
                    )
                    .optional()?
                    .ok_or_else(|| Error::not_found(format!("stack '{stack}' not found")))?;
                tx.execute(
                    "UPDATE stacks SET settings = NULL WHERE org = ?1 AND project = ?2 AND name = ?3",
                    params![stack.org, stack.project, stack.stack],
                )?;
                tx.commit()?;
                Ok(had)
            })
            .await
    }

    async fn set_stack_paused(&self, stack: &StackRef, paused: bool) -> Result<()> {
        let stack = stack.clone();
        let n = self
            .db
            .write(move |c| {
                Ok(c.execute(
                    "UPDATE stacks SET paused = ?4 WHERE org = ?1 AND project = ?2 AND name = ?3",
                    params![stack.org, stack.project, stack.stack, paused],
                )?)
            })
            .await?;
        if n == 0 {
            return Err(Error::not_found("stack not found"));
        }
        self.wake_workers();
        Ok(())
    }

    async fn stack_paused(&self, stack: &StackRef) -> Result<Option<bool>> {
        let stack = stack.clone();
        self.db
            .read(move |c| {
                Ok(c.prepare_cached(
                    "SELECT paused FROM stacks WHERE org = ?1 AND project = ?2 AND name = ?3",
                )?
                .query_row(params![stack.org, stack.project, stack.stack], |r| r.get(0))
                .optional()?)
            })
            .await
    }

    async fn list_stack_settings(&self, org: &str) -> Result<Vec<(StackRef, Value)>> {
        self.stack_settings_of(org).await
    }

    async fn get_outputs(&self, stack: &StackRef) -> Result<Option<Value>> {
        let stack = stack.clone();
        self.db
            .read(move |c| {
                let row: Option<Option<String>> = c
                    .prepare_cached(
                        "SELECT outputs FROM stacks WHERE org = ?1 AND project = ?2 AND name = ?3",
                    )?
                    .query_row(params![stack.org, stack.project, stack.stack], |r| r.get(0))
                    .optional()?;
                match row {
                    None => Ok(None),
                    Some(None) => Ok(Some(Value::Object(Default::default()))),
                    Some(Some(raw)) => Ok(Some(serde_json::from_str(&raw)?)),
                }
            })
            .await
    }
}

#[async_trait]
impl OrgStore for SqliteStore {
    async fn set_org_paused(&self, org: &str, paused: bool) -> Result<()> {
        let org = org.to_string();
        self.db
            .write(move |c| {
                c.execute(
                    "INSERT INTO orgs (name, paused) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET paused = ?2",
                    params![org, paused],
                )?;
                Ok(())
            })
            .await?;
        self.wake_workers();
        Ok(())
    }

    async fn org_paused(&self, org: &str) -> Result<bool> {
        let org = org.to_string();
        self.db
            .read(move |c| {
                Ok(c.prepare_cached("SELECT paused FROM orgs WHERE name = ?1")?
                    .query_row([&org], |r| r.get(0))
                    .optional()?
                    .unwrap_or(false))
            })
            .await
    }

    async fn get_integration(&self, org: &str, kind: &str) -> Result<Option<Value>> {
        self.integration(org, kind).await
    }

    async fn put_integration(&self, org: &str, kind: &str, config: Option<&Value>) -> Result<()> {
        self.set_integration(org, kind, config).await
    }

    async fn org_state(&self, org: &str) -> Result<OrgState> {
        let org = org.to_string();
        self.db
            .read(move |c| {
                let paused: bool = c
                    .query_row("SELECT paused FROM orgs WHERE name = ?1", [&org], |r| r.get(0))
                    .optional()?
                    .unwrap_or(false);
                let mut stmt = c.prepare_cached(
                    "SELECT project || '/' || name FROM stacks WHERE org = ?1 AND paused = 1 ORDER BY project, name",
                )?;
                let paused_stacks = stmt.query_map([&org], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
                let mut counts = StatusCounts::default();
                let mut stmt = c.prepare_cached("SELECT status, COUNT(*) FROM deployments WHERE org = ?1 GROUP BY status")?;
                for row in stmt.query_map([&org], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?)))? {
                    let (status, n) = row?;
                    counts.0.insert(status.parse()?, n);
                }
                Ok(OrgState { paused, paused_stacks, counts })
            })
            .await
    }
}

fn insert_token(c: &Connection, hash: &str, org: &str, role: Role, name: &str) -> Result<()> {
    c.execute(
        "INSERT INTO tokens (hash, org, role, name, created) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![hash, org, role.as_str(), name, now_us()],
    )?;
    Ok(())
}

#[async_trait]
impl TokenStore for SqliteStore {
    async fn create_token(&self, hash: &str, org: &str, role: Role, name: &str) -> Result<()> {
        let (hash, org, name) = (hash.to_string(), org.to_string(), name.to_string());
        self.db
            .write(move |c| insert_token(c, &hash, &org, role, &name))
            .await
    }

    async fn redeem_bootstrap(
        &self,
        secret_hash: &str,
        hash: &str,
        org: &str,
        name: &str,
    ) -> Result<()> {
        let (secret_hash, hash, org, name) = (
            secret_hash.to_string(),
            hash.to_string(),
            org.to_string(),
            name.to_string(),
        );
        self.db
            .write(move |c| {
                let tx = c.transaction()?;
                let fresh = tx.execute(
                    "INSERT OR IGNORE INTO bootstrap_redeemed (secret_hash, org, redeemed) VALUES (?1, ?2, ?3)",
                    params![secret_hash, org, now_us()],
                )?;
                if fresh == 0 {
                    return Err(Error::conflict(crate::ports::BOOTSTRAP_USED));
                }
                insert_token(&tx, &hash, &org, Role::Admin, &name)?;
                tx.commit()?;
                Ok(())
            })
            .await
    }

    async fn find_token(&self, hash: &str) -> Result<Option<Principal>> {
        let hash = hash.to_string();
        self.db
            .read(move |c| {
                let row: Option<(String, String, String)> = c
                    .prepare_cached("SELECT org, role, name FROM tokens WHERE hash = ?1")?
                    .query_row([hash], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .optional()?;
                row.map(|(org, role, token_name)| {
                    Ok(Principal {
                        org,
                        role: role.parse()?,
                        token_name,
                    })
                })
                .transpose()
            })
            .await
    }

    async fn token_count(&self) -> Result<u64> {
        self.db
            .read(|c| Ok(c.query_row("SELECT COUNT(*) FROM tokens", [], |r| r.get(0))?))
            .await
    }
}

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

    async fn list_org_deployments(&self, org: &str, page: PageRequest) -> Result<Page<Deployment>> {
        let org = org.to_string();
        self.db
            .read(move |c| page_deployments(c, "d.org = ?1", &org, page))
            .await
    }

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
                        insert_log(&tx, dseq, 0, None, Some("Cancelled before it started.\n"), now_us())?;
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
        Ok(outcome)
    }
}

/// Stores a new deployment (creating its stack if needed) and returns its version, which is
/// the stack's next one.
pub(crate) fn insert_deployment(tx: &Transaction, new: &NewDeployment) -> Result<i64> {
    let sid = ensure_stack(tx, &new.stack)?;
    let version: i64 = tx
        .prepare_cached("UPDATE stacks SET last_version = last_version + 1 WHERE id = ?1 RETURNING last_version")?
        .query_row([sid], |r| r.get(0))?;
    tx.prepare_cached(
        "INSERT INTO deployments (id, stack_id, org, version, operation, status, config, initiator, \
         requested_by, skip_intermediate, created, modified) \
         VALUES (?1, ?2, ?3, ?4, ?5, 'not-started', ?6, ?7, ?8, ?9, ?10, ?10)",
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
        now_us()
    ])?;
    Ok(version)
}

/// One pass of the embedded queue inside a write transaction.
fn claim_in(tx: &Transaction, lease: &Lease) -> Result<Option<Uuid>> {
    loop {
        let candidate: Option<(i64, String, i64, bool, String)> = tx
            .prepare_cached(
                "SELECT d.seq, d.id, d.stack_id, d.skip_intermediate, d.operation \
                 FROM deployments d JOIN stacks s ON s.id = d.stack_id \
                 WHERE d.status = 'not-started' AND s.active IS NULL AND s.paused = 0 \
                   AND NOT EXISTS (SELECT 1 FROM orgs o WHERE o.name = s.org AND o.paused = 1) \
                   AND d.seq = (SELECT MIN(q.seq) FROM deployments q WHERE q.stack_id = d.stack_id AND q.status = 'not-started') \
                 ORDER BY d.seq LIMIT 1",
            )?
            .query_row([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
            .optional()?;
        let Some((dseq, id, sid, skip_intermediate, operation)) = candidate else {
            return Ok(None);
        };
        if skip_intermediate && skip_if_superseded(tx, dseq, sid, &operation)? {
            continue;
        }
        let id = stored_id(&id)?;
        take_slot(tx, dseq, sid, id, lease)?;
        return Ok(Some(id));
    }
}

/// Claims `id` if it may start now (see `RunStore::claim`).
fn claim_one(tx: &Transaction, id: Uuid, lease: &Lease) -> Result<ClaimOutcome> {
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
    let first: i64 = tx.query_row(
        "SELECT MIN(seq) FROM deployments WHERE stack_id = ?1 AND status = 'not-started'",
        [sid],
        |r| r.get(0),
    )?;
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

/// Marks a queued deployment `skipped` if a newer one of the same operation is queued behind it.
fn skip_if_superseded(tx: &Transaction, dseq: i64, sid: i64, operation: &str) -> Result<bool> {
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
        insert_log(tx, dseq, 0, None, Some(&msg), now_us())?;
        terminate(tx, dseq, JobStatus::Skipped, StepStatus::Failed)?;
    }
    Ok(newer)
}

/// `not-started` → `accepted` under `lease`, taking the stack's run slot.
fn take_slot(tx: &Transaction, dseq: i64, sid: i64, id: Uuid, lease: &Lease) -> Result<()> {
    tx.prepare_cached(
        "UPDATE deployments SET status = 'accepted', lease_owner = ?2, lease_expires = ?3, modified = ?4 WHERE seq = ?1",
    )?
    .execute(params![dseq, lease.owner, lease_expiry(lease), now_us()])?;
    tx.prepare_cached("UPDATE stacks SET active = ?2 WHERE id = ?1")?
        .execute(params![sid, id.to_string()])?;
    Ok(())
}

#[async_trait]
impl RunStore for SqliteStore {
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

    async fn claim_next(&self, lease: &Lease) -> Result<Option<Claimed>> {
        let lease = lease.clone();
        self.db
            .write(move |c| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let Some(id) = claim_in(&tx, &lease)? else {
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

    async fn mark_running(&self, id: Uuid, lease: &Lease) -> Result<()> {
        let lease = lease.clone();
        self.db
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
            .await
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

    async fn start_step(&self, id: Uuid, lease: &Lease, name: &str) -> Result<usize> {
        let (lease, name) = (lease.clone(), name.to_string());
        self.db
            .write(move |c| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let dseq = held(&tx, id, &lease, "'running'")?;
                let now = now_us();
                let idx = update_steps(&tx, dseq, |steps| {
                    steps.push(StoredStep::running(&name, now));
                    Ok(steps.len() - 1)
                })?;
                insert_log(&tx, dseq, idx, Some(&name), None, now)?;
                tx.commit()?;
                Ok(idx)
            })
            .await
    }

    async fn finish_step(
        &self,
        id: Uuid,
        lease: &Lease,
        step: usize,
        status: StepStatus,
    ) -> Result<()> {
        let lease = lease.clone();
        self.db
            .write(move |c| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let dseq = held(&tx, id, &lease, "'running'")?;
                update_steps(&tx, dseq, |steps| {
                    let s = steps
                        .get_mut(step)
                        .ok_or_else(|| Error::internal(format!("no step {step}")))?;
                    s.status = status.as_str().into();
                    s.updated = Some(now_us());
                    Ok(step)
                })?;
                tx.commit()?;
                Ok(())
            })
            .await
    }

    async fn append_logs(&self, id: Uuid, lease: &Lease, lines: &[LogLine]) -> Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let (lease, lines) = (lease.clone(), lines.to_vec());
        self.db
            .write(move |c| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let dseq = held(&tx, id, &lease, "'accepted', 'running'")?;
                for l in &lines {
                    insert_log(
                        &tx,
                        dseq,
                        l.step,
                        None,
                        Some(&l.line),
                        to_micros(l.timestamp),
                    )?;
                }
                tx.commit()?;
                Ok(())
            })
            .await
    }

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

    async fn finish(&self, id: Uuid, lease: &Lease, status: JobStatus) -> Result<()> {
        let lease = lease.clone();
        let step_status = closing_step_status(status);
        self.db
            .write(move |c| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let dseq = held(&tx, id, &lease, "'accepted', 'running'")?;
                terminate(&tx, dseq, status, step_status)?;
                tx.commit()?;
                Ok(())
            })
            .await?;
        self.wake_workers();
        Ok(())
    }

    async fn queued_before(&self, cutoff: OffsetDateTime) -> Result<Vec<QueueMessage>> {
        let cutoff = to_micros(cutoff);
        self.db
            .read(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT d.id, s.org, s.project, s.name FROM deployments d JOIN stacks s ON s.id = d.stack_id \
                     WHERE d.status = 'not-started' AND d.created < ?1 ORDER BY d.seq",
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
                         WHERE d.status = 'not-started' AND d.created < ?1",
                    )?
                    .query_map([expiry], row)?
                    .collect::<rusqlite::Result<_>>()?;
                for (dseq, _, _) in &expired {
                    insert_log(
                        &tx,
                        *dseq,
                        0,
                        None,
                        Some("The worker running this deployment stopped renewing its lease (it crashed or was killed); marked failed.\n"),
                        now,
                    )?;
                    terminate(&tx, *dseq, JobStatus::Failed, StepStatus::Failed)?;
                }
                for (dseq, _, _) in &stale {
                    insert_log(&tx, *dseq, 0, None, Some("Skipped: queued for longer than the queue allows.\n"), now)?;
                    terminate(&tx, *dseq, JobStatus::Skipped, StepStatus::Failed)?;
                }
                tx.commit()?;
                let failed = expired.into_iter().map(|e| (e, JobStatus::Failed));
                let skipped = stale.into_iter().map(|e| (e, JobStatus::Skipped));
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
            self.wake_workers();
        }
        Ok(changed)
    }
}

#[async_trait]
impl LogStore for SqliteStore {
    async fn read_logs(&self, id: Uuid, query: LogQuery) -> Result<Vec<LogEntry>> {
        self.db
            .read(move |c| {
                let map = |r: &Row| -> rusqlite::Result<LogEntry> {
                    Ok(LogEntry {
                        seq: r.get(0)?,
                        step: r.get::<_, i64>(1)? as usize,
                        timestamp: from_micros(r.get(2)?),
                        header: r.get(3)?,
                        line: r.get(4)?,
                    })
                };
                let base = "SELECT l.seq, l.step, l.ts, l.header, l.line FROM log_entries l \
                            JOIN deployments d ON d.seq = l.deployment_seq WHERE d.id = ?1";
                let entries = match query {
                    LogQuery::Stream { after, limit } => c
                        .prepare_cached(&format!("{base} AND l.seq > ?2 ORDER BY l.seq LIMIT ?3"))?
                        .query_map(params![id.to_string(), after, limit as i64], map)?
                        .collect::<rusqlite::Result<Vec<_>>>()?,
                    LogQuery::Step { step, offset, count } => c
                        .prepare_cached(&format!(
                            "{base} AND l.step = ?2 AND l.n IS NOT NULL AND l.n >= ?3 ORDER BY l.n LIMIT ?4"
                        ))?
                        .query_map(params![id.to_string(), step as i64, offset as i64, count as i64], map)?
                        .collect::<rusqlite::Result<Vec<_>>>()?,
                };
                Ok(entries)
            })
            .await
    }
}

#[async_trait]
impl SigningKeyStore for SqliteStore {
    async fn keyring(&self) -> Result<(Vec<crate::domain::keys::SigningKey>, i64)> {
        self.db
            .read(|c| {
                let row: Option<(String, i64)> = c
                    .prepare_cached("SELECT body, version FROM oidc_keyring WHERE id = 1")?
                    .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()?;
                match row {
                    Some((body, version)) => Ok((serde_json::from_str(&body)?, version)),
                    None => Ok((Vec::new(), 0)),
                }
            })
            .await
    }

    async fn put_keyring(
        &self,
        keys: &[crate::domain::keys::SigningKey],
        expected: i64,
    ) -> Result<i64> {
        let body = serde_json::to_string(keys)?;
        self.db
            .write(move |c| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let current: i64 = tx
                    .query_row("SELECT version FROM oidc_keyring WHERE id = 1", [], |r| {
                        r.get(0)
                    })
                    .optional()?
                    .unwrap_or(0);
                if current != expected {
                    return Err(Error::conflict(
                        "the signing keys were changed concurrently",
                    ));
                }
                tx.execute(
                    "INSERT INTO oidc_keyring (id, body, version) VALUES (1, ?1, ?2) \
                     ON CONFLICT (id) DO UPDATE SET body = ?1, version = ?2",
                    params![body, current + 1],
                )?;
                tx.commit()?;
                Ok(current + 1)
            })
            .await
    }
}
