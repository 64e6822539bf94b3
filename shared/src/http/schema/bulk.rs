//! Bulk deployments: one request, a deployment on each of many stacks
//! (`super::super::bulk`).

use std::collections::BTreeMap;

use serde_json::Value;
use utoipa::ToSchema;

/// Stacks chosen by project and tag instead of by name.
#[derive(ToSchema)]
pub(crate) struct BulkFilter {
    /// Only this project's stacks.
    project: Option<String>,
    /// Only stacks with this tag.
    tag: Option<BulkTagFilter>,
}

/// A tag a selected stack must have; any value if `value` is absent or null.
#[derive(ToSchema)]
pub(crate) struct BulkTagFilter {
    name: String,
    value: Option<String>,
}

/// `POST /api/orgs/{org}/deployments/bulk`: a create-deployment request, which every stack
/// gets, and the stacks: exactly one of `stacks` and `filter`, at most 10,000 stacks either way.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct BulkRequest {
    /// `update`, `preview`, `refresh`, `destroy`, `detect-drift` or `remediate-drift`.
    #[schema(example = "update")]
    operation: String,
    /// Merge each stack's settings under this request's (default true).
    inherit_settings: Option<bool>,
    /// `project/stack` names in the organization, each once.
    #[schema(example = json!(["web/prod", "api/prod"]))]
    stacks: Option<Vec<String>>,
    filter: Option<BulkFilter>,
    #[schema(value_type = Option<Object>)]
    source_context: Option<Value>,
    #[schema(value_type = Option<Object>)]
    operation_context: Option<Value>,
    #[schema(value_type = Option<Object>)]
    executor_context: Option<Value>,
    #[schema(value_type = Option<Object>)]
    git_hub: Option<Value>,
    #[schema(value_type = Option<Object>)]
    cache_options: Option<Value>,
    /// The agent pool to run on.
    #[schema(rename = "agentPoolID")]
    agent_pool_id: Option<String>,
}

/// One stack of a bulk request: `created` with its deployment, or `refused` with the status
/// and message the same request for this stack alone would have had.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct BulkItem {
    /// `project/stack`, as given.
    stack: String,
    /// `created` or `refused`.
    status: String,
    /// `created`: the deployment.
    deployment_id: Option<uuid::Uuid>,
    /// `created`: the deployment's version.
    version: Option<i64>,
    /// `refused`: the HTTP status.
    code: Option<u16>,
    /// `refused`: why.
    message: Option<String>,
    /// Progress only, `created` only: the deployment's status now (absent if it was
    /// deleted).
    deployment_status: Option<String>,
}

/// The answer to a bulk request: what became of each stack. Here `created` is the number of
/// deployments created (the request's time is in its progress).
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct BulkCreated {
    id: uuid::Uuid,
    operation: String,
    /// The requesting token's name.
    requested_by: String,
    /// Deployments created.
    created: u64,
    /// Stacks refused.
    refused: u64,
    /// Stacks named or selected.
    total: u64,
    items: Vec<BulkItem>,
}

/// A bulk request's progress: each deployment's status now.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct BulkProgress {
    id: uuid::Uuid,
    operation: String,
    requested_by: String,
    /// RFC 3339.
    created: String,
    total: u64,
    /// Stacks by their deployment's status, plus `refused` (no deployment) and `deleted`.
    counts: BTreeMap<String, u64>,
    /// Whether every deployment has finished.
    finished: bool,
    items: Vec<BulkItem>,
}

/// What a bulk cancel did.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct BulkCancelCounts {
    /// Queued deployments skipped.
    dequeued: u64,
    /// Running deployments asked to stop.
    stopping: u64,
    already_finished: u64,
}

/// A bulk request's progress after a cancel, with what the cancel did.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct BulkCancelResult {
    id: uuid::Uuid,
    operation: String,
    requested_by: String,
    /// RFC 3339.
    created: String,
    total: u64,
    counts: BTreeMap<String, u64>,
    finished: bool,
    items: Vec<BulkItem>,
    cancelled: BulkCancelCounts,
}
