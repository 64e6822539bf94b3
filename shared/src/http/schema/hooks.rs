//! Webhooks of an organization or a stack, and their deliveries (`super::super::hooks`).

use utoipa::ToSchema;

/// Pulumi's `WebhookResponse`. `projectName` and `stackName` are present on a stack's hooks
/// only.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct Webhook {
    organization_name: String,
    project_name: Option<String>,
    stack_name: Option<String>,
    /// The hook's name in its scope.
    name: String,
    display_name: String,
    /// Where payloads go; for `pulumi_deployments`, `<project>/<stack>` to deploy.
    payload_url: String,
    active: bool,
    /// `raw`, `slack`, `ms_teams` or `pulumi_deployments`.
    format: String,
    /// The events it hears (none, and no groups: every event).
    filters: Vec<String>,
    /// Filter groups: `stacks`, `deployments`, `environments`, `policies`.
    groups: Vec<String>,
    has_secret: bool,
    /// The secret, sealed (never the plaintext); `""` without one.
    secret_ciphertext: String,
}

/// `POST .../hooks`: a new hook. `organizationName`, `projectName` and `stackName`, when
/// given, must be the path's.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct WebhookCreateRequest {
    organization_name: Option<String>,
    project_name: Option<String>,
    stack_name: Option<String>,
    /// 1 to 100 of letters, digits, `_`, `.`, `-` (default: 8 random hex digits).
    name: Option<String>,
    /// Not blank.
    display_name: String,
    /// An http(s) URL; for `pulumi_deployments`, `<project>/<stack>` in the organization.
    payload_url: String,
    /// Default true.
    active: Option<bool>,
    /// `raw` (default), `slack`, `ms_teams` or `pulumi_deployments`.
    format: Option<String>,
    /// Event names (Pulumi's filter names).
    filters: Option<Vec<String>>,
    /// `stacks`, `deployments`, `environments` or `policies`.
    groups: Option<Vec<String>>,
    /// The HMAC key for signatures.
    secret: Option<String>,
}

/// `PATCH .../hooks/{name}`: what it names changes, the rest is kept.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct WebhookUpdateRequest {
    organization_name: Option<String>,
    project_name: Option<String>,
    stack_name: Option<String>,
    /// Not blank.
    display_name: Option<String>,
    payload_url: Option<String>,
    active: Option<bool>,
    format: Option<String>,
    filters: Option<Vec<String>>,
    groups: Option<Vec<String>>,
    /// Empty: unchanged; `__remove-secret`: removed.
    secret: Option<String>,
}

/// Pulumi's `WebhookDelivery`, with Tarmac's `event` and `attempt`: one attempt to send a
/// message.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct WebhookDelivery {
    /// The message's id (`Pulumi-Webhook-ID`), the same on every attempt.
    id: String,
    /// `Pulumi-Webhook-Kind`: `deployment`, `drift_detection`, `ping`, ...
    kind: String,
    /// The event's filter name.
    event: String,
    /// This attempt's number, from 1.
    attempt: u64,
    /// The JSON sent, as a string.
    payload: String,
    /// Unix seconds.
    timestamp: i64,
    /// Milliseconds.
    duration: i64,
    request_url: String,
    request_headers: String,
    /// 0 when there was no response.
    response_code: i64,
    response_headers: String,
    response_body: String,
}
