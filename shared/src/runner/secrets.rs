//! The "Resolve secrets" step: environment variables whose settings name a secret store
//! (`domain::spec::secrets`) get their values here, after the OIDC step and before any command.
//!
//! - Secrets Manager and Parameter Store are read with the AWS credentials the stack's OIDC
//!   exchange gave the run. A run without them is refused, unless the operator opted in to the
//!   server's own credentials (`--secrets-with-server-credentials`): otherwise any tenant could
//!   read whatever the platform's role can.
//! - Vault is read after a login to its JWT auth method with the deployment's OIDC token, so no
//!   Vault token is ever stored. (Implemented against Vault's documented HTTP API; see the
//!   README for what was tested.)
//!
//! Values go to the run's environment only: they are masked in its log from the moment they are
//! read, and never stored or returned. A failure names the variable and the reference, never a
//! value.

use std::time::Duration;

use aws_sdk_secretsmanager::config::{Credentials, Region, SharedCredentialsProvider};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

use super::{Executor, Failure, Run, StepResult};
use crate::domain::spec::secrets::{ParameterRef, SecretRef, SecretsManagerRef, VaultRef};
use crate::oidc::exchange::RunCredentials;

/// How long one read may take.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The server's AWS configuration (region, endpoint, its own credentials chain), loaded once.
async fn base_config() -> &'static aws_config::SdkConfig {
    static BASE: OnceCell<aws_config::SdkConfig> = OnceCell::const_new();
    BASE.get_or_init(|| async {
        let region =
            aws_config::meta::region::RegionProviderChain::default_provider().or_else("us-east-1");
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(region)
            .load()
            .await
    })
    .await
}

impl Executor {
    pub(super) async fn resolve_secrets(&self, run: &Run<'_>, idx: usize) -> StepResult<()> {
        let cloud = run.cloud.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut resolved = Vec::new();
        for var in &run.opened.env {
            let Some(reference) = &var.reference else {
                continue;
            };
            run.log
                .line(idx, &format!("{}: {}", var.name, reference.describe()))
                .await;
            let read = tokio::select! {
                v = tokio::time::timeout(READ_TIMEOUT, self.read(run, reference, cloud.as_ref())) => v,
                _ = run.stop.cancelled() => return Err(Failure::Stopped),
            };
            let values = match read {
                Ok(Ok(v)) => v,
                Ok(Err(why)) => {
                    return Err(Failure::Failed(format!(
                        "{}: could not read {}: {why}",
                        var.name,
                        reference.describe()
                    )));
                }
                Err(_) => {
                    return Err(Failure::Failed(format!(
                        "{}: reading {} timed out after {}s",
                        var.name,
                        reference.describe(),
                        READ_TIMEOUT.as_secs()
                    )));
                }
            };
            // Masked before anything can print it.
            run.log.mask_also(values.masked);
            resolved.push((var.name.clone(), values.value));
        }
        let names: Vec<&str> = resolved.iter().map(|(n, _)| n.as_str()).collect();
        run.log
            .line(idx, &format!("Set {}", names.join(", ")))
            .await;
        run.set_env(resolved);
        Ok(())
    }

    async fn read(
        &self,
        run: &Run<'_>,
        reference: &SecretRef,
        cloud: Option<&RunCredentials>,
    ) -> Result<Read, String> {
        match reference {
            SecretRef::FromSecretsManager(r) => {
                let config = self
                    .aws_config(run, cloud, r.region.as_deref(), &r.secret_id)
                    .await?;
                secrets_manager(config, r).await
            }
            SecretRef::FromParameterStore(r) => {
                let config = self
                    .aws_config(run, cloud, r.region.as_deref(), &r.name)
                    .await?;
                parameter(config, r).await
            }
            SecretRef::FromVault(r) => {
                let token = cloud.map(|c| c.token.as_str()).ok_or(
                    "Vault's JWT login needs the deployment's OIDC token: set operationContext.oidc",
                )?;
                vault(&self.http, r, token).await
            }
        }
    }

    /// The AWS configuration a reference is read with: the run's OIDC credentials (or, if the
    /// operator allows it, the server's own), in the reference's region, else its ARN's, else
    /// the run's `AWS_REGION`, else the server's.
    async fn aws_config(
        &self,
        run: &Run<'_>,
        cloud: Option<&RunCredentials>,
        region: Option<&str>,
        id: &str,
    ) -> Result<aws_config::SdkConfig, String> {
        let base = base_config().await;
        let mut config = base.to_builder();
        match cloud.and_then(|c| c.aws.as_ref()) {
            Some(aws) => {
                config.set_credentials_provider(Some(SharedCredentialsProvider::new(
                    Credentials::new(
                        &aws.access_key_id,
                        &aws.secret_access_key,
                        Some(aws.session_token.clone()),
                        None,
                        "tarmac-oidc",
                    ),
                )));
            }
            None if self.cfg.secrets_with_server_credentials => {}
            None => {
                return Err(
                    "the stack has no AWS role to read it with: set operationContext.oidc.aws (the server reads secret references with the stack's own credentials, unless its operator started it with --secrets-with-server-credentials)"
                        .into(),
                );
            }
        }
        let run_env = run.env();
        let from_env = |k: &str| {
            run_env
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
                .filter(|v| !v.is_empty())
        };
        let region = region
            .map(str::to_string)
            .or_else(|| arn_region(id))
            .or_else(|| from_env("AWS_REGION"))
            .or_else(|| from_env("AWS_DEFAULT_REGION"));
        if let Some(region) = region {
            config.set_region(Some(Region::new(region)));
        }
        Ok(config.build())
    }
}

/// What a read found: the variable's value, and every string the log must hide.
struct Read {
    value: String,
    masked: Vec<String>,
}

