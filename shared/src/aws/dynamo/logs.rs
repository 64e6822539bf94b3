//! The `LogStore` port.

use async_trait::async_trait;
use serde_json::Value;
use uuid::Uuid;

use super::*;
use crate::aws::item::*;
use crate::domain::time_fmt::from_micros;
use crate::domain::*;
use crate::error::Result;
use crate::ports::*;

#[async_trait]
impl LogStore for DynamoStore {
    #[tracing::instrument(level = "debug", skip_all, fields(deployment_id = %id))]
    async fn read_logs(&self, id: Uuid, query: LogQuery) -> Result<Vec<LogEntry>> {
        let after = match query {
            LogQuery::Stream { after, .. } => after,
            LogQuery::Step { .. } => 0,
        };
        // Chunks are keyed by their last sequence number: those past `after` hold what follows.
        let chunks = self
            .query(
                None,
                "pk = :pk AND sk > :after",
                vec![(":pk", s(log_pk(id))), (":after", s(pad(after)))],
                true,
                None,
            )
            .await?;
        let mut entries = Vec::new();
        for c in chunks {
            let lines: Vec<Value> = serde_json::from_str(&get_s(&c, "lines")?)?;
            for l in lines {
                let entry = LogEntry {
                    seq: l["seq"].as_i64().unwrap_or_default(),
                    step: l["step"].as_u64().unwrap_or_default() as usize,
                    timestamp: from_micros(l["ts"].as_i64().unwrap_or_default()),
                    header: l["header"].as_str().map(str::to_string),
                    line: l["line"].as_str().map(str::to_string),
                    event: l.get("event").filter(|e| !e.is_null()).cloned(),
                };
                let keep = match query {
                    LogQuery::Stream { after, .. } => entry.seq > after,
                    LogQuery::Step { step, offset, .. } => {
                        entry.step == step && l["n"].as_u64().is_some_and(|n| n as usize >= offset)
                    }
                };
                if keep {
                    entries.push(entry);
                }
            }
        }
        let limit = match query {
            LogQuery::Stream { limit, .. } => limit,
            LogQuery::Step { count, .. } => count,
        };
        entries.truncate(limit);
        Ok(entries)
    }
}
