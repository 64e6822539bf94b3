//! Bulk operations: one request that creates a deployment on each of many stacks (a fleet's
//! update, a drift check across a catalogue), kept so that its progress can be read and the
//! rest of it cancelled.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use super::Operation;

/// The most stacks one bulk request may name or select.
pub const MAX_BULK_ITEMS: usize = 10_000;

/// A bulk request as it was answered: what it asked for and what became of each stack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BulkOperation {
    pub id: Uuid,
    pub org: String,
    pub operation: Operation,
    pub requested_by: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created: OffsetDateTime,
    pub items: Vec<BulkItem>,
}

/// One stack of a bulk request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BulkItem {
    /// `project/stack`, in the bulk's org.
    pub stack: String,
    #[serde(flatten)]
    pub outcome: BulkOutcome,
}

/// Whether a stack got its deployment, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "camelCase")]
pub enum BulkOutcome {
    #[serde(rename_all = "camelCase")]
    Created { deployment_id: Uuid, version: i64 },
    /// `code` is the HTTP status the same request for this stack alone would have had.
    Refused { code: u16, message: String },
}

impl BulkOperation {
    pub fn created(&self) -> impl Iterator<Item = (&str, Uuid)> {
        self.items.iter().filter_map(|i| match i.outcome {
            BulkOutcome::Created { deployment_id, .. } => Some((i.stack.as_str(), deployment_id)),
            BulkOutcome::Refused { .. } => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_read_and_write_their_outcome_flat() {
        let id = Uuid::nil();
        let items = vec![
            BulkItem {
                stack: "web/prod".into(),
                outcome: BulkOutcome::Created {
                    deployment_id: id,
                    version: 3,
                },
            },
            BulkItem {
                stack: "web/gone".into(),
                outcome: BulkOutcome::Refused {
                    code: 404,
                    message: "stack 'acme/web/gone' not found".into(),
                },
            },
        ];
        let v = serde_json::to_value(&items).unwrap();
        assert_eq!(
            v,
            serde_json::json!([
                {"stack": "web/prod", "status": "created", "deploymentId": id, "version": 3},
                {"stack": "web/gone", "status": "refused", "code": 404, "message": "stack 'acme/web/gone' not found"},
            ])
        );
        let back: Vec<BulkItem> = serde_json::from_value(v).unwrap();
        assert_eq!(back, items);
    }
}