impl Read {
    fn whole(value: String) -> Self {
        Self {
            masked: vec![value.clone()],
            value,
        }
    }
}

/// `arn:aws:secretsmanager:<region>:...`'s region.
fn arn_region(id: &str) -> Option<String> {
    let parts: Vec<&str> = id.split(':').collect();
    (parts.len() > 4 && parts[0] == "arn" && !parts[3].is_empty()).then(|| parts[3].to_string())
}

/// An AWS error (Secrets Manager's or SSM's) as the run's log may show it: the service's code
/// and message.
fn aws_error<E, R>(e: aws_sdk_secretsmanager::error::SdkError<E, R>) -> String
where
    E: aws_sdk_secretsmanager::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match e.as_service_error() {
        Some(se) => format!(
            "{}: {}",
            se.code().unwrap_or("error"),
            se.message().unwrap_or("no message")
        ),
        None => aws_sdk_secretsmanager::error::DisplayErrorContext(&e).to_string(),
    }
}

async fn secrets_manager(
    config: aws_config::SdkConfig,
    r: &SecretsManagerRef,
) -> Result<Read, String> {
    let client = aws_sdk_secretsmanager::Client::new(&config);
    let out = client
        .get_secret_value()
        .secret_id(&r.secret_id)
        .set_version_stage(r.version_stage.clone())
        .send()
        .await
        .map_err(aws_error)?;
    let whole = match (out.secret_string(), out.secret_binary()) {
        (Some(s), _) => s.to_string(),
        (None, Some(b)) => String::from_utf8(b.as_ref().to_vec())
            .map_err(|_| "the secret is binary, not text".to_string())?,
        (None, None) => return Err("the secret has no value".into()),
    };
    let Some(key) = &r.json_key else {
        return Ok(Read::whole(whole));
    };
    let parsed: Value = serde_json::from_str(&whole)
        .ok()
        .filter(Value::is_object)
        .ok_or_else(|| format!("the secret is not a JSON object, so it has no key '{key}'"))?;
    let value = match parsed.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => return Err(format!("the secret has no JSON key '{key}'")),
        Some(other) => other.to_string(),
    };
    Ok(Read {
        masked: vec![value.clone(), whole],
        value,
    })
}

async fn parameter(config: aws_config::SdkConfig, r: &ParameterRef) -> Result<Read, String> {
    let client = aws_sdk_ssm::Client::new(&config);
    let out = client
        .get_parameter()
        .name(&r.name)
        .with_decryption(r.with_decryption)
        .send()
        .await
        .map_err(aws_error)?;
    out.parameter()
        .and_then(|p| p.value())
        .map(|v| Read::whole(v.to_string()))
        .ok_or_else(|| "the parameter has no value".into())
}

/// Vault's errors, as its API reports them (`{"errors": [...]}`): never a secret.
async fn vault_error(resp: reqwest::Response, what: &str) -> String {
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    let errors: Vec<&str> = body["errors"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if errors.is_empty() {
        format!("{what} failed (HTTP {status})")
    } else {
        format!("{what} failed (HTTP {status}): {}", errors.join("; "))
    }
}

async fn vault(http: &reqwest::Client, r: &VaultRef, jwt: &str) -> Result<Read, String> {
    let base = r.address.trim_end_matches('/');
    let mount = r
        .auth
        .jwt
        .mount
        .as_deref()
        .unwrap_or("jwt")
        .trim_matches('/');
    let with_ns = |req: reqwest::RequestBuilder| match &r.namespace {
        Some(ns) => req.header("X-Vault-Namespace", ns),
        None => req,
    };
    let unreachable = |e: reqwest::Error| format!("could not reach {base}: {}", e.without_url());
    let resp = with_ns(http.post(format!("{base}/v1/auth/{mount}/login")))
        .json(&json!({"role": r.auth.jwt.role, "jwt": jwt}))
        .timeout(READ_TIMEOUT)
        .send()
        .await
        .map_err(unreachable)?;
    if !resp.status().is_success() {
        return Err(vault_error(resp, "the JWT login").await);
    }
    let login: Value = resp.json().await.map_err(unreachable)?;
    let token = login["auth"]["client_token"]
        .as_str()
        .ok_or("the JWT login returned no token")?
        .to_string();
    let read = async {
        let resp = with_ns(http.get(format!("{base}/v1/{}", r.path.trim_matches('/'))))
            .header("X-Vault-Token", &token)
            .timeout(READ_TIMEOUT)
            .send()
            .await
            .map_err(unreachable)?;
        if !resp.status().is_success() {
            return Err(vault_error(resp, "reading the secret").await);
        }
        let body: Value = resp.json().await.map_err(unreachable)?;
        // KV version 2 nests the fields under data.data, beside data.metadata.
        let data = match (&body["data"]["data"], &body["data"]["metadata"]) {
            (d @ Value::Object(_), Value::Object(_)) => d,
            _ => &body["data"],
        };
        match data.get(&r.key) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(Value::Null) | None => Err(format!("the secret has no key '{}'", r.key)),
            Some(other) => Ok(other.to_string()),
        }
    };
    let value = read.await;
    // The login's token is the run's only: given back at once, whatever the read did.
    let _ = with_ns(http.post(format!("{base}/v1/auth/token/revoke-self")))
        .header("X-Vault-Token", &token)
        .timeout(READ_TIMEOUT)
        .send()
        .await;
    value.map(Read::whole)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_arn_names_its_region() {
        assert_eq!(
            arn_region("arn:aws:secretsmanager:eu-west-1:123456789012:secret:db-AbCdEf").as_deref(),
            Some("eu-west-1")
        );
        assert_eq!(arn_region("prod/db"), None);
        assert_eq!(arn_region("/app/db/password"), None);
    }
}
