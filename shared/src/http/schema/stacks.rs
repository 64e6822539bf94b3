//! Stacks, settings, metadata, the caller (`super::super::stacks`, `super::super::settings`).

use serde_json::Value;
use utoipa::ToSchema;

/// `DeploymentSettings`: the stack's settings. Written with any key casing Pulumi's clients
/// send; answered in one canonical casing, with secrets as ciphertext, and with `version` and
/// `source` added.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct Settings {
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
    /// Tarmac: who must approve a deployment before it runs (admins set it).
    #[schema(value_type = Option<Object>)]
    approvals: Option<Value>,
    /// Tarmac: pull-based git sync.
    #[schema(value_type = Option<Object>)]
    git_sync: Option<Value>,
    #[schema(rename = "agentPoolID")]
    agent_pool_id: Option<String>,
    /// The settings' version (answers only).
    version: Option<i64>,
    /// `api` (answers only).
    source: Option<String>,
}

/// A value to encrypt: a bare JSON string, or `{"secret": "..."}`.
#[derive(ToSchema)]
pub(crate) struct EncryptRequest {
    secret: Option<String>,
    plaintext: Option<String>,
}

/// A sealed value, to put in settings where a secret goes.
#[derive(ToSchema)]
pub(crate) struct Encrypted {
    secret: String,
    ciphertext: String,
}

/// Pulumi's `Stack`.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct Stack {
    id: String,
    org_name: String,
    project_name: String,
    stack_name: String,
    /// The deployment holding the stack's run slot, or empty.
    active_update: String,
    tags: std::collections::BTreeMap<String, String>,
    version: i64,
    resource_count: Option<i64>,
}

/// `POST /api/stacks/{org}/{project}`: Pulumi's `stackName` and `tags`, and Tarmac's one-request
/// signup: `deploymentSettings` and a first `deployment`.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct CreateStackRequest {
    stack_name: String,
    tags: Option<std::collections::BTreeMap<String, String>>,
    deployment_settings: Option<Settings>,
    deployment: Option<super::deployments::CreateDeploymentRequest>,
}

/// The first deployment a stack creation queued.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct QueuedDeployment {
    id: uuid::Uuid,
    version: i64,
    console_url: String,
}

/// The stack created.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct CreatedStack {
    org_name: String,
    project_name: String,
    stack_name: String,
    deployment: Option<QueuedDeployment>,
}

/// A stack in `GET /api/user/stacks`.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct StackSummary {
    id: String,
    org_name: String,
    project_name: String,
    stack_name: String,
    resource_count: Option<i64>,
    /// When its last update ended (unix seconds).
    last_update: Option<i64>,
}

/// `ListStacksResponse`.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct UserStacks {
    stacks: Vec<StackSummary>,
    continuation_token: Option<String>,
}

/// A stack in the org's overview.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct OrgStack {
    org_name: String,
    project_name: String,
    stack_name: String,
    tags: std::collections::BTreeMap<String, String>,
    paused: bool,
    has_schedules: bool,
    #[schema(value_type = Object)]
    drift: Value,
    last_deployment: Option<super::deployments::DeploymentSnapshot>,
}

/// `GET /api/orgs/{org}/stacks`.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct OrgStacks {
    stacks: Vec<OrgStack>,
    total: u64,
    items_per_page: u32,
}

/// A stack's export: its outputs on the root stack resource.
#[derive(ToSchema)]
pub(crate) struct Export {
    version: i64,
    #[schema(value_type = Object)]
    deployment: Value,
}

/// A stack's git sync: `{"enabled": false}`, or what it has seen and when it looks next.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct GitSync {
    enabled: bool,
    last_seen_head: Option<String>,
    last_synced_commit: Option<String>,
    last_attempted_commit: Option<String>,
    pending_deployment: Option<uuid::Uuid>,
    last_error: Option<String>,
    failures: Option<u32>,
    last_check: Option<String>,
    next_check: Option<String>,
}

/// `GET S/deployments/metadata`.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct StackMetadata {
    paused: bool,
    stack_paused: bool,
    organization_paused: bool,
    has_schedules: bool,
    #[schema(value_type = Object)]
    drift: Value,
    git_sync: GitSync,
}

/// Deployments by status.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct DeploymentCounts {
    not_started: u64,
    accepted: u64,
    running: u64,
    failed: u64,
    succeeded: u64,
    skipped: u64,
    total: u64,
}

/// `GET /api/orgs/{org}/deployments/metadata`.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct OrgMetadata {
    paused: bool,
    paused_stacks: Vec<String>,
    concurrency: u64,
    deployment_counts: DeploymentCounts,
}

/// An org's concurrency limit.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct OrgLimit {
    /// At most this many of the org's deployments run at once; null for no limit.
    max_concurrent: Option<u32>,
    running: u64,
}

/// A new limit: `maxConcurrent` is required (null removes the limit).
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct OrgLimitRequest {
    #[schema(required, minimum = 1)]
    max_concurrent: Option<u32>,
}

/// An organization the caller belongs to.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct UserOrg {
    github_login: String,
    name: String,
    avatar_url: String,
    role: String,
}

/// The caller: a token stands for a user named after it, in its one org.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct User {
    id: String,
    name: String,
    github_login: String,
    email: String,
    avatar_url: String,
    #[schema(rename = "hasMFA")]
    has_mfa: bool,
    is_org_managed: bool,
    is_managed_by_multi_org: bool,
    organizations: Vec<UserOrg>,
    #[schema(value_type = Vec<Object>)]
    identities: Vec<Value>,
    #[schema(value_type = Object)]
    token_info: Value,
}

/// The token's org, in the shape the Pulumi CLI reads.
#[derive(ToSchema)]
pub(crate) struct DefaultOrg {
    #[schema(rename = "GitHubLogin")]
    github_login: String,
    #[schema(rename = "Messages", value_type = Vec<Object>)]
    messages: Vec<Value>,
}

/// Pulumi Cloud's capabilities (none), and Tarmac's own under `tarmac`.
#[derive(ToSchema)]
pub(crate) struct Capabilities {
    #[schema(value_type = Vec<Object>)]
    capabilities: Vec<Value>,
    #[schema(value_type = Object)]
    tarmac: Value,
}
