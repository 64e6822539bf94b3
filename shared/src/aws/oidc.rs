//! AWS mode's OIDC: the `oidc` function, the only holder of `kms:Sign`, and the worker's client
//! of it.
//!
//! The worker invokes the function directly (IAM decides who may), with an `ExchangeRequest`;
//! the function answers `{"credentials": RunCredentials}` or `{"error": {"code", "message"}}`,
//! the Pulumi error shape, with `403` when the caller does not hold the deployment's lease.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `TARMAC_TABLE` | required | the DynamoDB table (leases and the keyring) |
//! | `TARMAC_OIDC_ISSUER` | `TARMAC_PUBLIC_URL` + `/oidc` | the issuer URL (`iss`) |
//! | `TARMAC_OIDC_KMS_KEY_ID` | none | the KMS signing key, registered on a cold start that finds the keyring empty |

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::aws::DynamoStore;
use crate::error::{Error, Result};
use crate::oidc::{
    CredentialBroker, ExchangeRequest, Exchanger, ISSUER_PATH, Issuer, RunCredentials, active_key,
};
use crate::ports::SigningKeyStore;

/// The function's answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Reply {
    Credentials(Box<RunCredentials>),
    Error { code: u16, message: String },
}

impl Reply {
    fn into_result(self) -> Result<RunCredentials> {
        match self {
            Reply::Credentials(c) => Ok(*c),
            Reply::Error { code, message } => Err(match code {
                400 => Error::Invalid(message),
                403 => Error::Forbidden(message),
                404 => Error::NotFound(message),
                502 => Error::Upstream(message),
                _ => Error::internal(format!("the oidc function failed ({code}): {message}")),
            }),
        }
    }
}

/// The issuer URL: `TARMAC_OIDC_ISSUER`, else the public URL plus `/oidc`.
pub fn issuer_url(get: &impl Fn(&str) -> Option<String>) -> Result<String> {
    if let Some(url) = get("TARMAC_OIDC_ISSUER").filter(|u| !u.is_empty()) {
        return Ok(url.trim_end_matches('/').to_string());
    }
    match get("TARMAC_PUBLIC_URL").filter(|u| !u.is_empty()) {
        Some(base) => Ok(format!("{}{ISSUER_PATH}", base.trim_end_matches('/'))),
        None => Err(Error::invalid(
            "TARMAC_OIDC_ISSUER or TARMAC_PUBLIC_URL must be set",
        )),
    }
}

/// The `oidc` function's state, built once per cold start.
pub struct OidcFunction {
    exchanger: Exchanger,
}

impl OidcFunction {
    pub async fn build(
        get: impl Fn(&str) -> Option<String>,
        sdk: &aws_config::SdkConfig,
    ) -> Result<Self> {
        let table = get("TARMAC_TABLE")
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Error::invalid("TARMAC_TABLE must be set"))?;
        let store = Arc::new(DynamoStore::new(aws_sdk_dynamodb::Client::new(sdk), &table));
        let issuer = Arc::new(Issuer::new(
            &issuer_url(&get)?,
            store.clone(),
            None,
            Some(aws_sdk_kms::Client::new(sdk)),
        ));
        if let Some(key_id) = get("TARMAC_OIDC_KMS_KEY_ID").filter(|k| !k.is_empty()) {
            let (keys, _) = store.keyring().await?;
            if active_key(&keys).is_none() {
                match issuer.rotate_kms(&key_id).await {
                    Ok(_) | Err(Error::Conflict(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(Self {
            exchanger: Exchanger::new(store, issuer, Some(aws_sdk_sts::Client::new(sdk))),
        })
    }

    /// One invocation: an `ExchangeRequest` in, a `Reply` out. Refusals are replies, not
    /// function errors, so the worker can tell them apart from a broken function.
    pub async fn handle(&self, event: Value) -> Value {
        let reply = match serde_json::from_value::<ExchangeRequest>(event) {
            Err(e) => Reply::Error {
                code: 400,
                message: format!("not an exchange request: {e}"),
            },
            Ok(request) => match self.exchanger.exchange(&request).await {
                Ok(creds) => Reply::Credentials(Box::new(creds)),
                Err(e) => {
                    let status = e.status();
                    let message = if e.is_internal() {
                        tracing::error!(error = %e.chain(), "credential exchange failed");
                        "internal error".to_string()
                    } else {
                        tracing::warn!(deployment_id = %request.deployment_id, status = status.as_u16(), error = %e, "credential exchange refused");
                        e.to_string()
                    };
                    Reply::Error {
                        code: status.as_u16(),
                        message,
                    }
                }
            },
        };
        serde_json::to_value(reply).unwrap_or(Value::Null)
    }
}

/// The worker's broker: invokes the `oidc` function.
pub struct LambdaBroker {
    client: aws_sdk_lambda::Client,
    function: String,
}

impl LambdaBroker {
    pub fn new(client: aws_sdk_lambda::Client, function: &str) -> Self {
        Self {
            client,
            function: function.to_string(),
        }
    }
}

#[async_trait]
impl CredentialBroker for LambdaBroker {
    async fn exchange(&self, request: &ExchangeRequest) -> Result<RunCredentials> {
        let out = self
            .client
            .invoke()
            .function_name(&self.function)
            .payload(aws_sdk_lambda::primitives::Blob::new(serde_json::to_vec(
                request,
            )?))
            .send()
            .await
            .map_err(|e| {
                Error::internal(format!(
                    "Lambda Invoke {}: {}",
                    self.function,
                    aws_sdk_lambda::error::DisplayErrorContext(e)
                ))
            })?;
        let payload = out.payload.map(|b| b.into_inner()).unwrap_or_default();
        if let Some(kind) = out.function_error {
            return Err(Error::internal(format!(
                "the oidc function failed ({kind}): {}",
                String::from_utf8_lossy(&payload)
            )));
        }
        serde_json::from_slice::<Reply>(&payload)
            .map_err(|e| Error::internal(format!("the oidc function's reply: {e}")))?
            .into_result()
    }
}

/// `tarmac oidc rotate-key --kms-key-id`: makes a KMS key the signing key of the AWS
/// deployment whose table is `TARMAC_TABLE`.
pub async fn rotate_kms_key(key_id: &str) -> Result<String> {
    let table = std::env::var("TARMAC_TABLE")
        .ok()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Error::invalid("TARMAC_TABLE must be set"))?;
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let store = Arc::new(DynamoStore::new(
        aws_sdk_dynamodb::Client::new(&sdk),
        &table,
    ));
    Issuer::new("", store, None, Some(aws_sdk_kms::Client::new(&sdk)))
        .rotate_kms(key_id)
        .await
}
