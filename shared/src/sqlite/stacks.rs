//! The `StackStore` and `OrgStore` ports.

use async_trait::async_trait;
use rusqlite::{OptionalExtension, TransactionBehavior, params};
use serde_json::Value;
use time::OffsetDateTime;

use crate::domain::gitsync::{DueSync, GitSync, SyncState};
use crate::domain::stacks::{StackInfo, Tags};
use crate::domain::time_fmt::{from_micros, to_micros};
use crate::domain::*;
use crate::error::{Error, Result};
use crate::ports::*;

use super::*;

#[async_trait]
impl StackStore for SqliteStore {
    #[tracing::instrument(level = "debug", skip_all, fields(stack = %stack))]
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

    #[tracing::instrument(level = "debug", skip_all, fields(stack = %stack))]
    async fn stack_exists(&self, stack: &StackRef) -> Result<bool> {
        let stack = stack.clone();
        self.db
            .read(move |c| Ok(stack_id(c, &stack)?.is_some()))
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(stack = %stack))]
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

    #[tracing::instrument(level = "debug", skip_all, fields(stack = %stack))]
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

    #[tracing::instrument(level = "debug", skip_all, fields(stack = %stack))]
    async fn put_settings(&self, stack: &StackRef, settings: &Value, expected: i64) -> Result<i64> {
        let stack = stack.clone();
        let raw = serde_json::to_string(settings)?;
        let sync_on = matches!(GitSync::from_settings(settings), Ok(Some(_)));
        let now = to_micros(OffsetDateTime::now_utc());
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
                    "UPDATE stacks SET settings = ?2, settings_version = ?3, \
                     sync_next = CASE WHEN ?4 THEN COALESCE(sync_next, ?5) END, \
                     sync_state = CASE WHEN ?4 THEN sync_state END WHERE id = ?1",
                    params![id, raw, version, sync_on, now],
                )?;
                tx.commit()?;
                Ok(version)
            })
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(stack = %stack))]
    async fn delete_settings(&self, stack: &StackRef, expected: i64) -> Result<bool> {
        let stack = stack.clone();
        self.db
            .write(move |c| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let (version, had): (i64, bool) = tx
                    .query_row(
                        "SELECT settings_version, settings IS NOT NULL FROM stacks WHERE org = ?1 AND project = ?2 AND name = ?3",
                        params![stack.org, stack.project, stack.stack],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?
                    .ok_or_else(|| Error::not_found(format!("stack '{stack}' not found")))?;
                if (if had { version } else { 0 }) != expected {
                    return Err(Error::conflict("settings changed concurrently; retry"));
                }
                tx.execute(
                    "UPDATE stacks SET settings = NULL, sync_next = NULL, sync_state = NULL \
                     WHERE org = ?1 AND project = ?2 AND name = ?3",
                    params![stack.org, stack.project, stack.stack],
                )?;
                tx.commit()?;
                Ok(had)
            })
            .await
    }

    async fn due_syncs(&self, now: OffsetDateTime, limit: usize) -> Result<Vec<DueSync>> {
        let now = to_micros(now);
        self.db
            .read(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT org, project, name, settings, sync_state, sync_next, paused FROM stacks \
                     WHERE sync_next IS NOT NULL AND sync_next <= ?1 ORDER BY sync_next LIMIT ?2",
                )?;
                let rows = stmt.query_map(params![now, limit as i64], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, Option<String>>(3)?,
                        r.get::<_, Option<String>>(4)?,
                        r.get::<_, i64>(5)?,
                        r.get::<_, bool>(6)?,
                    ))
                })?;
                let mut out = Vec::new();
                for row in rows {
                    let (org, project, name, settings, state, next, paused) = row?;
                    out.push(DueSync {
                        stack: StackRef::new(&org, &project, &name)?,
                        settings: settings
                            .map(|s| serde_json::from_str(&s))
                            .transpose()?
                            .unwrap_or_default(),
                        state: state
                            .map(|s| serde_json::from_str(&s))
                            .transpose()?
                            .unwrap_or_default(),
                        next_check: from_micros(next),
                        paused,
                    });
                }
                Ok(out)
            })
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(stack = %stack))]
    async fn record_sync(
        &self,
        stack: &StackRef,
        expected: OffsetDateTime,
        state: &SyncState,
        next: OffsetDateTime,
    ) -> Result<bool> {
        let stack = stack.clone();
        let raw = serde_json::to_string(state)?;
        let (expected, next) = (to_micros(expected), to_micros(next));
        self.db
            .write(move |c| {
                let n = c.execute(
                    "UPDATE stacks SET sync_state = ?4, sync_next = ?5 \
                     WHERE org = ?1 AND project = ?2 AND name = ?3 AND sync_next = ?6",
                    params![stack.org, stack.project, stack.stack, raw, next, expected],
                )?;
                Ok(n == 1)
            })
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(stack = %stack))]
    async fn get_sync(&self, stack: &StackRef) -> Result<Option<(SyncState, OffsetDateTime)>> {
        let stack = stack.clone();
        self.db
            .read(move |c| {
                let row: Option<(Option<String>, Option<i64>)> = c
                    .prepare_cached(
                        "SELECT sync_state, sync_next FROM stacks WHERE org = ?1 AND project = ?2 AND name = ?3",
                    )?
                    .query_row(params![stack.org, stack.project, stack.stack], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })
                    .optional()?;
                match row {
                    Some((state, Some(next))) => Ok(Some((
                        state
                            .map(|s| serde_json::from_str(&s))
                            .transpose()?
                            .unwrap_or_default(),
                        from_micros(next),
                    ))),
                    _ => Ok(None),
                }
            })
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(stack = %stack))]
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

    #[tracing::instrument(level = "debug", skip_all, fields(stack = %stack))]
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

    #[tracing::instrument(level = "debug", skip_all, fields(stack = %stack))]
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

    #[tracing::instrument(level = "debug", skip_all, fields(stack = %stack))]
    async fn get_stack(&self, stack: &StackRef) -> Result<Option<StackInfo>> {
        let stack = stack.clone();
        self.db
            .read(move |c| {
                c.prepare_cached(&format!(
                    "SELECT {STACK_INFO_COLUMNS} FROM stacks WHERE org = ?1 AND project = ?2 AND name = ?3"
                ))?
                .query_row(params![stack.org, stack.project, stack.stack], stack_info_from_row)
                .optional()?
                .transpose()
            })
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(org))]
    async fn list_stacks(&self, org: &str) -> Result<Vec<StackInfo>> {
        let org = org.to_string();
        self.db
            .read(move |c| {
                c.prepare_cached(&format!(
                    "SELECT {STACK_INFO_COLUMNS} FROM stacks WHERE org = ?1 ORDER BY project, name"
                ))?
                .query_map([org], stack_info_from_row)?
                .map(|r| r.map_err(Error::from).and_then(|s| s))
                .collect()
            })
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(stack = %stack))]
    async fn replace_tags(&self, stack: &StackRef, tags: &Tags, expected: &Tags) -> Result<()> {
        let stack = stack.clone();
        let (tags, expected) = (
            serde_json::to_string(tags)?,
            serde_json::to_string(expected)?,
        );
        self.db
            .write(move |c| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let current: String = tx
                    .query_row(
                        "SELECT tags FROM stacks WHERE org = ?1 AND project = ?2 AND name = ?3",
                        params![stack.org, stack.project, stack.stack],
                        |r| r.get(0),
                    )
                    .optional()?
                    .ok_or_else(|| Error::not_found(format!("stack '{stack}' not found")))?;
                // Compared as maps: the stored text is this code's own serialisation.
                let same = serde_json::from_str::<Tags>(&current)?
                    == serde_json::from_str::<Tags>(&expected)?;
                if !same {
                    return Err(Error::conflict(format!(
                        "the tags of stack '{stack}' changed meanwhile"
                    )));
                }
                tx.execute(
                    "UPDATE stacks SET tags = ?4 WHERE org = ?1 AND project = ?2 AND name = ?3",
                    params![stack.org, stack.project, stack.stack, tags],
                )?;
                tx.commit()?;
                Ok(())
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

    async fn org_limit(&self, org: &str) -> Result<OrgLimit> {
        let org = org.to_string();
        self.db
            .read(move |c| {
                let max: Option<i64> = c
                    .prepare_cached("SELECT max_concurrent FROM orgs WHERE name = ?1")?
                    .query_row([&org], |r| r.get(0))
                    .optional()?
                    .flatten();
                let running: i64 = c
                    .prepare_cached(
                        "SELECT COUNT(*) FROM deployments WHERE org = ?1 AND status IN ('accepted', 'running')",
                    )?
                    .query_row([&org], |r| r.get(0))?;
                Ok(OrgLimit {
                    max_concurrent: max.map(|m| m as u32),
                    running: running as u64,
                })
            })
            .await
    }

    async fn set_org_limit(&self, org: &str, max_concurrent: Option<u32>) -> Result<()> {
        let org = org.to_string();
        self.db
            .write(move |c| {
                c.execute(
                    "INSERT INTO orgs (name, paused, max_concurrent) VALUES (?1, 0, ?2) \
                     ON CONFLICT (name) DO UPDATE SET max_concurrent = ?2",
                    params![org, max_concurrent],
                )?;
                Ok(())
            })
            .await?;
        // A raised limit may let queued deployments start.
        self.wake_workers();
        Ok(())
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

const STACK_INFO_COLUMNS: &str =
    "org, project, name, created, tags, update_seq, resource_count, active, paused";

fn stack_info_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<StackInfo>> {
    let (org, project, name): (String, String, String) = (r.get(0)?, r.get(1)?, r.get(2)?);
    let (created, tags, update_version): (i64, String, i64) = (r.get(3)?, r.get(4)?, r.get(5)?);
    let (resource_count, active, paused): (Option<i64>, Option<String>, bool) =
        (r.get(6)?, r.get(7)?, r.get(8)?);
    Ok((|| {
        Ok(StackInfo {
            stack: StackRef {
                org,
                project,
                stack: name,
            },
            created: from_micros(created),
            tags: serde_json::from_str(&tags)?,
            update_version,
            resource_count,
            active: active.map(|a| stored_id(&a)).transpose()?,
            paused,
        })
    })())
}
