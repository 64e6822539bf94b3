//! The `AgentPoolStore` port.

use async_trait::async_trait;
use rusqlite::{OptionalExtension, Row, TransactionBehavior, params};

use crate::domain::pools::{AgentInfo, AgentPool, POOL_DELETED_REASON, PoolDeleted};
use crate::domain::*;
use crate::error::{Error, Result};
use crate::ports::*;

use super::*;

const POOL_COLUMNS: &str = "id, org, name, description, created";

fn pool_row(r: &Row<'_>) -> rusqlite::Result<AgentPool> {
    Ok(AgentPool {
        id: r.get(0)?,
        org: r.get(1)?,
        name: r.get(2)?,
        description: r.get(3)?,
        created: from_micros(r.get(4)?),
    })
}

#[async_trait]
impl AgentPoolStore for SqliteStore {
    async fn create_pool(&self, pool: &AgentPool, token_hash: &str) -> Result<()> {
        let (pool, hash) = (pool.clone(), token_hash.to_string());
        self.db
            .write(move |c| {
                c.execute(
                    "INSERT INTO agent_pools (id, org, name, description, token_hash, created) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![
                        pool.id,
                        pool.org,
                        pool.name,
                        pool.description,
                        hash,
                        to_micros(pool.created)
                    ],
                )?;
                Ok(())
            })
            .await
    }

    async fn get_pool(&self, org: &str, id: &str) -> Result<Option<AgentPool>> {
        let (org, id) = (org.to_string(), id.to_string());
        self.db
            .read(move |c| {
                Ok(c.prepare_cached(&format!(
                    "SELECT {POOL_COLUMNS} FROM agent_pools WHERE org = ?1 AND id = ?2"
                ))?
                .query_row(params![org, id], pool_row)
                .optional()?)
            })
            .await
    }

    async fn list_pools(&self, org: &str) -> Result<Vec<AgentPool>> {
        let org = org.to_string();
        self.db
            .read(move |c| {
                Ok(c.prepare_cached(&format!(
                    "SELECT {POOL_COLUMNS} FROM agent_pools WHERE org = ?1 ORDER BY created, id"
                ))?
                .query_map([org], pool_row)?
                .collect::<rusqlite::Result<_>>()?)
            })
            .await
    }

    async fn update_pool(&self, pool: &AgentPool) -> Result<()> {
        let pool = pool.clone();
        self.db
            .write(move |c| {
                let n = c.execute(
                    "UPDATE agent_pools SET name = ?3, description = ?4 WHERE org = ?1 AND id = ?2",
                    params![pool.org, pool.id, pool.name, pool.description],
                )?;
                if n == 0 {
                    return Err(Error::not_found(format!(
                        "agent pool '{}' not found",
                        pool.id
                    )));
                }
                Ok(())
            })
            .await
    }

    async fn delete_pool(&self, org: &str, id: &str, force: bool) -> Result<PoolDeleted> {
        let (org, id) = (org.to_string(), id.to_string());
        let deleted = self
            .db
            .write(move |c| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let exists: Option<i64> = tx
                    .query_row(
                        "SELECT 1 FROM agent_pools WHERE org = ?1 AND id = ?2",
                        params![org, id],
                        |r| r.get(0),
                    )
                    .optional()?;
                if exists.is_none() {
                    return Err(Error::not_found(format!("agent pool '{id}' not found")));
                }
                let live: Vec<(i64, String, String, String, String, String)> = tx
                    .prepare(
                        "SELECT d.seq, d.id, d.status, s.org, s.project, s.name \
                         FROM deployments d JOIN stacks s ON s.id = d.stack_id \
                         WHERE d.agent_pool = ?1 AND d.status IN ('not-started', 'accepted', 'running') \
                         ORDER BY d.seq",
                    )?
                    .query_map([&id], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
                    })?
                    .collect::<rusqlite::Result<_>>()?;
                if !live.is_empty() && !force {
                    return Err(Error::conflict(format!(
                        "agent pool '{id}' has {} queued or running deployment(s); cancel them, or delete with force=true to fail them",
                        live.len()
                    )));
                }
                let mut out = PoolDeleted::default();
                for (dseq, did, status, org, project, stack) in live {
                    if status == JobStatus::NotStarted.as_str() {
                        let line = format!("{POOL_DELETED_REASON}\n");
                        insert_log(&tx, dseq, 0, Entry::Line(&line), now_us())?;
                        terminate(&tx, dseq, JobStatus::Failed, StepStatus::Failed)?;
                        out.failed.push((StackRef::new(&org, &project, &stack)?, stored_id(&did)?));
                    } else {
                        tx.execute(
                            "UPDATE deployments SET cancel_requested = 1 WHERE seq = ?1",
                            [dseq],
                        )?;
                        out.cancelled += 1;
                    }
                }
                tx.execute("DELETE FROM agent_pools WHERE id = ?1", [&id])?;
                tx.commit()?;
                Ok(out)
            })
            .await?;
        self.run_changed();
        Ok(deleted)
    }

    async fn find_pool_by_token(&self, token_hash: &str) -> Result<Option<AgentPool>> {
        let hash = token_hash.to_string();
        self.db
            .read(move |c| {
                Ok(c.prepare_cached(&format!(
                    "SELECT {POOL_COLUMNS} FROM agent_pools WHERE token_hash = ?1"
                ))?
                .query_row([hash], pool_row)
                .optional()?)
            })
            .await
    }

    async fn touch_agent(&self, pool: &AgentPool, agent: &AgentInfo) -> Result<()> {
        let (pool, a) = (pool.id.clone(), agent.clone());
        self.db
            .write(move |c| {
                c.prepare_cached(
                    "INSERT INTO agents (pool, id, version, platform, hostname, ip, pid, last_seen) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
                     ON CONFLICT (pool, id) DO UPDATE SET version = ?3, platform = ?4, \
                     hostname = ?5, ip = ?6, pid = ?7, last_seen = ?8",
                )?
                .execute(params![
                    pool,
                    a.id,
                    a.version,
                    a.platform,
                    a.hostname,
                    a.ip,
                    a.pid,
                    to_micros(a.last_seen)
                ])?;
                Ok(())
            })
            .await
    }

    async fn agent_seen(
        &self,
        pool: &AgentPool,
        agent_id: &str,
        at: time::OffsetDateTime,
    ) -> Result<()> {
        let (pool, id) = (pool.id.clone(), agent_id.to_string());
        self.db
            .write(move |c| {
                c.prepare_cached("UPDATE agents SET last_seen = ?3 WHERE pool = ?1 AND id = ?2")?
                    .execute(params![pool, id, to_micros(at)])?;
                Ok(())
            })
            .await
    }

    async fn list_agents(&self, pool: &AgentPool) -> Result<Vec<AgentInfo>> {
        let pool = pool.id.clone();
        self.db
            .read(move |c| {
                Ok(c.prepare_cached(
                    "SELECT id, version, platform, hostname, ip, pid, last_seen FROM agents \
                     WHERE pool = ?1 ORDER BY last_seen DESC, id",
                )?
                .query_map([pool], |r| {
                    Ok(AgentInfo {
                        id: r.get(0)?,
                        version: r.get(1)?,
                        platform: r.get(2)?,
                        hostname: r.get(3)?,
                        ip: r.get(4)?,
                        pid: r.get(5)?,
                        last_seen: from_micros(r.get(6)?),
                    })
                })?
                .collect::<rusqlite::Result<_>>()?)
            })
            .await
    }
}
