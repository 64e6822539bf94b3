//! The `AuditLog` port: `audit_log`, whose triggers refuse any update or delete.

use async_trait::async_trait;
use rusqlite::params;
use time::OffsetDateTime;

use crate::error::{Error, Result};
use crate::ports::*;

use super::*;

#[async_trait]
impl AuditLog for SqliteStore {
    async fn append(&self, e: &AuditEvent) -> Result<()> {
        let e = e.clone();
        self.db
            .write(move |c| {
                c.prepare_cached(
                    "INSERT INTO audit_log (id, org, ts, token_id, token_name, admin, method, route, \
                     path, status, source_ip, user_agent) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                )?
                .execute(params![
                    e.id.to_string(),
                    e.org,
                    to_micros(e.timestamp),
                    e.token_id,
                    e.token_name,
                    e.admin,
                    e.method,
                    e.route,
                    e.path,
                    e.status,
                    e.source_ip,
                    e.user_agent
                ])?;
                Ok(())
            })
            .await
    }

    async fn events(
        &self,
        org: &str,
        since: OffsetDateTime,
        until: OffsetDateTime,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<AuditEvent>, Option<String>)> {
        let before: Option<i64> = match cursor {
            None => None,
            Some(c) => Some(
                c.parse()
                    .map_err(|_| Error::invalid("continuationToken is not one this server gave"))?,
            ),
        };
        let org = org.to_string();
        let (since, until) = (to_micros(since), to_micros(until));
        self.db
            .read(move |c| {
                let rows: Vec<(i64, AuditEvent)> = c
                    .prepare_cached(
                        "SELECT seq, id, org, ts, token_id, token_name, admin, method, route, path, \
                         status, source_ip, user_agent FROM audit_log \
                         WHERE org = ?1 AND ts >= ?2 AND ts < ?3 AND (?4 IS NULL OR seq < ?4) \
                         ORDER BY seq DESC LIMIT ?5",
                    )?
                    .query_map(params![org, since, until, before, limit as i64 + 1], |r| {
                        Ok((
                            r.get(0)?,
                            AuditEvent {
                                id: r.get::<_, String>(1)?.parse().unwrap_or_default(),
                                org: r.get(2)?,
                                timestamp: from_micros(r.get(3)?),
                                token_id: r.get(4)?,
                                token_name: r.get(5)?,
                                admin: r.get(6)?,
                                method: r.get(7)?,
                                route: r.get(8)?,
                                path: r.get(9)?,
                                status: r.get(10)?,
                                source_ip: r.get(11)?,
                                user_agent: r.get(12)?,
                            },
                        ))
                    })?
                    .collect::<rusqlite::Result<_>>()?;
                let more = rows.len() > limit;
                let page: Vec<(i64, AuditEvent)> = rows.into_iter().take(limit).collect();
                let next = more.then(|| page.last().map(|(seq, _)| seq.to_string())).flatten();
                Ok((page.into_iter().map(|(_, e)| e).collect(), next))
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_log_refuses_updates_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("t.db")).unwrap();
        let e = AuditEvent {
            id: uuid::Uuid::new_v4(),
            org: "o".into(),
            timestamp: OffsetDateTime::now_utc(),
            token_id: "t".into(),
            token_name: "n".into(),
            admin: true,
            method: "POST".into(),
            route: "/r".into(),
            path: "/r".into(),
            status: 200,
            source_ip: "127.0.0.1".into(),
            user_agent: "ua".into(),
        };
        store.append(&e).await.unwrap();
        for sql in ["UPDATE audit_log SET status = 500", "DELETE FROM audit_log"] {
            let refused = store
                .db
                .write(move |c| Ok(c.execute(sql, [])?))
                .await
                .unwrap_err();
            assert!(refused.chain().contains("append-only"), "{refused:?}");
        }
    }
}
