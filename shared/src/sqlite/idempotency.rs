//! The `IdempotencyStore` port: one row per org and key, holding the request's fingerprint and,
//! once it ended, its response. `expires` is when a running request's hold ends, or when a kept
//! response is forgotten; an expired row counts as absent and is pruned on the next start.

use async_trait::async_trait;
use rusqlite::{OptionalExtension, TransactionBehavior, params};
use time::OffsetDateTime;

use crate::error::Result;
use crate::ports::*;

use super::*;

#[async_trait]
impl IdempotencyStore for SqliteStore {
    async fn start(
        &self,
        org: &str,
        key: &str,
        fingerprint: &str,
        now: OffsetDateTime,
        hold: std::time::Duration,
    ) -> Result<IdempotentStart> {
        let (org, key, fp) = (org.to_string(), key.to_string(), fingerprint.to_string());
        let (now, until) = (to_micros(now), to_micros(now + hold));
        self.db
            .write(move |c| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                tx.execute("DELETE FROM idempotency_keys WHERE expires < ?1", [now])?;
                type Row = (String, Option<u16>, Option<String>, Option<Vec<u8>>);
                let row: Option<Row> = tx
                    .query_row(
                        "SELECT fingerprint, status, content_type, body FROM idempotency_keys \
                         WHERE org = ?1 AND key = ?2",
                        params![org, key],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                    )
                    .optional()?;
                let start = match row {
                    None => {
                        tx.execute(
                            "INSERT INTO idempotency_keys (org, key, fingerprint, expires) \
                             VALUES (?1, ?2, ?3, ?4)",
                            params![org, key, fp, until],
                        )?;
                        IdempotentStart::Run
                    }
                    Some((stored, _, _, _)) if stored != fp => IdempotentStart::Mismatch,
                    Some((_, None, _, _)) => IdempotentStart::InProgress,
                    Some((_, Some(status), content_type, body)) => {
                        IdempotentStart::Replay(KeptResponse {
                            status,
                            content_type,
                            body: body.unwrap_or_default(),
                        })
                    }
                };
                tx.commit()?;
                Ok(start)
            })
            .await
    }

    async fn keep(
        &self,
        org: &str,
        key: &str,
        fingerprint: &str,
        response: &KeptResponse,
        expires: OffsetDateTime,
    ) -> Result<()> {
        let (org, key, fp, r) = (
            org.to_string(),
            key.to_string(),
            fingerprint.to_string(),
            response.clone(),
        );
        self.db
            .write(move |c| {
                c.execute(
                    "UPDATE idempotency_keys SET status = ?4, content_type = ?5, body = ?6, expires = ?7 \
                     WHERE org = ?1 AND key = ?2 AND fingerprint = ?3 AND status IS NULL",
                    params![org, key, fp, r.status, r.content_type, r.body, to_micros(expires)],
                )?;
                Ok(())
            })
            .await
    }

    async fn release(&self, org: &str, key: &str, fingerprint: &str) -> Result<()> {
        let (org, key, fp) = (org.to_string(), key.to_string(), fingerprint.to_string());
        self.db
            .write(move |c| {
                c.execute(
                    "DELETE FROM idempotency_keys \
                     WHERE org = ?1 AND key = ?2 AND fingerprint = ?3 AND status IS NULL",
                    params![org, key, fp],
                )?;
                Ok(())
            })
            .await
    }
}
