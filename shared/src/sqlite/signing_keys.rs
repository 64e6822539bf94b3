//! The `SigningKeyStore` port: the OIDC keyring, one row.

use async_trait::async_trait;
use rusqlite::{OptionalExtension, TransactionBehavior, params};

use crate::error::{Error, Result};
use crate::ports::*;

use super::*;

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
