//! An org's agent pools, API tokens, audit log and GitHub integration (`super::super::pools`,
//! `tokens`, `audit`, `github`).

use serde_json::Value;
use utoipa::ToSchema;

/// Whether an agent was seen in the last few minutes.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub(crate) enum AgentStatus {
    Online,
    Offline,
}

/// An agent pool in the org's list.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct AgentPoolSummary {
    /// Unix seconds.
    created: i64,
    id: String,
    name: String,
    description: String,
    /// When the pool's most recently seen agent was seen, unix seconds; 0 if none ever was.
    last_seen: i64,
    /// That agent's status; `offline` without agents.
    status: AgentStatus,
    /// Always false.
    is_default: bool,
}

/// The org's agent pools, oldest first.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct AgentPoolList {
    agent_pools: Vec<AgentPoolSummary>,
}

/// `POST /api/orgs/{org}/agent-pools`.
#[derive(ToSchema)]
pub(crate) struct PoolCreateRequest {
    /// 1 to 100 characters, no control characters.
    #[schema(min_length = 1, max_length = 100)]
    name: String,
    /// Up to 1,000 characters.
    #[schema(max_length = 1000)]
    description: Option<String>,
}

/// A new pool, with its token: shown this once.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct PoolCreated {
    id: String,
    /// The pool's token (`tpa_...`), for its agents.
    token_value: String,
}

/// An agent of a pool.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct PoolAgent {
    version: String,
    platform: String,
    hostname: String,
    /// Empty: not recorded.
    ip: String,
    pid: String,
    /// Unix seconds.
    last_seen: i64,
    status: AgentStatus,
}

/// An agent pool, with its agents, most recently seen first.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct AgentPoolDetail {
    /// Unix seconds.
    created: i64,
    id: String,
    name: String,
    description: String,
    agents: Vec<PoolAgent>,
}

/// `PATCH /api/orgs/{org}/agent-pools/{poolId}`: only what is given changes.
#[derive(ToSchema)]
pub(crate) struct PoolPatchRequest {
    /// 1 to 100 characters, no control characters.
    #[schema(min_length = 1, max_length = 100)]
    name: Option<String>,
    /// Up to 1,000 characters.
    #[schema(max_length = 1000)]
    description: Option<String>,
}

/// A pool's name and description after a change.
#[derive(ToSchema)]
pub(crate) struct PoolPatched {
    name: String,
    description: String,
}

/// A token's role: `read` < `write` < `admin`.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub(crate) enum TokenRole {
    Admin,
    Write,
    Read,
}

/// An API token (never its value).
#[derive(ToSchema)]
pub(crate) struct TokenSummary {
    /// The token's public id.
    id: String,
    name: String,
    role: TokenRole,
    /// RFC 3339.
    created: String,
}

/// The org's tokens, oldest first.
#[derive(ToSchema)]
pub(crate) struct TokenList {
    tokens: Vec<TokenSummary>,
}

/// `POST /api/orgs/{org}/tokens`.
#[derive(ToSchema)]
pub(crate) struct TokenCreateRequest {
    /// 1 to 100 characters, no control characters.
    #[schema(min_length = 1, max_length = 100)]
    name: String,
    /// `write` by default.
    role: Option<TokenRole>,
}

/// A new token, with its value: shown this once.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct TokenCreated {
    id: String,
    /// Send it as `Authorization: token <value>`.
    token_value: String,
    name: String,
    role: TokenRole,
}

/// Who made a change: the token's name (Pulumi's `UserInfo` shape).
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct AuditUser {
    name: String,
    /// Empty.
    github_login: String,
    /// Empty.
    avatar_url: String,
}

/// One change made through the API (Pulumi's `AuditLogEvent`, with Tarmac's `method`, `path`,
/// `status` and `userAgent`).
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct AuditEvent {
    /// Unix seconds.
    timestamp: i64,
    #[schema(rename = "sourceIP")]
    source_ip: String,
    /// The method and route: `POST /api/orgs/{org}/tokens`.
    event: String,
    description: String,
    user: AuditUser,
    #[schema(rename = "tokenID")]
    token_id: String,
    token_name: String,
    req_org_admin: bool,
    /// Always false.
    req_stack_admin: bool,
    /// Always false.
    auth_failure: bool,
    method: String,
    path: String,
    /// The HTTP status the change got.
    status: u16,
    user_agent: String,
}

/// A page of the audit log, newest first.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct AuditLogPage {
    audit_log_events: Vec<AuditEvent>,
    /// Pass back as `continuationToken` for the next page; null at the end.
    #[schema(required = true)]
    continuation_token: Option<String>,
}

/// The GitHub App an integration acts as.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct GitHubAppView {
    app_id: String,
    /// Used when an event names no installation; null if not set.
    #[schema(required = true)]
    installation_id: Option<i64>,
    /// Always true (the key itself is never shown).
    has_private_key: bool,
}

/// An org's GitHub integration, without its secrets.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct GitHubIntegration {
    /// GitHub's API (GitHub Enterprise's for a server of it).
    api_url: String,
    /// Always true.
    has_webhook_secret: bool,
    /// Whether a token clones and reads the repositories.
    has_token: bool,
    /// The GitHub App, or null.
    #[schema(required = true)]
    app: Option<GitHubAppView>,
}

/// A GitHub App: its id, private key (PEM) and default installation.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct GitHubAppRequest {
    /// A string or an integer.
    app_id: Value,
    /// PEM, as a string or a `{"secret": ...}` object.
    private_key: Value,
    installation_id: Option<i64>,
}

/// `PUT /api/orgs/{org}/integrations/github`: replaces the integration. A secret is a
/// non-empty string or a `SecretValue` object (`{"secret": ...}` or `{"plaintext": ...}`).
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct GitHubIntegrationRequest {
    /// The webhook's secret, as set in GitHub.
    webhook_secret: Value,
    /// An http(s) URL; `https://api.github.com` by default.
    api_url: Option<String>,
    /// A token that reads the repositories (not with `app`).
    token: Option<Value>,
    /// A GitHub App (not with `token`).
    app: Option<GitHubAppRequest>,
}

/// A deployment a webhook delivery made.
#[derive(ToSchema)]
pub(crate) struct GitHubWebhookDeployment {
    /// `org/project/stack`.
    stack: String,
    id: uuid::Uuid,
    version: i64,
    operation: String,
}

/// What a webhook delivery did.
#[derive(ToSchema)]
pub(crate) struct GitHubWebhookResult {
    /// The `X-GitHub-Delivery` id.
    delivery: String,
    /// The deployments made.
    deployments: Vec<GitHubWebhookDeployment>,
    /// Present when the event is not one Tarmac acts on: why.
    ignored: Option<String>,
    /// Present when the event was acted on: the deployments an earlier delivery of it made.
    duplicates: Option<u64>,
}

/// The answer to GitHub's `ping` event.
#[derive(ToSchema)]
pub(crate) struct GitHubPong {
    /// `pong`.
    message: String,
}
