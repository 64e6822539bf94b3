//! Updates behind deployments (`super::super::updates`).

use serde_json::Value;
use utoipa::ToSchema;

/// Pulumi's flat `UpdateInfo`: what `stack history` reads.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct UpdateInfo {
    kind: String,
    start_time: i64,
    message: String,
    #[schema(value_type = Object)]
    environment: Value,
    #[schema(value_type = Object)]
    config: Value,
    /// `in-progress`, `succeeded` or `failed`.
    result: String,
    end_time: i64,
    version: i64,
    #[schema(value_type = Object)]
    resource_changes: Value,
    resource_count: Option<i64>,
}

/// The SDK's `UpdateInfo`: the flat info with its id, versions and requester.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct UpdateRecord {
    info: UpdateInfo,
    #[schema(rename = "updateID")]
    update_id: uuid::Uuid,
    version: i64,
    latest_version: i64,
    requested_by: super::deployments::UserInfo,
}

/// The stack's history.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct UpdateHistory {
    updates: Vec<UpdateInfo>,
    items_per_page: u32,
    total: u64,
}

/// An update's engine events, and where to go on; `continuationToken` is null once the update
/// has ended and every event was returned.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct UpdateEvents {
    #[schema(value_type = Vec<Object>)]
    events: Vec<Value>,
    #[schema(required)]
    continuation_token: Option<String>,
}
