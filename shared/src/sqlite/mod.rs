//! The embedded adapters: every port on one SQLite file. Production code for `tarmac serve`.

mod audit;
mod bulk;
mod db;
mod deployments;
mod idempotency;
mod logs;
mod notifications;
mod pools;
mod runs;
mod schedules;
mod schema;
mod signing_keys;
mod stacks;
mod tokens;

use std::path::Path;
use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};
use time::OffsetDateTime;
use tokio::sync::Notify;
use uuid::Uuid;

pub(crate) use db::Db;

use crate::domain::time_fmt::{from_micros, to_micros};
use crate::domain::*;
use crate::error::{Error, Result};
use crate::store_codec::{StoredStep, close_running, decode_steps, stored_id, to_domain_steps};

/// Every port, on one SQLite database.
#[derive(Clone)]
pub struct SqliteStore {
    db: Arc<Db>,
    work: Arc<Notify>,
    outbox: Arc<Notify>,
    runs: Arc<Notify>,
}

impl SqliteStore {
    pub fn open(path: &Path) -> Result<Self> {
        Ok(Self {
            db: Db::open(path)?,
            work: Arc::new(Notify::new()),
            outbox: Arc::new(Notify::new()),
            runs: Arc::new(Notify::new()),
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

    /// Signalled whenever a deployment's run changed: a status, a step, log lines (what live
    /// log streams wait on).
    pub fn run_signal(&self) -> Arc<Notify> {
        Arc::clone(&self.runs)
    }

    pub(crate) fn run_changed(&self) {
        self.runs.notify_waiters();
    }

    pub(crate) fn wake_workers(&self) {
        self.work.notify_waiters();
    }
}

pub(super) fn now_us() -> i64 {
    to_micros(OffsetDateTime::now_utc())
}

pub(super) fn lease_expiry(lease: &Lease) -> i64 {
    now_us() + lease.ttl.as_micros() as i64
}

pub(super) fn stack_id(conn: &Connection, stack: &StackRef) -> Result<Option<i64>> {
    Ok(conn
        .prepare_cached("SELECT id FROM stacks WHERE org = ?1 AND project = ?2 AND name = ?3")?
        .query_row(params![stack.org, stack.project, stack.stack], |r| r.get(0))
        .optional()?)
}

pub(super) fn ensure_stack(tx: &Transaction<'_>, stack: &StackRef) -> Result<i64> {
    if let Some(id) = stack_id(tx, stack)? {
        return Ok(id);
    }
    tx.prepare_cached("INSERT INTO stacks (org, project, name, created) VALUES (?1, ?2, ?3, ?4)")?
        .execute(params![stack.org, stack.project, stack.stack, now_us()])?;
    Ok(tx.last_insert_rowid())
}

pub(super) const DEPLOYMENT_COLUMNS: &str = "d.id, s.org, s.project, s.name, d.version, s.last_version, \
    d.operation, d.status, d.config, d.initiator, d.requested_by, d.created, d.modified, \
    d.started, d.steps, s.paused, d.update_info, d.approval";

pub(super) fn deployment_from_row(r: &Row<'_>) -> rusqlite::Result<Result<Deployment>> {
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
    let update: Option<String> = r.get(16)?;
    let approval: Option<String> = r.get(17)?;
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
            update: update.map(|u| serde_json::from_str(&u)).transpose()?,
            approval: approval.map(|a| serde_json::from_str(&a)).transpose()?,
        })
    })())
}

pub(super) fn query_deployment(
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

pub(super) fn page_deployments(
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
/// What a log entry holds: a step's header, a line of output, or an engine event.
#[derive(Debug, Clone, Copy)]
pub(super) enum Entry<'a> {
    Header(&'a str),
    Line(&'a str),
    Event(&'a str),
}

pub(super) fn insert_log(
    tx: &Transaction<'_>,
    dseq: i64,
    step: usize,
    entry: Entry<'_>,
    ts: i64,
) -> Result<()> {
    let (header, line, event) = match entry {
        Entry::Header(h) => (Some(h), None, None),
        Entry::Line(l) => (None, Some(l), None),
        Entry::Event(e) => (None, None, Some(e)),
    };
    let seq: i64 = tx
        .prepare_cached(
            "UPDATE deployments SET log_seq = log_seq + 1 WHERE seq = ?1 RETURNING log_seq",
        )?
        .query_row([dseq], |r| r.get(0))?;
    // Lines are numbered within their step (step-mode reads); headers and events are not.
    let n: Option<i64> = if line.is_none() {
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
        "INSERT INTO log_entries (deployment_seq, seq, step, n, ts, header, line, event) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![dseq, seq, step as i64, n, ts, header, line, event])?;
    Ok(())
}

/// The row's internal sequence, if `id` is held under `lease` in one of `statuses`.
pub(super) fn held(tx: &Connection, id: Uuid, lease: &Lease, statuses: &str) -> Result<i64> {
    let sql = format!(
        "SELECT seq FROM deployments WHERE id = ?1 AND lease_owner = ?2 AND status IN ({statuses})"
    );
    tx.prepare_cached(&sql)?
        .query_row(params![id.to_string(), lease.owner], |r| r.get(0))
        .optional()?
        .ok_or_else(|| Error::conflict(format!("deployment {id} is no longer held by this worker")))
}

pub(super) fn update_steps(
    tx: &Transaction<'_>,
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
pub(super) fn terminate(
    tx: &Transaction<'_>,
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
            "UPDATE deployments SET status = ?2, modified = ?3, lease_owner = NULL, lease_expires = NULL, \
             approval_expires = NULL WHERE seq = ?1 RETURNING id, stack_id",
        )?
        .query_row(params![dseq, status.as_str(), now], |r| Ok((r.get(0)?, r.get(1)?)))?;
    tx.prepare_cached("UPDATE stacks SET active = NULL WHERE id = ?1 AND active = ?2")?
        .execute(params![stack, id])?;
    Ok(())
}
