//! A deployment's OIDC settings (`operationContext.oidc`), validated. The claims they produce
//! are the issuer's business (`crate::oidc`).
//!
//! Pulumi's keys (`aws`, `azure`, `gcp`) are read as Pulumi documents them. Tarmac adds four
//! keys beside them, which Pulumi clients ignore:
//! - `audience`: the token's `aud` (default: the org name); a URI such as
//!   `api://AzureADTokenExchange`, never something that looks like an org name;
//! - `subjectTemplate`: the token's `sub`, for federated credentials that match subjects
//!   exactly (Azure, GCP); it must start with
//!   `pulumi:deploy:org:${organization.name}:project:${project.name}:stack:${stack.name}`
//!   (which alone is the operation-independent form), so a stack can never claim another's;
//! - `tokenExpiration`: a Go duration, default `1h`, at most `12h`;
//! - `readScope`: when true, `preview` and `detect-drift` get `scope: read` (and `:scope:read`
//!   in the default subject), so a trust policy can hand them a read-only role.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::domain::Operation;
use crate::domain::keys::MAX_TOKEN_LIFETIME;
use crate::error::{Error, Result};

pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// `operationContext.oidc`, validated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OidcSpec {
    pub aws: Option<AwsOidc>,
    pub azure: Option<AzureOidc>,
    pub gcp: Option<GcpOidc>,
    pub audience: Option<String>,
    pub subject_template: Option<String>,
    pub token_lifetime: Duration,
    pub read_scope: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AwsOidc {
    pub role_arn: String,
    /// A template (see `render`).
    pub session_name: String,
    pub duration: Option<Duration>,
    pub policy_arns: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AzureOidc {
    pub client_id: String,
    pub tenant_id: String,
    pub subscription_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GcpOidc {
    pub project_id: String,
    pub region: Option<String>,
    pub workload_pool_id: String,
    pub provider_id: String,
    pub service_account: String,
    pub token_lifetime: Option<Duration>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct Raw {
    aws: Option<RawAws>,
    azure: Option<RawAzure>,
    gcp: Option<RawGcp>,
    audience: Option<String>,
    subject_template: Option<String>,
    token_expiration: Option<String>,
    read_scope: Option<bool>,
}
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct RawAws {
    role_arn: Option<String>,
    session_name: Option<String>,
    duration: Option<String>,
    policy_arns: Option<Vec<String>>,
}
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct RawAzure {
    client_id: Option<String>,
    tenant_id: Option<String>,
    subscription_id: Option<String>,
}
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct RawGcp {
    project_id: Option<String>,
    region: Option<String>,
    workload_pool_id: Option<String>,
    provider_id: Option<String>,
    service_account: Option<String>,
    token_lifetime: Option<String>,
}

const P: &str = "operationContext.oidc";

fn required(v: Option<String>, path: &str) -> Result<String> {
    v.filter(|s| !s.trim().is_empty())
        .ok_or_else(|| Error::invalid(format!("{P}.{path} is required")))
}

fn optional(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.trim().is_empty())
}

fn bounded(
    v: Option<String>,
    path: &str,
    min: Duration,
    max: Duration,
) -> Result<Option<Duration>> {
    let Some(text) = optional(v) else {
        return Ok(None);
    };
    let d = parse_go_duration(&text).ok_or_else(|| {
        Error::invalid(format!(
            "{P}.{path} '{text}' is not a duration such as 1h0m0s"
        ))
    })?;
    if d < min || d > max {
        return Err(Error::invalid(format!(
            "{P}.{path} must be between {}s and {}s, not {text}",
            min.as_secs(),
            max.as_secs()
        )));
    }
    Ok(Some(d))
}

impl OidcSpec {
    /// Reads `operationContext.oidc` from canonical settings. `None` when it is absent: the
    /// deployment gets no token. Invalid values are refused with their path.
    pub fn from_config(config: &Value) -> Result<Option<Self>> {
        let value = &config["operationContext"]["oidc"];
        if !value.is_object() {
            return Ok(None);
        }
        let raw: Raw = serde_json::from_value(value.clone())
            .map_err(|e| Error::invalid(format!("invalid {P}: {e}")))?;
        let aws = raw
            .aws
            .map(|a| -> Result<AwsOidc> {
                let session_name =
                    optional(a.session_name).unwrap_or_else(|| "tarmac-deploy".into());
                check_template(&session_name, "aws.sessionName", false)?;
                Ok(AwsOidc {
                    role_arn: required(a.role_arn, "aws.roleArn")?,
                    session_name,
                    // STS's own limits on DurationSeconds.
                    duration: bounded(
                        a.duration,
                        "aws.duration",
                        Duration::from_secs(900),
                        Duration::from_secs(43_200),
                    )?,
                    policy_arns: a.policy_arns.unwrap_or_default(),
                })
            })
            .transpose()?;
        let azure = raw
            .azure
            .map(|a| -> Result<AzureOidc> {
                Ok(AzureOidc {
                    client_id: required(a.client_id, "azure.clientId")?,
                    tenant_id: required(a.tenant_id, "azure.tenantId")?,
                    subscription_id: optional(a.subscription_id),
                })
            })
            .transpose()?;
        let gcp = raw
            .gcp
            .map(|g| -> Result<GcpOidc> {
                Ok(GcpOidc {
                    project_id: required(g.project_id, "gcp.projectId")?,
                    region: optional(g.region),
                    workload_pool_id: required(g.workload_pool_id, "gcp.workloadPoolId")?,
                    provider_id: required(g.provider_id, "gcp.providerId")?,
                    service_account: required(g.service_account, "gcp.serviceAccount")?,
                    token_lifetime: bounded(
                        g.token_lifetime,
                        "gcp.tokenLifetime",
                        Duration::from_secs(1),
                        Duration::from_secs(43_200),
                    )?,
                })
            })
            .transpose()?;
        let subject_template = optional(raw.subject_template);
        if let Some(t) = &subject_template {
            check_template(t, "subjectTemplate", true)?;
            // The subject always names the token's own org, project and stack: a template
            // could otherwise claim another stack's (or org's) identity to a trust policy.
            if !t.starts_with(SUBJECT_PREFIX) {
                return Err(Error::invalid(format!(
                    "{P}.subjectTemplate must start with '{SUBJECT_PREFIX}', so that it names its own stack"
                )));
            }
        }
        let audience = optional(raw.audience);
        if let Some(a) = &audience {
            check_audience(a)?;
        }
        let token_lifetime = bounded(
            raw.token_expiration,
            "tokenExpiration",
            Duration::from_secs(60),
            MAX_TOKEN_LIFETIME,
        )?
        .unwrap_or(DEFAULT_TOKEN_LIFETIME);
        Ok(Some(Self {
            aws,
            azure,
            gcp,
            audience,
            subject_template,
            token_lifetime,
            read_scope: raw.read_scope.unwrap_or(false),
        }))
    }

    /// `read` for read-only operations when `readScope` is on, `write` otherwise.
    pub fn scope(&self, op: Operation) -> &'static str {
        if self.read_scope && matches!(op, Operation::Preview | Operation::DetectDrift) {
            "read"
        } else {
            "write"
        }
    }
}

const VARIABLES: &[&str] = &[
    "organization.name",
    "project.name",
    "stack.name",
    "deployment.operation",
    "deployment.version",
    "deployment.id",
];

/// What every custom subject starts with.
pub const SUBJECT_PREFIX: &str =
    "pulumi:deploy:org:${organization.name}:project:${project.name}:stack:${stack.name}";

/// Templates and audiences stay short (KMS signs at most 4 KB, and nothing needs more).
const MAX_CLAIM_TEXT: usize = 512;

/// A custom audience may not look like an org name: trust policies written for Pulumi accept
/// a token when its `aud` is their org, so an audience naming another org would pass them. URIs
/// (`api://AzureADTokenExchange`, `//iam.googleapis.com/...`, `https://...`) are fine; the org's
/// own name is the default.
fn check_audience(audience: &str) -> Result<()> {
    if audience.len() > MAX_CLAIM_TEXT {
        return Err(Error::invalid(format!(
            "{P}.audience is longer than {MAX_CLAIM_TEXT} characters"
        )));
    }
    if crate::domain::validate_name("organization", audience).is_ok() {
        return Err(Error::invalid(format!(
            "{P}.audience '{audience}' looks like an organization name; leave it out to use this org's name, or use a URI such as api://AzureADTokenExchange"
        )));
    }
    Ok(())
}

/// Refuses `${...}` variables a template cannot use. `deployment.scope` is for subjects only.
fn check_template(template: &str, path: &str, subject: bool) -> Result<()> {
    if template.len() > MAX_CLAIM_TEXT {
        return Err(Error::invalid(format!(
            "{P}.{path} is longer than {MAX_CLAIM_TEXT} characters"
        )));
    }
    let mut rest = template;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| Error::invalid(format!("{P}.{path} has an unclosed '${{'")))?;
        let name = &after[..end];
        if !(VARIABLES.contains(&name) || (subject && name == "deployment.scope")) {
            let mut known: Vec<&str> = VARIABLES.to_vec();
            if subject {
                known.push("deployment.scope");
            }
            return Err(Error::invalid(format!(
                "{P}.{path} uses the unknown variable '${{{name}}}'; known: {}",
                known
                    .iter()
                    .map(|k| format!("${{{k}}}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        rest = &after[end + 1..];
    }
    Ok(())
}

/// Parses a Go duration (`1h0m0s`, `90m`, `1.5h`, `3600s`): a sequence of decimal numbers, each
/// with a unit among `h`, `m`, `s`, `ms`, `us`, `ns`.
pub fn parse_go_duration(text: &str) -> Option<Duration> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * scale;
    }
    Duration::try_from_secs_f64(total).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse_as_go_does() {
        let secs = |s: &str| parse_go_duration(s).map(|d| d.as_secs_f64());
        assert_eq!(secs("1h0m0s"), Some(3600.0));
        assert_eq!(secs("90m"), Some(5400.0));
        assert_eq!(secs("1.5h"), Some(5400.0));
        assert_eq!(secs("2h45m30s"), Some(9930.0));
        assert_eq!(secs("1500ms"), Some(1.5));
        assert_eq!(secs("0"), Some(0.0));
        for bad in ["", "1", "h", "1d", "1h-5m", "abc", "1..2s"] {
            assert_eq!(parse_go_duration(bad), None, "{bad}");
        }
    }
}
