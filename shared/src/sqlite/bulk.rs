//! The `BulkStore` port: `bulk_operations`, one row per request.

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};
use uuid::Uuid;

use crate::domain::bulk::BulkOperation;
use crate::error::{Error, Result};
use crate::ports::*;

use super::*;

#[async_trait]
impl BulkStore for SqliteStore {
    async fn put_bulk(&self, op: &BulkOperation) -> Result<()> {
        let (org, id, created, body) = (
            op.org.clone(),
            op.id.to_string(),
            to_micros(op.created),
            serde_json::to_string(op)?,
        );
        self.db
            .write(move |c| {
                let n = c
                    .prepare_cached(
                        "INSERT INTO bulk_operations (org, id, created, body) VALUES (?1, ?2, ?3, ?4) \
                         ON CONFLICT DO NOTHING",
                    )?
                    .execute(params![org, id, created, body])?;
                if n == 0 {
                    return Err(Error::conflict(format!("bulk request {id} exists")));
                }
                Ok(())
            })
            .await
    }

    async fn get_bulk(&self, org: &str, id: Uuid) -> Result<Option<BulkOperation>> {
        let (org, id) = (org.to_string(), id.to_string());
        let body: Option<String> =
            self.db
                .read(move |c| {
                    Ok(c.prepare_cached(
                        "SELECT body FROM bulk_operations WHERE org = ?1 AND id = ?2",
                    )?
                    .query_row(params![org, id], |r| r.get(0))
                    .optional()?)
                })
                .await?;
        body.map(|b| serde_json::from_str(&b).map_err(Error::from))
            .transpose()
    }
}
