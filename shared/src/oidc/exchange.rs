//! The credential exchange: a running deployment's worker trades its lease for the
//! deployment's OIDC token and, where configured, cloud credentials.
//!
//! The caller proves it runs the deployment by naming its lease: a deployment that is not
//! `running` under that unexpired lease gets `403`, whoever asks. In embedded mode the runner
//! calls `Exchanger` in-process; in AWS mode the worker invokes the `oidc` function, which runs
//! the same `Exchanger` and is the only holder of `kms:Sign`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::json;
use time::OffsetDateTime;
use uuid::Uuid;

use super::Issuer;
use crate::domain::spec::oidc::{AwsOidc, AzureOidc, GcpOidc, OidcSpec};
use crate::domain::{Deployment, StackRef};
use crate::error::{Error, Result};
use crate::ports::{AssumeRoleRequest, AwsCredentials, CloudExchange, RunStore};

/// What a worker sends to get its deployment's credentials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExchangeRequest {
    pub org: String,
    pub project: String,
    pub stack: String,
    pub deployment_id: Uuid,
    /// The worker's lease on the deployment (its owner id).
    pub lease: String,
}

/// A deployment's token and the credentials it was exchanged for.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunCredentials {
    pub token: String,
    /// When the token expires, unix seconds.
    pub expires: i64,
    pub aws: Option<AwsCredentials>,
    pub azure: Option<AzureOidc>,
    pub gcp: Option<GcpOidc>,
    /// What was done, for the step's log. Holds no secrets.
    pub notes: Vec<String>,
}

impl std::fmt::Debug for RunCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunCredentials")
            .field("expires", &self.expires)
            .field("aws", &self.aws.is_some())
            .field("azure", &self.azure.is_some())
            .field("gcp", &self.gcp.is_some())
            .finish_non_exhaustive()
    }
}

impl RunCredentials {
    /// Every value the run's log must never show.
    pub fn secrets(&self) -> Vec<String> {
        let mut out = vec![self.token.clone()];
        if let Some(aws) = &self.aws {
            out.push(aws.secret_access_key.clone());
            out.push(aws.session_token.clone());
        }
        out
    }

    /// The run's environment for these credentials, and the files it names, all under `dir`,
    /// which only the run can see.
    pub fn environment(&self, dir: &Path) -> (Vec<(String, String)>, Vec<RunFile>) {
        let token_file = dir.join("oidc-token");
        let token_path = token_file.display().to_string();
        let mut env = vec![
            ("PULUMI_OIDC_TOKEN".to_string(), self.token.clone()),
            ("PULUMI_OIDC_TOKEN_FILE".to_string(), token_path.clone()),
        ];
        let mut files = vec![(token_file, self.token.clone())];
        if let Some(aws) = &self.aws {
            env.push(("AWS_ACCESS_KEY_ID".into(), aws.access_key_id.clone()));
            env.push((
                "AWS_SECRET_ACCESS_KEY".into(),
                aws.secret_access_key.clone(),
            ));
            env.push(("AWS_SESSION_TOKEN".into(), aws.session_token.clone()));
        }
        if let Some(azure) = &self.azure {
            env.push(("ARM_USE_OIDC".into(), "true".into()));
            env.push(("ARM_OIDC_TOKEN".into(), self.token.clone()));
            env.push(("ARM_OIDC_TOKEN_FILE_PATH".into(), token_path.clone()));
            env.push(("ARM_CLIENT_ID".into(), azure.client_id.clone()));
            env.push(("ARM_TENANT_ID".into(), azure.tenant_id.clone()));
            if let Some(sub) = &azure.subscription_id {
                env.push(("ARM_SUBSCRIPTION_ID".into(), sub.clone()));
            }
        }
        if let Some(gcp) = &self.gcp {
            let path = dir.join("gcp-credentials.json");
            let config = gcp_external_account(gcp, &token_path).to_string();
            env.push((
                "GOOGLE_APPLICATION_CREDENTIALS".into(),
                path.display().to_string(),
            ));
            env.push(("GOOGLE_CREDENTIALS".into(), config.clone()));
            env.push(("GOOGLE_PROJECT".into(), gcp.project_id.clone()));
            if let Some(region) = &gcp.region {
                env.push(("GOOGLE_REGION".into(), region.clone()));
            }
            files.push((path, config));
        }
        (env, files)
    }
}

/// A file the run's environment points at: path and contents.
pub type RunFile = (PathBuf, String);

/// Google's external-account credentials: the token file is the subject token, exchanged at
/// Google's STS for the workload identity provider, then for the service account's token.
fn gcp_external_account(gcp: &GcpOidc, token_file: &str) -> serde_json::Value {
    let mut config = json!({
        "type": "external_account",
        "audience": format!(
            "//iam.googleapis.com/projects/{}/locations/global/workloadIdentityPools/{}/providers/{}",
            gcp.project_id, gcp.workload_pool_id, gcp.provider_id
        ),
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "token_url": "https://sts.googleapis.com/v1/token",
        "credential_source": {"file": token_file},
        "service_account_impersonation_url": format!(
            "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/{}:generateAccessToken",
            gcp.service_account
        ),
    });
    if let Some(lifetime) = gcp.token_lifetime {
        config["service_account_impersonation"] =
            json!({"token_lifetime_seconds": lifetime.as_secs()});
    }
    config
}

/// Where a worker gets credentials: in-process (`Exchanger`) or from the `oidc` function.
#[async_trait]
pub trait CredentialBroker: Send + Sync {
    async fn exchange(&self, request: &ExchangeRequest) -> Result<RunCredentials>;
}

