//! The `IdempotencyStore` port: item `IDEM#{org}#{key}` / `#IDEM` with the request's
//! `fingerprint`, once it ended its `status`, `content_type` and `body`, and `expires_at`
//! (microseconds: when a running request's hold ends or a kept response is forgotten). The
//! table's TTL (`expires`, seconds) removes the item some time after; until then an expired
//! item counts as absent.

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use time::OffsetDateTime;

use super::*;
use crate::aws::item::*;
use crate::error::{Error, Result};
use crate::ports::*;

fn idem_key(org: &str, key: &str) -> Item {
    super::key(format!("IDEM#{org}#{key}"), "#IDEM")
}

#[async_trait]
impl IdempotencyStore for DynamoStore {
    async fn start(
        &self,
        org: &str,
        key: &str,
        fingerprint: &str,
        now: OffsetDateTime,
        hold: std::time::Duration,
    ) -> Result<IdempotentStart> {
        for _ in 0..3 {
            let until = now + hold;
            let mut item = idem_key(org, key);
            item.insert("fingerprint".into(), s(fingerprint));
            item.insert("expires_at".into(), n(to_micros(until)));
            item.insert("expires".into(), n(until.unix_timestamp()));
            let mut tx = self.tx();
            tx.put(
                item,
                Some("attribute_not_exists(pk) OR #expires_at < :now"),
                vec![(":now", n(to_micros(now)))],
            );
            if self.commit(tx).await?.is_ok() {
                return Ok(IdempotentStart::Run);
            }
            let Some(found) = self.get(idem_key(org, key)).await? else {
                continue; // forgotten meanwhile: take it
            };
            if opt_n(&found, "expires_at").is_some_and(|e| e < to_micros(now)) {
                continue;
            }
            if get_s(&found, "fingerprint")? != fingerprint {
                return Ok(IdempotentStart::Mismatch);
            }
            return Ok(match opt_n(&found, "status") {
                None => IdempotentStart::InProgress,
                Some(status) => IdempotentStart::Replay(KeptResponse {
                    status: u16::try_from(status)
                        .map_err(|_| Error::internal("a kept status is not an HTTP status"))?,
                    content_type: opt_s(&found, "content_type"),
                    body: match found.get("body") {
                        Some(AttributeValue::B(b)) => b.clone().into_inner(),
                        _ => Vec::new(),
                    },
                }),
            });
        }
        Err(Error::conflict(
            "the Idempotency-Key is being taken concurrently; retry",
        ))
    }

    async fn keep(
        &self,
        org: &str,
        key: &str,
        fingerprint: &str,
        response: &KeptResponse,
        expires: OffsetDateTime,
    ) -> Result<()> {
        let mut vals = vec![
            (":fp", s(fingerprint)),
            (":status", n(i64::from(response.status))),
            (":body", AttributeValue::B(response.body.clone().into())),
            (":at", n(to_micros(expires))),
            (":ttl", n(expires.unix_timestamp())),
        ];
        let mut set =
            "SET #status = :status, #body = :body, #expires_at = :at, #expires = :ttl".to_string();
        if let Some(ct) = &response.content_type {
            set.push_str(", #content_type = :ct");
            vals.push((":ct", s(ct)));
        }
        let mut tx = self.tx();
        tx.update(
            idem_key(org, key),
            &set,
            Some("#fingerprint = :fp AND attribute_not_exists(#status)"),
            vals,
        );
        // Lost (its hold expired and another request took the key): nothing to keep.
        let _ = self.commit(tx).await?;
        Ok(())
    }

    async fn release(&self, org: &str, key: &str, fingerprint: &str) -> Result<()> {
        let mut tx = self.tx();
        tx.delete_if(
            idem_key(org, key),
            Some("#fingerprint = :fp AND attribute_not_exists(#status)"),
            vec![(":fp", s(fingerprint))],
        );
        let _ = self.commit(tx).await?;
        Ok(())
    }
}
