//! Hooks, the outbox and org integrations on SQLite.

use async_trait::async_trait;
use rusqlite::{OptionalExtension, Row, TransactionBehavior, params};
use serde_json::Value;
use time::OffsetDateTime;

use super::{SqliteStore, now_us};
use crate::domain::StackRef;
use crate::domain::hooks::{Hook, HookScope};
use crate::domain::time_fmt::{from_micros, to_micros};
use crate::error::{Error, Result};
use crate::ports::{Attempt, HookStore, Outbox, OutboxMessage};

#[async_trait]
impl HookStore for SqliteStore {
    async fn create_hook(&self, scope: &HookScope, hook: &Hook) -> Result<()> {
        let (key, name, body) = (scope.key(), hook.name.clone(), serde_json::to_string(hook)?);
        self.db
            .write(move |c| {
                let n = c.execute(
                    "INSERT INTO hooks (scope, name, body, created) VALUES (?1, ?2, ?3, ?4) \
                     ON CONFLICT (scope, name) DO NOTHING",
                    params![key, name, body, now_us()],
                )?;
                if n == 0 {
                    return Err(Error::conflict(format!(
                        "a webhook named '{name}' already exists"
                    )));
                }
                Ok(())
            })
            .await
    }

    async fn list_hooks(&self, scope: &HookScope) -> Result<Vec<Hook>> {
        let key = scope.key();
        self.db
            .read(move |c| {
                let mut stmt =
                    c.prepare_cached("SELECT body FROM hooks WHERE scope = ?1 ORDER BY created")?;
                let rows = stmt.query_map([key], |r| r.get::<_, String>(0))?;
                rows.map(|r| Ok(serde_json::from_str(&r?)?)).collect()
            })
            .await
    }

    async fn get_hook(&self, scope: &HookScope, name: &str) -> Result<Option<Hook>> {
        let (key, name) = (scope.key(), name.to_string());
        self.db
            .read(move |c| {
                let body: Option<String> = c
                    .prepare_cached("SELECT body FROM hooks WHERE scope = ?1 AND name = ?2")?
                    .query_row(params![key, name], |r| r.get(0))
                    .optional()?;
                body.map(|b| Ok(serde_json::from_str(&b)?)).transpose()
            })
            .await
    }

    async fn update_hook(&self, scope: &HookScope, hook: &Hook) -> Result<()> {
        let (key, name, body) = (scope.key(), hook.name.clone(), serde_json::to_string(hook)?);
        self.db
            .write(move |c| {
                let n = c.execute(
                    "UPDATE hooks SET body = ?3 WHERE scope = ?1 AND name = ?2",
                    params![key, name, body],
                )?;
                if n == 0 {
                    return Err(Error::not_found(format!("webhook '{name}' not found")));
                }
                Ok(())
            })
            .await
    }

    async fn delete_hook(&self, scope: &HookScope, name: &str) -> Result<()> {
        let (key, name) = (scope.key(), name.to_string());
        self.db
            .write(move |c| {
                let n = c.execute(
                    "DELETE FROM hooks WHERE scope = ?1 AND name = ?2",
                    params![key, name],
                )?;
                if n == 0 {
                    return Err(Error::not_found(format!("webhook '{name}' not found")));
                }
                Ok(())
            })
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(stack = %stack))]
    async fn hooks_for_stack(&self, stack: &StackRef) -> Result<Vec<(HookScope, Hook)>> {
        let keys = (
            HookScope {
                org: stack.org.clone(),
                stack: None,
            }
            .key(),
            HookScope::for_stack(stack).key(),
        );
        self.db
            .read(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT scope, body FROM hooks WHERE scope IN (?1, ?2) ORDER BY created",
                )?;
                let rows = stmt.query_map(params![keys.0, keys.1], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                })?;
                let mut out = Vec::new();
                for row in rows {
                    let (key, body) = row?;
                    if let Some(scope) = HookScope::from_key(&key) {
                        out.push((scope, serde_json::from_str(&body)?));
                    }
                }
                Ok(out)
            })
            .await
    }
}