/// The exchange itself.
pub struct Exchanger {
    runs: Arc<dyn RunStore>,
    issuer: Arc<Issuer>,
    cloud: Arc<dyn CloudExchange>,
}

impl std::fmt::Debug for Exchanger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exchanger")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl Exchanger {
    pub fn new(
        runs: Arc<dyn RunStore>,
        issuer: Arc<Issuer>,
        cloud: Arc<dyn CloudExchange>,
    ) -> Self {
        Self {
            runs,
            issuer,
            cloud,
        }
    }

    async fn assume_role(
        &self,
        spec: &OidcSpec,
        aws: &AwsOidc,
        d: &Deployment,
        token: &str,
    ) -> Result<(AwsCredentials, String)> {
        let session = spec.session_name(aws, d);
        let assumed = self
            .cloud
            .assume_role(&AssumeRoleRequest {
                role_arn: aws.role_arn.clone(),
                session_name: session.clone(),
                duration: aws.duration,
                policy_arns: aws.policy_arns.clone(),
                web_identity_token: token.to_string(),
            })
            .await?;
        let note = format!(
            "Assumed {} (session {session}) until {}",
            assumed.arn, assumed.expiration
        );
        Ok((assumed.credentials, note))
    }
}

#[async_trait]
impl CredentialBroker for Exchanger {
    async fn exchange(&self, request: &ExchangeRequest) -> Result<RunCredentials> {
        let refused = || {
            Error::Forbidden(format!(
                "deployment {} is not running under this lease",
                request.deployment_id
            ))
        };
        let stack =
            StackRef::new(&request.org, &request.project, &request.stack).map_err(|_| refused())?;
        let d = self
            .runs
            .held_deployment(&stack, request.deployment_id, &request.lease)
            .await?
            .ok_or_else(refused)?;
        let spec = d.config.spec().oidc.clone().ok_or_else(|| {
            Error::invalid("the deployment's settings have no operationContext.oidc")
        })?;
        let claims = spec.claims(
            &d,
            self.issuer.url(),
            OffsetDateTime::now_utc(),
            Uuid::new_v4(),
        );
        let token = self.issuer.sign(&claims).await?;
        let expires = claims["exp"].as_i64().unwrap_or_default();
        let mut notes = vec![format!(
            "Issued an OIDC token: issuer {}, audience {}, subject {}, expires {}",
            claims["iss"].as_str().unwrap_or_default(),
            claims["aud"].as_str().unwrap_or_default(),
            claims["sub"].as_str().unwrap_or_default(),
            crate::domain::time_fmt::rfc3339(
                OffsetDateTime::from_unix_timestamp(expires).unwrap_or(OffsetDateTime::UNIX_EPOCH)
            ),
        )];
        let aws = match &spec.aws {
            Some(aws) => {
                let (creds, note) = self.assume_role(&spec, aws, &d, &token).await?;
                notes.push(note);
                Some(creds)
            }
            None => None,
        };
        if let Some(azure) = &spec.azure {
            notes.push(format!(
                "Azure: client {} in tenant {} will sign in with the token",
                azure.client_id, azure.tenant_id
            ));
        }
        if let Some(gcp) = &spec.gcp {
            notes.push(format!(
                "GCP: workload identity pool {}, provider {}, impersonating {}",
                gcp.workload_pool_id, gcp.provider_id, gcp.service_account
            ));
        }
        tracing::info!(deployment_id = %d.id, aws = aws.is_some(), "OIDC credentials issued");
        Ok(RunCredentials {
            token,
            expires,
            aws,
            azure: spec.azure.clone(),
            gcp: spec.gcp.clone(),
            notes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_names_the_token_and_each_providers_variables() {
        let creds = RunCredentials {
            token: "tok".into(),
            expires: 0,
            aws: Some(AwsCredentials {
                access_key_id: "AKIA".into(),
                secret_access_key: "sk".into(),
                session_token: "st".into(),
            }),
            azure: Some(AzureOidc {
                client_id: "c".into(),
                tenant_id: "t".into(),
                subscription_id: Some("s".into()),
            }),
            gcp: Some(GcpOidc {
                project_id: "123".into(),
                region: None,
                workload_pool_id: "pool".into(),
                provider_id: "prov".into(),
                service_account: "sa@p.iam.gserviceaccount.com".into(),
                token_lifetime: Some(std::time::Duration::from_secs(600)),
            }),
            notes: vec![],
        };
        let (env, files) = creds.environment(Path::new("/w/oidc"));
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("PULUMI_OIDC_TOKEN"), Some("tok"));
        assert_eq!(get("PULUMI_OIDC_TOKEN_FILE"), Some("/w/oidc/oidc-token"));
        assert_eq!(get("AWS_SESSION_TOKEN"), Some("st"));
        assert_eq!(get("ARM_USE_OIDC"), Some("true"));
        assert_eq!(get("ARM_SUBSCRIPTION_ID"), Some("s"));
        assert_eq!(
            get("GOOGLE_APPLICATION_CREDENTIALS"),
            Some("/w/oidc/gcp-credentials.json")
        );
        let gcp: serde_json::Value = serde_json::from_str(&files[1].1).unwrap();
        assert_eq!(gcp["type"], "external_account");
        assert_eq!(gcp["credential_source"]["file"], "/w/oidc/oidc-token");
        assert_eq!(
            gcp["audience"],
            "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/pool/providers/prov"
        );
        assert_eq!(
            gcp["service_account_impersonation"]["token_lifetime_seconds"],
            600
        );
        assert_eq!(files[0].1, "tok");
        assert_eq!(creds.secrets(), ["tok", "sk", "st"]);
        assert!(!format!("{creds:?}").contains("tok"));
    }
}
