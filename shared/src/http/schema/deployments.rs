//! Deployments: create, read, list, logs, approve (`super::super::deployments`).

use serde_json::Value;
use utoipa::ToSchema;

/// `CreateDeploymentRequest`: what to run, merged over the stack's settings.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct CreateDeploymentRequest {
    /// Required, unless the settings' `operationContext.operation` names one.
    operation: Option<Operation>,
    /// Merge the stack's settings under this request's (default true).
    inherit_settings: Option<bool>,
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
    /// Tarmac: the agent pool to run on (else the stack's, else the workers).
    #[schema(rename = "agentPoolID")]
    agent_pool_id: Option<String>,
}

/// What a deployment runs.
#[derive(ToSchema)]
#[schema(rename_all = "kebab-case")]
pub(crate) enum Operation {
    Update,
    Preview,
    Refresh,
    Destroy,
    DetectDrift,
}

/// `CreateDeploymentResponse`.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct CreateDeploymentResponse {
    id: uuid::Uuid,
    console_url: String,
    version: i64,
}

/// Who asked for a deployment.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct UserInfo {
    name: String,
    github_login: String,
    avatar_url: String,
}

/// A deployment's step.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct Step {
    name: String,
    status: String,
    started: String,
    last_updated: String,
}

/// A deployment's one job.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct Job {
    status: String,
    started: String,
    last_updated: String,
    steps: Vec<Step>,
}

/// `DeploymentNestedUpdate`.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct NestedUpdate {
    id: uuid::Uuid,
    #[schema(rename = "updateID")]
    update_id: uuid::Uuid,
    version: i64,
    start_time: i64,
    end_time: i64,
    result: String,
    kind: String,
    message: String,
    #[schema(value_type = Object)]
    environment: Value,
}

/// Tarmac's place of a queued deployment.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct QueuePlace {
    position: u64,
    ahead: u64,
    /// `approval`, `paused`, `stack`, `org-limit` or `worker`.
    waiting_for: String,
}

/// `GetDeploymentResponse`, with Tarmac's `queue` and `approval` where they apply.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct Deployment {
    id: uuid::Uuid,
    created: String,
    modified: String,
    /// `not-started`, `accepted`, `running`, `failed`, `succeeded` or `skipped`.
    status: String,
    version: i64,
    latest_version: i64,
    requested_by: UserInfo,
    jobs: Vec<Job>,
    #[schema(value_type = Object)]
    configuration: Value,
    initiator: String,
    pulumi_operation: String,
    project_name: String,
    stack_name: String,
    updates: Vec<NestedUpdate>,
    queue: Option<QueuePlace>,
    #[schema(value_type = Option<Object>)]
    approval: Option<Value>,
}

/// `ListDeploymentSnapshot`.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct DeploymentSnapshot {
    id: uuid::Uuid,
    created: String,
    modified: String,
    status: String,
    version: i64,
    requested_by: UserInfo,
    project_name: String,
    stack_name: String,
    paused: bool,
    pulumi_operation: String,
    updates: Vec<NestedUpdate>,
    jobs: Vec<Job>,
    initiator: String,
    queue: Option<QueuePlace>,
    #[schema(value_type = Option<Object>)]
    approval: Option<Value>,
}

/// `ListDeploymentResponseV2`.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct DeploymentList {
    deployments: Vec<DeploymentSnapshot>,
    items_per_page: u32,
    total: u64,
}

/// A log line, or a step's header.
#[derive(ToSchema)]
pub(crate) struct LogLine {
    timestamp: String,
    line: Option<String>,
    header: Option<String>,
}

/// `DeploymentLogs` (streaming mode) or `DeploymentLogsStep` (step mode).
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct Logs {
    #[schema(rename = "__type")]
    kind: String,
    lines: Vec<LogLine>,
    /// Streaming mode: pass back as `continuationToken`; absent at the end.
    next_token: Option<String>,
    /// Step mode: the next `offset`; absent at the end.
    next_offset: Option<i64>,
    /// Step mode: the step's name.
    name: Option<String>,
}

/// An approver's decision.
#[derive(ToSchema)]
pub(crate) struct Decision {
    /// Up to 1,000 characters.
    comment: Option<String>,
}