const MESSAGE_COLUMNS: &str = "id, org, target, kind, event, body, created, attempts";

fn message_from_row(r: &Row<'_>) -> rusqlite::Result<(OutboxMessage, u32)> {
    Ok((
        OutboxMessage {
            id: r.get(0)?,
            org: r.get(1)?,
            target: r.get(2)?,
            kind: r.get(3)?,
            event: r.get(4)?,
            body: r.get(5)?,
            created: from_micros(r.get(6)?),
        },
        r.get(7)?,
    ))
}

#[async_trait]
impl Outbox for SqliteStore {
    async fn enqueue(&self, messages: &[OutboxMessage], due: bool) -> Result<()> {
        let messages = messages.to_vec();
        self.db
            .write(move |c| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                for m in &messages {
                    tx.prepare_cached(
                        "INSERT INTO outbox (id, org, target, kind, event, body, created, due) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    )?
                    .execute(params![
                        m.id,
                        m.org,
                        m.target,
                        m.kind,
                        m.event,
                        m.body,
                        to_micros(m.created),
                        due.then(|| to_micros(m.created))
                    ])?;
                }
                tx.commit()?;
                Ok(())
            })
            .await?;
        self.outbox.notify_waiters();
        Ok(())
    }

    async fn claim_due(
        &self,
        now: OffsetDateTime,
        limit: usize,
        lease: std::time::Duration,
    ) -> Result<Vec<(OutboxMessage, u32)>> {
        let (now, until) = (to_micros(now), to_micros(now + lease));
        self.db
            .write(move |c| {
                let mut stmt = c.prepare_cached(&format!(
                    "UPDATE outbox SET due = ?2 WHERE id IN \
                     (SELECT id FROM outbox WHERE due IS NOT NULL AND due <= ?1 ORDER BY due LIMIT ?3) \
                     RETURNING {MESSAGE_COLUMNS}"
                ))?;
                let rows = stmt.query_map(params![now, until, limit as i64], message_from_row)?;
                let mut out: Vec<(OutboxMessage, u32)> = rows.collect::<rusqlite::Result<_>>()?;
                out.sort_by_key(|(m, _)| m.created);
                Ok(out)
            })
            .await
    }

