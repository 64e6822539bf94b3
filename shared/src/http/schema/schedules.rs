//! Schedules (custom, drift, TTL), their history, and drift runs (`super::super::schedules`).

use serde_json::Value;
use utoipa::ToSchema;

/// The deployment a schedule requests: the create-deployment request as stored (sealed
/// secrets shown as `{secret, ciphertext}`), always with its operation and `inheritSettings`.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct ScheduledRequest {
    /// `update`, `preview`, `refresh`, `destroy`, `detect-drift` or `remediate-drift`.
    #[schema(example = "update")]
    operation: String,
    inherit_settings: bool,
    tag: Option<String>,
    #[schema(rename = "agentPoolID")]
    agent_pool_id: Option<String>,
    #[schema(value_type = Option<Object>)]
    source_context: Option<Value>,
    #[schema(value_type = Option<Object>)]
    operation_context: Option<Value>,
    #[schema(value_type = Option<Object>)]
    executor_context: Option<Value>,
    #[schema(value_type = Option<Object>)]
    git_hub: Option<Value>,
    #[schema(value_type = Option<Object>)]
    vcs: Option<Value>,
    #[schema(value_type = Option<Object>)]
    cache_options: Option<Value>,
}

/// `ScheduledDeploymentDefinition`: what the schedule runs.
#[derive(ToSchema)]
pub(crate) struct ScheduleDefinition {
    request: ScheduledRequest,
}

/// `ScheduledAction`: a custom, drift or TTL schedule. Exactly one of `scheduleCron` and
/// `scheduleOnce` is present. Times are `YYYY-MM-DD hh:mm:ss.fff` in UTC.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct ScheduledAction {
    id: uuid::Uuid,
    #[schema(rename = "orgID")]
    org_id: String,
    /// A 5-field cron expression, evaluated in UTC.
    #[schema(example = "0 0 * * 0")]
    schedule_cron: Option<String>,
    /// The one time it fires.
    schedule_once: Option<String>,
    /// `""` once a one-time schedule has fired.
    next_execution: String,
    paused: bool,
    /// Always `deployment`.
    kind: String,
    definition: ScheduleDefinition,
    created: String,
    modified: String,
    /// `""` if it has never fired.
    last_executed: String,
}

/// `ListScheduledActionsResponse`: the stack's custom, drift and TTL schedules.
#[derive(ToSchema)]
pub(crate) struct ScheduledActionList {
    schedules: Vec<ScheduledAction>,
}

/// `CreateScheduledDeploymentRequest`: exactly one of `scheduleCron` and `scheduleOnce`
/// (`null` counts as absent).
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct CustomScheduleRequest {
    /// A 5-field cron expression, evaluated in UTC.
    #[schema(example = "0 0 * * 0")]
    schedule_cron: Option<String>,
    /// RFC 3339; a time without a zone is UTC.
    #[schema(example = "2030-12-31T23:59:00Z")]
    schedule_once: Option<String>,
    /// The deployment to create (`operation` required; an `agentPoolID` must name one of the
    /// organization's pools).
    request: super::deployments::CreateDeploymentRequest,
}

/// `CreateScheduledDriftDeploymentRequest`.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct DriftScheduleRequest {
    /// A 5-field cron expression, evaluated in UTC.
    #[schema(example = "0 0 * * *")]
    schedule_cron: String,
    /// Run a remediate-drift deployment when drift is found (default false).
    auto_remediate: Option<bool>,
}

/// `CreateScheduledTTLDeploymentRequest`: a one-time destroy.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct TtlScheduleRequest {
    /// RFC 3339; a time without a zone is UTC.
    #[schema(example = "2030-12-31T23:59:59Z")]
    timestamp: String,
    /// Delete the stack after a successful destroy (default false).
    delete_after_destroy: Option<bool>,
}

/// `ScheduledActionHistoryEvent`: one firing, skip or refusal.
#[derive(ToSchema)]
pub(crate) struct ScheduleHistoryEvent {
    id: uuid::Uuid,
    #[schema(rename = "scheduledActionID")]
    scheduled_action_id: uuid::Uuid,
    /// `YYYY-MM-DD hh:mm:ss.fff` in UTC.
    executed: String,
    /// The deployment it created (0: none).
    version: i64,
    /// The deployment's status now (`deleted` if it is gone), or why none was created.
    result: String,
}

/// `ListScheduledActionHistoryResponse`: the latest 100 events, newest first.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct ScheduleHistory {
    schedule_history_events: Vec<ScheduleHistoryEvent>,
}

/// The remediate-drift deployment a drift run started.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct DriftRunUpdate {
    /// The remediate-drift deployment's id.
    update_id: uuid::Uuid,
    modified: String,
    status: String,
}

/// `DriftRun`: its status is its detect-drift deployment's.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct DriftRun {
    id: uuid::Uuid,
    drift_detected: bool,
    /// `YYYY-MM-DD hh:mm:ss.fff` in UTC.
    created: String,
    /// A deployment status (`failed` if the deployment is gone).
    status: String,
    deployment_id: uuid::Uuid,
    deployment_version: i64,
    /// Present when a remediation ran and its deployment still exists.
    remediate_update: Option<DriftRunUpdate>,
}

/// `ListDriftRunsResponse`.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct DriftRunList {
    drift_runs: Vec<DriftRun>,
    items_per_page: u32,
    total: u64,
}

/// `StackDriftStatus`.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct StackDriftStatus {
    drift_detected: bool,
    /// The latest drift run's id; `""` if none.
    latest_drift_run: String,
    run_in_progress: bool,
}
