//! AWS mode's OIDC: the worker's client of the `oidc` function (the only holder of
//! `kms:Sign`, `crate::lambda::OidcFunction`), and the protocol between them.
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

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::oidc::{CredentialBroker, ExchangeRequest, ISSUER_PATH, RunCredentials};

/// The function's answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Reply {
    Credentials(Box<RunCredentials>),
    Error { code: u16, message: String },
}

impl Reply {
    pub(crate) fn into_result(self) -> Result<RunCredentials> {
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