    async fn record_attempt(
        &self,
        id: &str,
        attempt: &Attempt,
        next: Option<OffsetDateTime>,
    ) -> Result<()> {
        let (id, a) = (id.to_string(), attempt.clone());
        self.db
            .write(move |c| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let (n, target): (i64, String) = tx
                    .query_row(
                        "UPDATE outbox SET attempts = attempts + 1, due = ?2 WHERE id = ?1 \
                         RETURNING attempts, target",
                        params![id, next.map(to_micros)],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?
                    .ok_or_else(|| Error::not_found(format!("notification {id} not found")))?;
                tx.execute(
                    "INSERT INTO outbox_attempts (message, n, target, ts, duration_ms, request_url, \
                     request_headers, response_code, response_headers, response_body) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                    params![
                        id,
                        n,
                        target,
                        to_micros(a.timestamp),
                        a.duration_ms,
                        a.request_url,
                        a.request_headers,
                        a.response_code,
                        a.response_headers,
                        a.response_body
                    ],
                )?;
                tx.commit()?;
                Ok(())
            })
            .await?;
        if next.is_some() {
            self.outbox.notify_waiters();
        }
        Ok(())
    }

    async fn reschedule(&self, id: &str, next: Option<OffsetDateTime>) -> Result<()> {
        let id = id.to_string();
        self.db
            .write(move |c| {
                c.execute(
                    "UPDATE outbox SET attempts = attempts + 1, due = ?2 WHERE id = ?1",
                    params![id, next.map(to_micros)],
                )?;
                Ok(())
            })
            .await
    }

    async fn finish(&self, id: &str) -> Result<()> {
        let id = id.to_string();
        self.db
            .write(move |c| {
                c.execute("UPDATE outbox SET due = NULL WHERE id = ?1", [id])?;
                Ok(())
            })
            .await
    }

    async fn prune_done(&self, before: OffsetDateTime) -> Result<usize> {
        let before = to_micros(before);
        self.db
            .write(move |c| {
                Ok(c.execute(
                    "DELETE FROM outbox WHERE due IS NULL AND created < ?1",
                    [before],
                )?)
            })
            .await
    }

    async fn message(&self, id: &str) -> Result<Option<(OutboxMessage, u32)>> {
        let id = id.to_string();
        self.db
            .read(move |c| {
                Ok(c.prepare_cached(&format!(
                    "SELECT {MESSAGE_COLUMNS} FROM outbox WHERE id = ?1"
                ))?
                .query_row([id], message_from_row)
                .optional()?)
            })
            .await
    }

    async fn attempts(
        &self,
        target: &str,
        limit: usize,
    ) -> Result<Vec<(OutboxMessage, Attempt, u32)>> {
        let target = target.to_string();
        self.db
            .read(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT o.id, o.org, o.target, o.kind, o.event, o.body, o.created, o.attempts, \
                     a.ts, a.duration_ms, a.request_url, a.request_headers, a.response_code, \
                     a.response_headers, a.response_body, a.n \
                     FROM outbox_attempts a JOIN outbox o ON o.id = a.message \
                     WHERE a.target = ?1 ORDER BY a.ts DESC, a.n DESC LIMIT ?2",
                )?;
                let rows = stmt.query_map(params![target, limit as i64], |r| {
                    let (m, _) = message_from_row(r)?;
                    Ok((
                        m,
                        Attempt {
                            timestamp: from_micros(r.get(8)?),
                            duration_ms: r.get(9)?,
                            request_url: r.get(10)?,
                            request_headers: r.get(11)?,
                            response_code: r.get(12)?,
                            response_headers: r.get(13)?,
                            response_body: r.get(14)?,
                        },
                        r.get(15)?,
                    ))
                })?;
                Ok(rows.collect::<rusqlite::Result<_>>()?)
            })
            .await
    }
}

/// Integrations and listing stacks' settings.
impl SqliteStore {
    pub(super) async fn integration(&self, org: &str, kind: &str) -> Result<Option<Value>> {
        let (org, kind) = (org.to_string(), kind.to_string());
        self.db
            .read(move |c| {
                let raw: Option<String> = c
                    .prepare_cached(
                        "SELECT config FROM org_integrations WHERE org = ?1 AND kind = ?2",
                    )?
                    .query_row(params![org, kind], |r| r.get(0))
                    .optional()?;
                raw.map(|r| Ok(serde_json::from_str(&r)?)).transpose()
            })
            .await
    }

    pub(super) async fn set_integration(
        &self,
        org: &str,
        kind: &str,
        config: Option<&Value>,
    ) -> Result<()> {
        let (org, kind) = (org.to_string(), kind.to_string());
        let config = config.map(serde_json::to_string).transpose()?;
        self.db
            .write(move |c| {
                match config {
                    Some(cfg) => c.execute(
                        "INSERT INTO org_integrations (org, kind, config) VALUES (?1, ?2, ?3) \
                         ON CONFLICT (org, kind) DO UPDATE SET config = ?3",
                        params![org, kind, cfg],
                    )?,
                    None => c.execute(
                        "DELETE FROM org_integrations WHERE org = ?1 AND kind = ?2",
                        params![org, kind],
                    )?,
                };
                Ok(())
            })
            .await
    }

    pub(super) async fn stack_settings_of(&self, org: &str) -> Result<Vec<(StackRef, Value)>> {
        let org = org.to_string();
        self.db
            .read(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT org, project, name, settings FROM stacks \
                     WHERE org = ?1 AND settings IS NOT NULL ORDER BY project, name",
                )?;
                let rows = stmt.query_map([org], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                    ))
                })?;
                let mut out = Vec::new();
                for row in rows {
                    let (o, p, s, settings) = row?;
                    out.push((
                        StackRef {
                            org: o,
                            project: p,
                            stack: s,
                        },
                        serde_json::from_str(&settings)?,
                    ));
                }
                Ok(out)
            })
            .await
    }
}
