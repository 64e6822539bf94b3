//! The `BulkStore` port: a bulk request under `BULK#{org}#{id}`, its items in chunks of 500
//! (`CHUNK#{n}`, each well under DynamoDB's 400 KB item limit), written in transactions of at
//! most 100 items, the last one with the header (`HEAD`): a reader sees a request whole or not
//! at all.

use async_trait::async_trait;
use uuid::Uuid;

use super::*;
use crate::aws::item::*;
use crate::domain::bulk::{BulkItem, BulkOperation};
use crate::error::{Error, Result};
use crate::ports::*;

fn bulk_pk(org: &str, id: Uuid) -> String {
    format!("BULK#{org}#{id}")
}

const CHUNK_ITEMS: usize = 500;
const HEAD: &str = "HEAD";

#[async_trait]
impl BulkStore for DynamoStore {
    async fn put_bulk(&self, op: &BulkOperation) -> Result<()> {
        let pk = bulk_pk(&op.org, op.id);
        let chunks: Vec<&[BulkItem]> = op.items.chunks(CHUNK_ITEMS).collect();
        // 10,000 items make 20 chunks: one transaction.
        let mut tx = self.tx();
        for (n, chunk) in chunks.iter().enumerate() {
            let mut item = key(&pk, format!("CHUNK#{n:05}"));
            item.insert("items".into(), s(serde_json::to_string(chunk)?));
            tx.put(item, Some("attribute_not_exists(pk)"), vec![]);
        }
        let mut head = key(&pk, HEAD);
        let header = BulkOperation {
            items: vec![],
            ..op.clone()
        };
        head.insert("body".into(), s(serde_json::to_string(&header)?));
        head.insert("chunks".into(), n(chunks.len() as i64));
        tx.put(head, Some("attribute_not_exists(pk)"), vec![]);
        self.commit(tx)
            .await?
            .map_err(|_| Error::conflict(format!("bulk request {} exists", op.id)))
    }

    async fn get_bulk(&self, org: &str, id: Uuid) -> Result<Option<BulkOperation>> {
        let pk = bulk_pk(org, id);
        let Some(head) = self.get(key(&pk, HEAD)).await? else {
            return Ok(None);
        };
        let mut op: BulkOperation = serde_json::from_str(&get_s(&head, "body")?)?;
        let chunks = self
            .query(
                None,
                "pk = :pk AND begins_with(sk, :chunk)",
                vec![(":pk", s(&pk)), (":chunk", s("CHUNK#"))],
                true,
                None,
            )
            .await?;
        if chunks.len() as i64 != get_n(&head, "chunks")? {
            return Err(Error::internal(format!(
                "bulk request {id} is missing chunks"
            )));
        }
        for c in chunks {
            let items: Vec<BulkItem> = serde_json::from_str(&get_s(&c, "items")?)?;
            op.items.extend(items);
        }
        Ok(Some(op))
    }
}
