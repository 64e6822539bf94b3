//! The `AuditLog` port: items `AUDIT#{org}` / `{time, 20 digits}#{id}`, written once with a
//! condition that they are new; queried backwards by time.

use async_trait::async_trait;
use time::OffsetDateTime;

use super::*;
use crate::aws::item::*;
use crate::domain::time_fmt::from_micros;
use crate::error::{Error, Result};
use crate::ports::*;

fn audit_pk(org: &str) -> String {
    format!("AUDIT#{org}")
}

#[async_trait]
impl AuditLog for DynamoStore {
    async fn append(&self, e: &AuditEvent) -> Result<()> {
        let mut item = key(
            audit_pk(&e.org),
            format!("{}#{}", pad(to_micros(e.timestamp)), e.id),
        );
        for (k, v) in [
            ("id", e.id.to_string()),
            ("org", e.org.clone()),
            ("token_id", e.token_id.clone()),
            ("token_name", e.token_name.clone()),
            ("method", e.method.clone()),
            ("route", e.route.clone()),
            ("path", e.path.clone()),
            ("source_ip", e.source_ip.clone()),
            ("user_agent", e.user_agent.clone()),
        ] {
            item.insert(k.into(), s(v));
        }
        item.insert("ts".into(), n(to_micros(e.timestamp)));
        item.insert("status".into(), n(i64::from(e.status)));
        item.insert("admin".into(), b(e.admin));
        let mut tx = self.tx();
        tx.put(item, Some("attribute_not_exists(pk)"), vec![]);
        self.commit(tx)
            .await?
            .map_err(|_| Error::internal("an audit event with this id exists"))
    }

    async fn events(
        &self,
        org: &str,
        since: OffsetDateTime,
        until: OffsetDateTime,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<AuditEvent>, Option<String>)> {
        // Newest first, below `until` (or the cursor, the last key a page returned).
        let below = match cursor {
            Some(c) if c.len() > 21 && c.as_bytes()[20] == b'#' => c.to_string(),
            Some(_) => {
                return Err(Error::invalid(
                    "continuationToken is not one this server gave",
                ));
            }
            None => pad(to_micros(until)),
        };
        let floor = pad(to_micros(since));
        let items = self
            .query(
                None,
                "pk = :pk AND sk < :below",
                vec![(":pk", s(audit_pk(org))), (":below", s(&below))],
                false,
                Some(limit + 1),
            )
            .await?;
        let mut out = Vec::new();
        let mut last = None;
        for it in items.iter() {
            let sk = get_s(it, "sk")?;
            if sk < floor {
                break;
            }
            if out.len() == limit {
                return Ok((out, last));
            }
            out.push(AuditEvent {
                id: get_s(it, "id")?.parse().unwrap_or_default(),
                org: get_s(it, "org")?,
                timestamp: from_micros(get_n(it, "ts")?),
                token_id: get_s(it, "token_id")?,
                token_name: get_s(it, "token_name")?,
                admin: get_b(it, "admin"),
                method: get_s(it, "method")?,
                route: get_s(it, "route")?,
                path: get_s(it, "path")?,
                status: u16::try_from(get_n(it, "status")?).unwrap_or_default(),
                source_ip: get_s(it, "source_ip")?,
                user_agent: get_s(it, "user_agent")?,
            });
            last = Some(sk);
        }
        Ok((out, None))
    }
}
