//! The agent protocol's bodies (`super::super::agent`, `crate::agent::protocol`).

use std::collections::BTreeMap;

use serde_json::Value;
use utoipa::ToSchema;

/// Who an agent is, as the pool's agent list shows it. Each field is cut to its length.
#[derive(ToSchema)]
pub(crate) struct AgentHello {
    /// Random per agent process; required, not blank.
    #[schema(min_length = 1)]
    id: String,
    #[schema(required = false)]
    version: String,
    #[schema(required = false)]
    platform: String,
    #[schema(required = false)]
    hostname: String,
    #[schema(required = false)]
    pid: String,
}

/// `POST /api/agent/claim`.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct AgentClaimRequest {
    agent: AgentHello,
    /// How long to wait for work, in seconds (0 by default; more than 25 counts as 25).
    #[schema(required = false)]
    wait_seconds: u64,
}

/// Pulumi's `PulumiOperation`.
#[derive(ToSchema)]
#[schema(rename_all = "kebab-case")]
pub(crate) enum AgentOperation {
    Update,
    Preview,
    Destroy,
    Refresh,
    DetectDrift,
    RemediateDrift,
}

/// One of the run's environment variables, its secret ones decrypted.
#[derive(ToSchema)]
pub(crate) struct AgentEnvVar {
    name: String,
    /// Empty for a reference, until the run reads it.
    value: String,
    secret: bool,
    /// Where the value is read from when the run starts (`fromSecretsManager`,
    /// `fromParameterStore` or `fromVault`); absent for a plain value.
    #[schema(value_type = Option<Object>)]
    reference: Option<Value>,
}

/// The run's git credentials, decrypted: `ssh` has `private_key`, `token` has `token`, `basic`
/// has `user` and `password`.
#[derive(ToSchema)]
pub(crate) struct AgentGitCredentials {
    /// `ssh`, `token` or `basic`.
    kind: String,
    private_key: Option<String>,
    token: Option<String>,
    user: Option<String>,
    password: Option<String>,
}

/// A run's secrets, opened with the server's key.
#[derive(ToSchema)]
pub(crate) struct AgentOpened {
    env: Vec<AgentEnvVar>,
    /// `gitAuth`, decrypted; null without one.
    #[schema(required = true)]
    git: Option<AgentGitCredentials>,
    /// The passphrase of the stack's Pulumi state.
    passphrase: String,
}

/// A deployment the agent now holds, with what it needs to run it.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct AgentJob {
    id: uuid::Uuid,
    org: String,
    project: String,
    stack: String,
    version: i64,
    operation: AgentOperation,
    /// The effective settings, as stored (secrets sealed).
    #[schema(value_type = Object)]
    settings: Value,
    /// The run's secrets, opened; null if they could not be (then `error` says why, and the run
    /// must fail).
    #[schema(required = true)]
    opened: Option<AgentOpened>,
    /// Why the secrets could not be opened; null if they were.
    #[schema(required = true)]
    error: Option<String>,
    /// The lease: send it back in `Tarmac-Lease` on every call about this run.
    lease: String,
    /// How long the lease lasts without a heartbeat, in milliseconds.
    lease_millis: u64,
}

/// `POST R/heartbeat`'s answer.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct AgentHeartbeat {
    /// Someone asked to cancel the run: stop it.
    cancel_requested: bool,
}

/// `POST R/steps`.
#[derive(ToSchema)]
pub(crate) struct AgentStepStart {
    name: String,
}

/// The step just started.
#[derive(ToSchema)]
pub(crate) struct AgentStepStarted {
    /// Its index, from 0: the `{step}` of `POST R/steps/{step}`.
    step: u64,
}

/// Pulumi's `StepStatus`.
#[derive(ToSchema)]
#[schema(rename_all = "kebab-case")]
pub(crate) enum AgentStepStatus {
    NotStarted,
    Running,
    Failed,
    Succeeded,
}

/// `POST R/steps/{step}`.
#[derive(ToSchema)]
pub(crate) struct AgentStepEnd {
    status: AgentStepStatus,
}

/// One log line, or one engine event.
#[derive(ToSchema)]
pub(crate) struct AgentLogLine {
    /// The step it belongs to.
    step: u64,
    /// Unix microseconds.
    ts: i64,
    /// Empty by default.
    #[schema(required = false)]
    line: String,
    /// An engine event, stored instead of `line`.
    #[schema(value_type = Option<Object>)]
    event: Option<Value>,
}

/// `POST R/logs`.
#[derive(ToSchema)]
pub(crate) struct AgentLogsRequest {
    lines: Vec<AgentLogLine>,
}

