//! The `LogStore` port.

use async_trait::async_trait;
use rusqlite::{Row, params};
use uuid::Uuid;

use crate::domain::time_fmt::from_micros;
use crate::domain::*;
use crate::error::Result;
use crate::ports::*;

use super::*;

#[async_trait]
impl LogStore for SqliteStore {
    #[tracing::instrument(level = "debug", skip_all, fields(deployment_id = %id))]
    async fn read_logs(&self, id: Uuid, query: LogQuery) -> Result<Vec<LogEntry>> {
        self.db
            .read(move |c| {
                let map = |r: &Row<'_>| -> rusqlite::Result<LogEntry> {
                    Ok(LogEntry {
                        seq: r.get(0)?,
                        step: r.get::<_, i64>(1)? as usize,
                        timestamp: from_micros(r.get(2)?),
                        header: r.get(3)?,
                        line: r.get(4)?,
                        event: r
                            .get::<_, Option<String>>(5)?
                            .and_then(|e| serde_json::from_str(&e).ok()),
                    })
                };
                let base = "SELECT l.seq, l.step, l.ts, l.header, l.line, l.event FROM log_entries l \
                            JOIN deployments d ON d.seq = l.deployment_seq WHERE d.id = ?1";
                let entries = match query {
                    LogQuery::Stream { after, limit } => c
                        .prepare_cached(&format!("{base} AND l.seq > ?2 ORDER BY l.seq LIMIT ?3"))?
                        .query_map(params![id.to_string(), after, limit as i64], map)?
                        .collect::<rusqlite::Result<Vec<_>>>()?,
                    LogQuery::Step { step, offset, count } => c
                        .prepare_cached(&format!(
                            "{base} AND l.step = ?2 AND l.n IS NOT NULL AND l.n >= ?3 ORDER BY l.n LIMIT ?4"
                        ))?
                        .query_map(params![id.to_string(), step as i64, offset as i64, count as i64], map)?
                        .collect::<rusqlite::Result<Vec<_>>>()?,
                };
                Ok(entries)
            })
            .await
    }
}