/// Pulumi's `UpdateKind`.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub(crate) enum AgentUpdateKind {
    Update,
    Preview,
    Refresh,
    Destroy,
}

/// `POST R/update`.
#[derive(ToSchema)]
pub(crate) struct AgentUpdateStart {
    kind: AgentUpdateKind,
}

/// The update just started.
#[derive(ToSchema)]
pub(crate) struct AgentUpdateStarted {
    /// The stack's update version it took.
    version: i64,
}

/// Pulumi's `UpdateResult`.
#[derive(ToSchema)]
#[schema(rename_all = "kebab-case")]
pub(crate) enum AgentUpdateResult {
    NotStarted,
    InProgress,
    Succeeded,
    Failed,
}

/// `POST R/update/finish`: how the update ended.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct AgentUpdateOutcome {
    result: AgentUpdateResult,
    /// Operation (`create`, `update`, `delete`, `same`, ...) to count.
    resource_changes: BTreeMap<String, i64>,
    /// The resources the stack's state holds after the update, if known.
    resource_count: Option<i64>,
}

/// A stack output.
#[derive(ToSchema)]
pub(crate) struct AgentOutput {
    name: String,
    /// Any JSON value.
    value: Value,
    /// Sealed with the org's key before it is stored.
    secret: bool,
}

/// `POST R/outputs`.
#[derive(ToSchema)]
pub(crate) struct AgentOutputsRequest {
    outputs: Vec<AgentOutput>,
}

/// One state file.
#[derive(ToSchema)]
pub(crate) struct AgentStateFile {
    /// A plain relative path.
    path: String,
    /// Base64 (standard, padded).
    content: String,
}

/// A state file's entry in a manifest.
#[derive(ToSchema)]
pub(crate) struct AgentManifestEntry {
    sha256: String,
    etag: String,
}

/// `GET R/state`: the stack's state files and the manifest (path to entry) a save must start
/// from.
#[derive(ToSchema)]
pub(crate) struct AgentStateFiles {
    files: Vec<AgentStateFile>,
    manifest: BTreeMap<String, AgentManifestEntry>,
}

/// `POST R/state`: every file the run's state directory now holds, and the manifest it
/// started from.
#[derive(ToSchema)]
pub(crate) struct AgentStateSave {
    files: Vec<AgentStateFile>,
    manifest: BTreeMap<String, AgentManifestEntry>,
}

/// The saved state's manifest, and how many files were written and removed.
#[derive(ToSchema)]
pub(crate) struct AgentStateSaved {
    manifest: BTreeMap<String, AgentManifestEntry>,
    written: u64,
    removed: u64,
}

/// Temporary AWS credentials.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct AgentAwsCredentials {
    access_key_id: String,
    secret_access_key: String,
    session_token: String,
}

/// The settings' `operationContext.oidc.azure`.
#[derive(ToSchema)]
pub(crate) struct AgentAzureOidc {
    client_id: String,
    tenant_id: String,
    #[schema(required = true)]
    subscription_id: Option<String>,
}

/// A duration.
#[derive(ToSchema)]
pub(crate) struct AgentDuration {
    secs: u64,
    nanos: u32,
}

/// The settings' `operationContext.oidc.gcp`.
#[derive(ToSchema)]
pub(crate) struct AgentGcpOidc {
    project_id: String,
    #[schema(required = true)]
    region: Option<String>,
    workload_pool_id: String,
    provider_id: String,
    service_account: String,
    #[schema(required = true)]
    token_lifetime: Option<AgentDuration>,
}

/// `POST R/credentials`: the run's OIDC token and the cloud credentials it was exchanged for.
#[derive(ToSchema)]
pub(crate) struct AgentRunCredentials {
    /// The OIDC token (a JWT).
    token: String,
    /// When the token expires, unix seconds.
    expires: i64,
    /// Null unless the settings name an AWS role.
    #[schema(required = true)]
    aws: Option<AgentAwsCredentials>,
    #[schema(required = true)]
    azure: Option<AgentAzureOidc>,
    #[schema(required = true)]
    gcp: Option<AgentGcpOidc>,
    /// What was done, for the step's log. Holds no secrets.
    notes: Vec<String>,
}

/// The statuses an agent may end a run with.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub(crate) enum AgentEndStatus {
    Succeeded,
    Failed,
}

/// `POST R/complete`: how the run ended.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct AgentRunEnded {
    status: AgentEndStatus,
    /// For detect-drift: whether drift was found.
    drift: Option<bool>,
    /// The step the closing lines go to.
    last_step: u64,
}
